"""Readiness and liveness probes for the lab's containers, run as the kubelet runs them.

``probe_once`` makes one attempt. It reaches the pod only through two injected functions,
``connect(ip, port)`` (a trio ``Stream``) and ``run_command(argv)`` (an exit status), so the lab
decides how to get into a pod's network namespace and tests can fake either. The peer's faults never
raise: a refused connection, an attempt longer than ``timeout_seconds``, a 500, or bytes that are not
HTTP are each a failed ``ProbeResult`` whose message says what failed. HTTP goes through h11: the
request is a few bytes out, and only the response head is read (at most ``MAX_RESPONSE_HEAD`` bytes),
never the body.

``Readiness`` counts results without I/O, as the kubelet's readiness worker does: a container starts
not ready, becomes ready after ``success_threshold`` successes in a row and not ready again after
``failure_threshold`` failures in a row. ``run_readiness`` adds the clock (trio's only) and reports
each change.

``Liveness`` counts the same way, and ``run_liveness`` probes each run of a container from
``initial_delay_seconds`` after it started, every ``period_seconds``; ``failure_threshold`` failures in
a row have it killed (``restart``), and its restart policy decides what comes next, as the kubelet's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import h11
import trio

from mesh import resources as r
from mesh.addresses import format_address

USER_AGENT = "ambient-lab-probe"
MAX_RESPONSE_HEAD = 16 * 1024  # bytes read at most, looking for the status line and headers
_RECEIVE_SIZE = 4096

Connect = Callable[[str, int], Awaitable[trio.abc.Stream]]
RunCommand = Callable[[tuple[str, ...]], Awaitable[int]]


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    message: str  # what was tried and what came of it: "GET http://10.244.0.2:8080/ returned 500"


class _Failed(Exception):
    """An attempt failed because of the peer; carries the message of the result."""


def resolve_port(probe: r.Probe, container: r.Container) -> int:
    """The probe's port number: its own, or that of the container port it names.

    Raises ValueError for a port name the container does not have (``mesh.parse`` reports those, so
    here it is a bug) or a number outside 1-65535 (such as the default 0 of an exec probe)."""
    if isinstance(probe.port, str):
        for port in container.ports:
            if port.name == probe.port:
                return port.container_port
        raise ValueError(f"container {container.name!r} has no port named {probe.port!r}")
    if not 1 <= probe.port <= 65535:
        raise ValueError(f"container {container.name!r}: probe port {probe.port} is not a port number (1-65535)")
    return probe.port


def _os_error_reason(exc: OSError) -> tuple[bool, str]:
    """(refused, reason). trio's ``open_tcp_stream`` raises one OSError whose cause is a group of
    the errors of each address it tried; those say what happened."""
    errors: list[OSError] = [exc]
    if isinstance(exc.__cause__, BaseExceptionGroup):
        errors = [e for e in exc.__cause__.exceptions if isinstance(e, OSError)] or errors
    refused = all(isinstance(e, ConnectionRefusedError) for e in errors)
    return refused, "; ".join(dict.fromkeys(e.strerror or str(e) for e in errors))


async def _connect(connect: Connect, ip: str, port: int) -> trio.abc.Stream:
    try:
        return await connect(ip, port)
    except OSError as exc:
        refused, reason = _os_error_reason(exc)
        address = format_address(ip, port)
        raise _Failed(f"connect to {address} refused" if refused else f"connect to {address} failed: {reason}") \
            from None


async def _response_status(stream: trio.abc.Stream, path: str, host: str) -> int:
    """Send ``GET path`` and return the status of the final response (1xx ones are skipped)."""
    connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)
    request = h11.Request(method="GET", target=path,
                          headers=[("Host", host), ("User-Agent", USER_AGENT), ("Connection", "close")])
    await stream.send_all(connection.send(request) + connection.send(h11.EndOfMessage()))
    received = 0
    while True:
        event = connection.next_event()
        if isinstance(event, h11.Response):
            return event.status_code
        if event is h11.NEED_DATA:
            data = await stream.receive_some(_RECEIVE_SIZE)
            if not data:
                raise _Failed("connection closed before a response")
            received += len(data)
            if received > MAX_RESPONSE_HEAD:
                raise _Failed(f"response head larger than {MAX_RESPONSE_HEAD} bytes")
            connection.receive_data(bytes(data))  # trio may hand a bytearray; h11 is typed for bytes


async def _tcp_socket(ip: str, port: int, connect: Connect) -> ProbeResult:
    stream = await _connect(connect, ip, port)
    await trio.aclose_forcefully(stream)
    return ProbeResult(True, f"connected to {format_address(ip, port)}")


async def _http_get(ip: str, port: int, path: str, connect: Connect) -> ProbeResult:
    url = f"http://{format_address(ip, port)}{path}"
    stream = await _connect(connect, ip, port)
    try:
        status = await _response_status(stream, path, format_address(ip, port))
    except _Failed as exc:
        raise _Failed(f"GET {url} failed: {exc}") from None
    except h11.ProtocolError as exc:
        raise _Failed(f"GET {url} failed: invalid HTTP response ({exc})") from None
    except trio.BrokenResourceError as exc:
        cause = f" ({exc.__cause__})" if exc.__cause__ else ""
        raise _Failed(f"GET {url} failed: connection broken{cause}") from None
    except OSError as exc:  # from a stream that is not trio's own
        raise _Failed(f"GET {url} failed: {_os_error_reason(exc)[1]}") from None
    finally:
        await trio.aclose_forcefully(stream)
    return ProbeResult(200 <= status < 400, f"GET {url} returned {status}")  # the kubelet's success range


async def _exec(command: tuple[str, ...], run_command: RunCommand) -> ProbeResult:
    what = f"exec [{' '.join(command)}]"
    try:
        status = await run_command(command)
    except OSError as exc:
        raise _Failed(f"{what} failed: {_os_error_reason(exc)[1]}") from None
    return ProbeResult(status == 0, f"{what} exited {status}")


async def probe_once(probe: r.Probe, container: r.Container, pod_ip: str, *, connect: Connect,
                     run_command: RunCommand) -> ProbeResult:
    """One attempt of ``probe`` against the container at ``pod_ip``, bounded by its timeout.

    Failures of the peer (OSError, a broken stream, bytes h11 cannot parse, the timeout) are a
    result, never an exception. A probe that names no usable port raises ValueError (see
    ``resolve_port``), as does an unknown action: those are bugs here, not the pod's fault."""
    if probe.action == "exec":
        subject = f"exec [{' '.join(probe.command)}]"
        attempt = partial(_exec, probe.command, run_command)
    elif probe.action in ("tcpSocket", "httpGet"):
        port = resolve_port(probe, container)
        if probe.action == "tcpSocket":
            subject = f"connect to {format_address(pod_ip, port)}"
            attempt = partial(_tcp_socket, pod_ip, port, connect)
        else:
            subject = f"GET http://{format_address(pod_ip, port)}{probe.path}"
            attempt = partial(_http_get, pod_ip, port, probe.path, connect)
    else:
        raise ValueError(f"unknown probe action {probe.action!r}")
    with trio.move_on_after(probe.timeout_seconds):
        try:
            return await attempt()
        except _Failed as exc:
            return ProbeResult(False, str(exc))
    return ProbeResult(False, f"{subject} timed out after {probe.timeout_seconds:g} s")


