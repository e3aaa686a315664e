"""Readiness probes: single attempts against a real loopback server, and the readiness loop in trio time.

Attempts over TCP run on the real clock against a tiny HTTP server on 127.0.0.1 whose answer depends
on the path asked for; every such test is bounded by ``fail_after``. The loop (``run_readiness``) runs
on the autojump clock with a scripted ``run_command``, so intervals and transitions are asserted to
the exact instant; the script cancels the loop when it runs out of answers.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from functools import partial

import h11
import pytest
import trio
import trio.testing

from lab.probes import (
    MAX_RESPONSE_HEAD,
    Liveness,
    ProbeResult,
    Readiness,
    probe_once,
    resolve_port,
    run_liveness,
    run_readiness,
)
from mesh import resources as r

BOUND = 5  # seconds (real ones, or trio's under the autojump clock): every test finishes well within
IP = "10.244.0.2"
CONTAINER = r.Container("web", ports=(r.ContainerPort(8080, "http"), r.ContainerPort(9090)))


async def no_connect(ip: str, port: int) -> trio.abc.Stream:
    raise AssertionError("this probe must not connect")


async def no_command(command: tuple[str, ...]) -> int:
    raise AssertionError("this probe must not run a command")


# ---------------------------------------------------------------- a real loopback server

RESPONSES = {
    "/ok": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "/fail": b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
    "/moved": b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n",
    "/not-found": b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    "/continue": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
    "/garbage": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    "/close": b"",  # closes without answering
    "/huge": b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"a" * (4 * MAX_RESPONSE_HEAD),  # a head that never ends
}


@dataclass
class HttpServer:
    """Answers each request with RESPONSES[path]; ``/silent`` is never answered."""

    port: int = 0
    requests: list[h11.Request] = field(default_factory=list)

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            connection = h11.Connection(h11.SERVER)
            while (event := connection.next_event()) is h11.NEED_DATA:
                connection.receive_data(await stream.receive_some(4096))
            assert isinstance(event, h11.Request)
            self.requests.append(event)
            target = event.target.decode()
            if target == "/silent":
                await trio.sleep_forever()
            await stream.send_all(RESPONSES[target])
        except trio.BrokenResourceError:
            pass  # the probe gave up reading (/huge)
        finally:
            await trio.aclose_forcefully(stream)


@pytest.fixture
async def server(nursery) -> HttpServer:
    server = HttpServer()
    listeners = await nursery.start(partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
    server.port = listeners[0].socket.getsockname()[1]
    return server


@pytest.fixture
async def refused_port():
    """A port bound but not listening: connecting to it is refused, and no one else can take it."""
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


def on_port(port: int) -> r.Container:
    return r.Container("web", ports=(r.ContainerPort(port, "http"),))


async def attempt(probe: r.Probe, container: r.Container, ip: str = "127.0.0.1", *,
                  connect=trio.open_tcp_stream, run_command=no_command) -> ProbeResult:
    with trio.fail_after(BOUND):
        return await probe_once(probe, container, ip, connect=connect, run_command=run_command)


# ---------------------------------------------------------------- resolve_port

def test_resolve_port_takes_numbers_and_names():
    assert resolve_port(r.Probe("tcpSocket", port=9090), CONTAINER) == 9090
    assert resolve_port(r.Probe("httpGet", port="http"), CONTAINER) == 8080


@pytest.mark.parametrize("port, message", [
    ("metrics", "container 'web' has no port named 'metrics'"),
    (0, "container 'web': probe port 0 is not a port number (1-65535)"),
    (65536, "container 'web': probe port 65536 is not a port number (1-65535)"),
])
def test_resolve_port_rejects_what_the_container_does_not_have(port, message):
    with pytest.raises(ValueError) as raised:
        resolve_port(r.Probe("tcpSocket", port=port), CONTAINER)
    assert str(raised.value) == message


# ---------------------------------------------------------------- tcpSocket

async def test_tcp_probe_connects_to_a_named_port(server):
    result = await attempt(r.Probe("tcpSocket", port="http"), on_port(server.port))
    assert result == ProbeResult(True, f"connected to 127.0.0.1:{server.port}")


async def test_tcp_probe_closes_its_connection(autojump_clock):
    ours, theirs = trio.testing.memory_stream_pair()
    connected = []

    async def connect(ip, port):
        connected.append((ip, port))
        return ours

    result = await attempt(r.Probe("tcpSocket", port=8080), CONTAINER, IP, connect=connect)
    assert result == ProbeResult(True, "connected to 10.244.0.2:8080") and connected == [(IP, 8080)]
    with trio.fail_after(BOUND):  # trio time: fails at once if the stream is left open
        assert await theirs.receive_some() == b""  # end of stream: closed


async def test_tcp_probe_refused(refused_port):
    result = await attempt(r.Probe("tcpSocket", port=refused_port), CONTAINER)
    assert result == ProbeResult(False, f"connect to 127.0.0.1:{refused_port} refused")


async def test_tcp_probe_other_connect_errors_are_failures_with_their_reason():
    async def unreachable(ip, port):
        raise OSError(errno.EHOSTUNREACH, "No route to host")

    result = await attempt(r.Probe("tcpSocket", port=8080), CONTAINER, IP, connect=unreachable)
    assert result == ProbeResult(False, "connect to 10.244.0.2:8080 failed: No route to host")


async def test_tcp_probe_times_out(autojump_clock):
    async def hang(ip, port):
        await trio.sleep_forever()

    start = trio.current_time()
    result = await attempt(r.Probe("tcpSocket", port="http", timeout_seconds=3), CONTAINER, IP, connect=hang)
    assert result == ProbeResult(False, "connect to 10.244.0.2:8080 timed out after 3 s")
    assert trio.current_time() - start == 3


# ---------------------------------------------------------------- httpGet

@pytest.mark.parametrize("path, ok, outcome", [
    ("/ok", True, "returned 200"),
    ("/moved", True, "returned 302"),  # not followed: 200-399 is success, as for the kubelet
    ("/continue", True, "returned 204"),  # the 100 is skipped
    ("/fail", False, "returned 500"),
    ("/not-found", False, "returned 404"),
    ("/garbage", False, "failed: invalid HTTP response (illegal status line: bytearray(b'SSH-2.0-OpenSSH_9.6'))"),
    ("/close", False, "failed: connection closed before a response"),
    ("/huge", False, f"failed: response head larger than {MAX_RESPONSE_HEAD} bytes"),
])
async def test_http_probe_outcomes(server, path, ok, outcome):
    result = await attempt(r.Probe("httpGet", port="http", path=path), on_port(server.port))
    assert result == ProbeResult(ok, f"GET http://127.0.0.1:{server.port}{path} {outcome}")
    (request,) = server.requests
    assert (request.method, request.target) == (b"GET", path.encode())
    assert request.headers.raw_items() == [(b"Host", f"127.0.0.1:{server.port}".encode()),
                                           (b"User-Agent", b"ambient-lab-probe"), (b"Connection", b"close")]


async def test_http_probe_times_out_on_a_silent_server(server):
    start = trio.current_time()
    result = await attempt(r.Probe("httpGet", port=server.port, path="/silent", timeout_seconds=0.2), CONTAINER)
    assert result == ProbeResult(False, f"GET http://127.0.0.1:{server.port}/silent timed out after 0.2 s")
    assert 0.2 <= trio.current_time() - start < BOUND


async def test_http_probe_refused(refused_port):
    result = await attempt(r.Probe("httpGet", port=refused_port), CONTAINER)
    assert result == ProbeResult(False, f"connect to 127.0.0.1:{refused_port} refused")


async def test_http_probe_sends_exactly_this_and_closes(autojump_clock):
    ours, theirs = trio.testing.memory_stream_pair()
    await theirs.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")  # the body is never read

    async def connect(ip, port):
        return ours

    result = await attempt(r.Probe("httpGet", port="http", path="/ready?x=1"), CONTAINER, IP, connect=connect)
    assert result == ProbeResult(True, "GET http://10.244.0.2:8080/ready?x=1 returned 200")
    sent = b""
    with trio.fail_after(BOUND):  # trio time: fails at once if the stream is left open
        while data := await theirs.receive_some():
            sent += data
    assert sent == (b"GET /ready?x=1 HTTP/1.1\r\nHost: 10.244.0.2:8080\r\nUser-Agent: ambient-lab-probe\r\n"
                    b"Connection: close\r\n\r\n")


async def test_http_probe_on_a_broken_connection():
    ours, theirs = trio.testing.memory_stream_pair()
    await theirs.aclose()

    async def connect(ip, port):
        return ours

    result = await attempt(r.Probe("httpGet", port=8080), CONTAINER, IP, connect=connect)
    assert result == ProbeResult(False, "GET http://10.244.0.2:8080/ failed: connection broken")


# ---------------------------------------------------------------- exec

@pytest.mark.parametrize("status, ok", [(0, True), (1, False), (137, False)])
async def test_exec_probe_succeeds_on_status_zero(status, ok):
    ran = []

    async def run_command(command):
        ran.append(command)
        return status

    result = await attempt(r.Probe("exec", command=("cat", "/ready")), CONTAINER, IP, connect=no_connect,
                           run_command=run_command)
    assert result == ProbeResult(ok, f"exec [cat /ready] exited {status}") and ran == [("cat", "/ready")]


async def test_exec_probe_that_cannot_start():
    async def missing(command):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory")

    result = await attempt(r.Probe("exec", command=("cat", "/ready")), CONTAINER, IP, connect=no_connect,
                           run_command=missing)
    assert result == ProbeResult(False, "exec [cat /ready] failed: No such file or directory")


async def test_exec_probe_times_out(autojump_clock):
    async def hang(command):
        await trio.sleep_forever()

    start = trio.current_time()
    result = await attempt(r.Probe("exec", command=("sleep", "9")), CONTAINER, IP, connect=no_connect,
                           run_command=hang)
    assert result == ProbeResult(False, "exec [sleep 9] timed out after 1 s")
    assert trio.current_time() - start == 1


async def test_a_bad_probe_is_a_bug_not_a_result():
    with pytest.raises(ValueError, match="no port named 'metrics'"):
        await attempt(r.Probe("httpGet", port="metrics"), CONTAINER, IP, connect=no_connect)
    with pytest.raises(ValueError, match="unknown probe action 'grpc'"):
        await attempt(r.Probe("grpc", port=8080), CONTAINER, IP, connect=no_connect)


# ---------------------------------------------------------------- Readiness (no I/O)

@pytest.mark.parametrize("success, failure, results, changes", [
    (1, 1, "+-+-", [(0, True), (1, False), (2, True), (3, False)]),
    (1, 3, "--+--+---+", [(2, True), (8, False), (9, True)]),  # failures before the first success change nothing
    (2, 2, "+-+-++--", [(5, True), (7, False)]),
    (3, 1, "++-+++++", [(5, True)]),
])
def test_readiness_counts_results_in_a_row(success, failure, results, changes):
    """``results``: + success, - failure; ``changes``: (index of the result, readiness it led to)."""
    readiness = Readiness(success, failure)
    assert not readiness.ready
    seen = [(i, readiness.ready) for i, ok in enumerate(results) if readiness.observe(ok == "+")]
    assert seen == changes


# ---------------------------------------------------------------- run_readiness, in trio time

HANG = None  # in a script: the command never exits


class Script:
    """A fake ``run_command``: exits with the scripted statuses in turn and records when each attempt
    started (trio time since the loop began). Past the end of the script it cancels ``scope``."""

    def __init__(self, statuses: list[int | None], scope: trio.CancelScope) -> None:
        self.statuses = statuses
        self.scope = scope
        self.start = trio.current_time()
        self.times: list[float] = []

    def now(self) -> float:
        return round(trio.current_time() - self.start, 6)

    async def __call__(self, command: tuple[str, ...]) -> int:
        assert command == ("check",)
        self.times.append(self.now())
        if len(self.times) > len(self.statuses):
            self.scope.cancel()
            await trio.sleep_forever()
        status = self.statuses[len(self.times) - 1]
        if status is HANG:
            await trio.sleep_forever()
        return status


async def run_script(probe: r.Probe, statuses: list[int | None], **kwargs):
    """Run the loop until the script is done; (attempt times, on_change calls with their times)."""
    changes = []
    with trio.fail_after(3600):  # trio time: the script ends long before
        with trio.CancelScope() as scope:
            script = Script(statuses, scope)
            await run_readiness(probe, CONTAINER, IP, connect=no_connect, run_command=script,
                                on_change=lambda ready, message: changes.append((script.now(), ready, message)),
                                **kwargs)
    assert scope.cancelled_caught, "run_readiness returned by itself"
    return script.times, changes


def check(**timing) -> r.Probe:
    return r.Probe("exec", command=("check",), **timing)


OK, FAILED, TIMED_OUT = "exec [check] exited 0", "exec [check] exited 1", "exec [check] timed out after 1 s"


@pytest.mark.parametrize("probe, statuses, times, changes", [
    pytest.param(dict(initial_delay_seconds=5, success_threshold=2, failure_threshold=3),
                 [1, 0, 0, 1, 1, 1, 0, 0],
                 [5, 5.1, 15.1, 25.1, 35.1, 45.1, 55.1, 65.1, 75.1],
                 [(15.1, True, OK), (45.1, False, FAILED), (65.1, True, OK)], id="thresholds"),
    pytest.param(dict(failure_threshold=3),
                 [1, 1, 1, 0, 1, 1, 1],
                 [0, 0.1, 0.2, 0.3, 10.3, 20.3, 30.3, 40.3],
                 [(0.3, True, OK), (30.3, False, FAILED)], id="startup-interval-then-period"),
    pytest.param(dict(success_threshold=3, period_seconds=2),
                 [0, 1, 0, 0, 0],
                 [0, 2, 4, 6, 8, 10],  # the first success ends the startup interval, even before ready
                 [(8, True, OK)], id="period-after-first-success-not-after-ready"),
    pytest.param(dict(failure_threshold=1),
                 [0, 1, 0, 1],
                 [0, 10, 20, 30, 40],
                 [(0, True, OK), (10, False, FAILED), (20, True, OK), (30, False, FAILED)], id="flapping"),
    pytest.param(dict(failure_threshold=3),
                 [0, 1, 1, 0, 1, 1, 0],
                 [0, 10, 20, 30, 40, 50, 60, 70],
                 [(0, True, OK)], id="flapping-below-the-failure-threshold"),
    pytest.param(dict(failure_threshold=1),
                 [0, HANG, 0],
                 [0, 10, 20, 30],  # start to start: the timed-out attempt does not shift the next
                 [(0, True, OK), (11, False, TIMED_OUT), (20, True, OK)], id="timeout"),
    pytest.param(dict(),
                 [HANG, 0],
                 [0, 1, 11],  # the startup interval passed during the timeout: next attempt at once
                 [(1, True, OK)], id="timeout-before-ready"),
])
async def test_run_readiness(autojump_clock, probe, statuses, times, changes):
    assert await run_script(check(**probe), statuses) == (pytest.approx(times), changes)


async def test_run_readiness_with_a_startup_interval_of_its_own(autojump_clock):
    assert await run_script(check(period_seconds=7), [1, 1, 0, 0], startup_interval=0.5) == (
        [0, 0.5, 1, 8, 15], [(1, True, OK)])


async def test_run_readiness_without_a_probe_is_ready_once_and_runs_on(autojump_clock, nursery):
    changes = []
    start = trio.current_time()
    nursery.start_soon(partial(run_readiness, None, CONTAINER, IP, connect=no_connect, run_command=no_command,
                               on_change=lambda *change: changes.append((trio.current_time() - start, *change))))
    await trio.sleep(10**6)
    assert changes == [(0, True, "no readiness probe")]
    nursery.cancel_scope.cancel()


async def test_run_readiness_over_tcp(autojump_clock):
    """The loop with a tcpSocket probe: a port that opens after a while."""
    opened_at = 0.35
    changes, attempts = [], []

    async def connect(ip, port):
        attempts.append((round(trio.current_time() - start, 6), ip, port))
        if trio.current_time() - start < opened_at:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        if len(attempts) == 6:
            scope.cancel()
        return trio.testing.memory_stream_pair()[0]

    start = trio.current_time()
    with trio.fail_after(3600), trio.CancelScope() as scope:
        await run_readiness(r.Probe("tcpSocket", port="http", period_seconds=60), CONTAINER, IP, connect=connect,
                            run_command=no_command, on_change=lambda *change: changes.append(change))
    assert [t for t, *_ in attempts] == pytest.approx([0, 0.1, 0.2, 0.3, 0.4, 60.4])
    assert {(ip, port) for _, ip, port in attempts} == {(IP, 8080)}
    assert changes == [(True, "connected to 10.244.0.2:8080")]


async def test_run_readiness_rejects_a_bad_port_before_waiting(autojump_clock):
    start = trio.current_time()
    with pytest.raises(ValueError, match="no port named 'metrics'"):
        await run_readiness(r.Probe("tcpSocket", port="metrics", initial_delay_seconds=30), CONTAINER, IP,
                            connect=no_connect, run_command=no_command, on_change=lambda *change: None)
    assert trio.current_time() == start


async def test_on_result_hears_every_attempt_and_on_change_only_changes(autojump_clock):
    probe = r.Probe("exec", command=("check",), period_seconds=1, failure_threshold=1)
    outcomes = iter([1, 1, 0, 0, 1])
    results, changes = [], []

    async def run_command(argv):
        return next(outcomes)

    with trio.move_on_after(3.0):  # attempts at 0, 0.1, 0.2 (the first success), then 1.2 and 2.2
        await run_readiness(probe, r.Container("app"), "10.244.0.2", connect=None, run_command=run_command,
                            on_change=lambda ready, message: changes.append(ready),
                            on_result=lambda result: results.append(result.ok))
    assert results == [False, False, True, True, False]
    assert changes == [True, False]


# ---------------------------------------------------------------- liveness

@pytest.mark.parametrize("threshold, results, restarts", [
    (3, [False, False, False], [2]),
    (3, [False, False, True, False, False, False], [5]),  # a success starts the count over
    (1, [True, False, False], [1, 2]),
    (2, [False, False, False, False, False], [1, 3]),  # after a restart the count starts over
    (3, [True] * 5, []),
])
def test_liveness_counts_failures_in_a_row(threshold, results, restarts):
    liveness = Liveness(threshold)
    assert [i for i, ok in enumerate(results) if liveness.observe(ok)] == restarts


class Runs:
    """A fake container for run_liveness: runs numbered 1, 2...; ``restart`` ends the current run and
    starts the next one 1 s later (the supervisor's backoff), as a restart policy of Always would."""

    def __init__(self, script: Script, crash_at: float | None = None) -> None:
        self.script = script
        self.run: int | None = None
        self.count = 0
        self.restarts: list[tuple[float, object, str]] = []
        self.changed = trio.Event()
        self.crash_at = crash_at  # the first run exits by itself then

    async def start(self) -> None:
        self.count += 1
        self.run = self.count
        self.changed.set()
        self.changed = trio.Event()

    async def started(self) -> object:
        while self.run is None:
            await self.changed.wait()
        return self.run

    def current(self) -> object:
        if self.crash_at is not None and self.run == 1 and self.script.now() >= self.crash_at:
            self.run = None
        return self.run

    async def restart(self, run: object, message: str) -> None:
        self.restarts.append((self.script.now(), run, message))
        self.run = None
        await trio.sleep(1)
        await self.start()


async def run_liveness_script(probe: r.Probe, statuses: list[int | None], crash_at: float | None = None,
                              next_run_at: float | None = None):
    """run_liveness over fake runs until the script is done; the first run ends by itself at
    ``crash_at`` and the next one starts at ``next_run_at``, if given."""
    with trio.fail_after(3600):
        with trio.CancelScope() as scope:
            script = Script(statuses, scope)
            runs = Runs(script, crash_at)
            await runs.start()
            async with trio.open_nursery() as nursery:
                if next_run_at is not None:
                    async def later() -> None:
                        await trio.sleep(next_run_at)
                        await runs.start()
                    nursery.start_soon(later)
                await run_liveness(probe, CONTAINER, IP, connect=no_connect, run_command=script,
                                   started=runs.started, current=runs.current, restart=runs.restart)
    assert scope.cancelled_caught
    return script.times, runs.restarts


async def test_liveness_restarts_after_failure_threshold_failures(autojump_clock):
    probe = check(initial_delay_seconds=5, period_seconds=2, failure_threshold=2)
    times, restarts = await run_liveness_script(probe, [0, 1, 0, 1, 1, 0, 1, 1])
    # Attempts from 5 s after the run started, every 2 s; two failures in a row kill run 1 at 13 s;
    # run 2 starts at 14 s and is probed from 19 s, killed at 23 s; run 3 (from 24 s) ends the script.
    assert times == [5, 7, 9, 11, 13, 19, 21, 23, 29]
    assert restarts == [(13, 1, f"Liveness probe failed: {FAILED}"), (23, 2, f"Liveness probe failed: {FAILED}")]


async def test_liveness_timeouts_count_as_failures(autojump_clock):
    times, restarts = await run_liveness_script(check(period_seconds=3, failure_threshold=1), [HANG])
    assert times[0] == 0 and restarts == [(1, 1, f"Liveness probe failed: {TIMED_OUT}")]


async def test_a_run_that_ends_by_itself_is_not_killed_and_the_next_starts_afresh(autojump_clock):
    probe = check(initial_delay_seconds=1, period_seconds=1, failure_threshold=3)
    # Run 1 fails at 1 and 2 s and ends by itself at 2.5 s; run 2 starts at 4 s, fails at 5 and 6 s:
    # four failures, never three in a row of one run, so no kill.
    times, restarts = await run_liveness_script(probe, [1, 1, 1, 1], crash_at=2.5, next_run_at=4)
    assert times == [1, 2, 5, 6, 7] and restarts == []


async def test_run_liveness_rejects_a_bad_port_before_waiting(autojump_clock):
    probe = r.Probe("tcpSocket", port="nope")
    with pytest.raises(ValueError, match="no port named 'nope'"):
        await run_liveness(probe, CONTAINER, IP, connect=no_connect, run_command=no_command,
                           started=None, current=None, restart=None)