@dataclass
class Readiness:
    """Consecutive results in, readiness out (the kubelet's counting); no I/O, no clock."""

    success_threshold: int = 1
    failure_threshold: int = 3
    ready: bool = False
    succeeded_once: bool = False  # run_readiness probes faster until then
    _last: bool | None = None
    _run: int = 0  # results in a row equal to _last

    def observe(self, ok: bool) -> bool:
        """Count one result; True if readiness changed (now ``self.ready``)."""
        self._run = self._run + 1 if ok == self._last else 1
        self._last = ok
        self.succeeded_once = self.succeeded_once or ok
        threshold = self.success_threshold if ok else self.failure_threshold
        if self._run >= threshold and self.ready != ok:
            self.ready = ok
            return True
        return False


async def run_readiness(probe: r.Probe | None, container: r.Container, pod_ip: str, *, connect: Connect,
                        run_command: RunCommand, on_change: Callable[[bool, str], None],
                        startup_interval: float = 0.1,
                        on_result: Callable[[ProbeResult], None] | None = None) -> None:
    """Probe the container until cancelled; call ``on_change(ready, message)`` each time its
    readiness changes, with the message of the result that changed it.

    A container starts not ready, so the first call is the first time it becomes ready; one with no
    probe is ready at once (``on_change(True, "no readiness probe")``). The first attempt comes
    after ``initial_delay_seconds``. A lab choice, not Kubernetes's: until the first success the
    probe runs every ``startup_interval`` seconds rather than every ``period_seconds``, so that
    pods become ready as soon as they are; from then on every ``period_seconds``. Intervals run from
    the start of one attempt to the start of the next, like the kubelet's ticker, so a slow attempt
    does not shift the ones after it (a timed-out one is followed at once if the interval has
    passed). Only trio's clock is used. A probe whose port the container does not have raises
    ValueError at once, before the initial delay.
    """
    if probe is None:
        on_change(True, "no readiness probe")
        await trio.sleep_forever()
    if probe.action != "exec":
        resolve_port(probe, container)
    readiness = Readiness(probe.success_threshold, probe.failure_threshold)
    await trio.sleep(probe.initial_delay_seconds)
    while True:
        started = trio.current_time()
        result = await probe_once(probe, container, pod_ip, connect=connect, run_command=run_command)
        if on_result is not None:  # every attempt, e.g. to show why a container is not ready yet
            on_result(result)
        if readiness.observe(result.ok):
            on_change(readiness.ready, result.message)
        interval = probe.period_seconds if readiness.succeeded_once else startup_interval
        await trio.sleep_until(started + interval)


@dataclass
class Liveness:
    """Consecutive failures in, "restart it" out (the kubelet's liveness counting); no I/O, no clock."""

    failure_threshold: int = 3
    _failures: int = 0

    def observe(self, ok: bool) -> bool:
        """Count one result; True when it makes ``failure_threshold`` failures in a row (the count
        then starts over, for the next run of the container)."""
        self._failures = 0 if ok else self._failures + 1
        if self._failures >= self.failure_threshold:
            self._failures = 0
            return True
        return False


async def run_liveness(probe: r.Probe, container: r.Container, pod_ip: str, *, connect: Connect,
                       run_command: RunCommand, started: Callable[[], Awaitable[object]],
                       current: Callable[[], object], restart: Callable[[object, str], Awaitable[None]],
                       on_result: Callable[[ProbeResult], None] | None = None) -> None:
    """Probe each run of the container until cancelled.

    ``started()`` returns once a run other than the last one is up, with its id (a pid); ``current()``
    is the id of the run up now (None if none). From ``initial_delay_seconds`` after a run started,
    every ``period_seconds`` (from the start of one attempt to the next, as readiness), an attempt;
    ``failure_threshold`` failures in a row call ``restart(run, message)``, message in the kubelet's
    words. A run that ends on its own stops its probing, and the next run starts afresh (its own
    delay, a new count). A probe whose port the container does not have raises ValueError at once."""
    if probe.action != "exec":
        resolve_port(probe, container)
    while True:
        run = await started()
        await trio.sleep(probe.initial_delay_seconds)
        liveness = Liveness(probe.failure_threshold)
        while current() == run:
            attempt_started = trio.current_time()
            result = await probe_once(probe, container, pod_ip, connect=connect, run_command=run_command)
            if on_result is not None:
                on_result(result)
            if current() != run:
                break  # the run ended during the attempt: its result says nothing of the next one
            if liveness.observe(result.ok):
                await restart(run, f"Liveness probe failed: {result.message}")
                break
            await trio.sleep_until(attempt_started + probe.period_seconds)
