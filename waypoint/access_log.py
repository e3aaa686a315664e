"""The waypoint's access log: one JSON object per request, and per opaque TCP tunnel, written as the
logger ``ambient.waypoint.access`` would at INFO (DESIGN.md section 8).

``request_entry`` and ``tcp_entry`` are pure: a finished record (``waypoint.records``) and the wall
time it ended give the object. The fields are those of Envoy's default access log as Istio encodes
it in JSON (``start_time``, ``method``, ``path``, ``protocol``, ``response_code``, ``response_flags``,
``authority``, ``request_id`` from x-request-id, ``route_name``), except where ztunnel's access log
(``ztunnel.connections.access_log_entry``) already names the same thing, whose name wins so that
one vocabulary reads both proxies' logs:

    time, message                   when the line was written (ISO 8601, UTC), and what happened
    src.addr, src.workload, src.namespace, src.identity     the client: its address (the original
                                    one, from ``forwarded``), its pod and namespace, its verified identity
    dst.addr                        where the request went (Envoy's ``upstream_host``): the endpoint
    dst.service, dst.workload, dst.namespace, dst.identity  the Service's hostname, the endpoint's pod
                                    and namespace, and the identity its tunnel proved
    duration                        whole milliseconds, as ztunnel writes it: ``"12ms"``
    bytes_recv, bytes_sent          body bytes from the client and to it (Envoy's ``bytes_received``
                                    and ``bytes_sent``; ztunnel's inbound meaning)
    policy, reason, error           the L7 policy that decided; why it denied (RBAC), or why the
                                    request failed otherwise: ztunnel's names for its decision and error
                                    (``detail`` for a note on a request that did not fail)

A field without a value is left out. ``start_time`` is RFC 3339 with milliseconds; records carry the
proxy's monotonic clock, so it is the end's wall time less the duration (the proxy hands a record
over as the response ends). Request content (path, authority, x-request-id) is written as received,
JSON-escaped, and is already bounded by the proxy's header limits (``waypoint.limits``).

``AccessLog`` writes the lines itself rather than through a ``logging`` record each (whose record,
formatter and locked write-and-flush per line cost more than the line): each is appended to a buffer
and written in one write to the output stream (stderr, as ``ambient``'s logging handler writes) by
``run``, the flusher, every ``ACCESS_LOG_FLUSH_INTERVAL``, as soon as ``ACCESS_LOG_BUFFER_BYTES``
wait, and when it ends (cancellation, after the waypoint's drain). A line reads as the logging
handler wrote it: ``2026-12-07 01:59:08,005 INFO ambient.waypoint.access: {json}``, logging's default
time (local, with milliseconds), so that what reads the waypoint's log (``lab.demo``, the e2e tests)
splits on `` ambient.waypoint.access: `` as before. The JSON of the two ends is cached by the objects
it comes from, and time strings by the second: per request only the request's own fields are encoded.

Logging is off for a level above INFO on ``ambient.waypoint.access`` (``POST /logging?level=
ambient.waypoint.access:off``): nothing is built then.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import time
from collections.abc import Callable
from json.encoder import encode_basestring_ascii
from typing import TextIO

import trio

from mesh.addresses import format_address
from mesh.api import workload_pb2 as wpb
from mesh.identity import SpiffeId
from waypoint.limits import ACCESS_LOG_BUFFER_BYTES, ACCESS_LOG_FLUSH_INTERVAL
from waypoint.records import NO_FLAGS, RequestRecord, TcpRecord

LOGGER_NAME = "ambient.waypoint.access"
RBAC_FLAG = "RBAC"
SERVER_ERROR = 500  # a response from this status up is a failure, as Envoy counts it

log = logging.getLogger("ambient.waypoint")

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)

# Entries of each cache below before it is dropped whole: seconds of time strings (a second's requests
# share one; start times reach back by their durations), and the ends of requests (a pair of workloads
# and identities per entry, so the mesh's size at most; each entry holds its objects, see _side).
_TIME_CACHE_SIZE = 256
_ENDS_CACHE_SIZE = 1024

_utc_seconds: dict[int, str] = {}


def _micros(moment: dt.datetime) -> int:
    """Microseconds since the epoch, exactly (a naive time is local, as ``astimezone`` reads it)."""
    if moment.tzinfo is None:
        moment = moment.astimezone(dt.UTC)
    return (moment - _EPOCH) // _MICROSECOND


def _time(micros: int) -> str:
    """RFC 3339 in UTC with milliseconds, ``2026-01-02T03:04:05.678Z``, as ``isoformat`` writes it."""
    second, rest = divmod(micros, 1_000_000)
    text = _utc_seconds.get(second)
    if text is None:
        if len(_utc_seconds) >= _TIME_CACHE_SIZE:
            _utc_seconds.clear()
        text = _utc_seconds[second] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{text}.{rest // 1000:03d}Z"


def _address(address: tuple[str, int] | None) -> str | None:
    return format_address(*address) if address is not None else None


# One side's fields (workload, namespace, identity; the service for the destination) by the identity of
# the objects they come from: the view's workloads and services are swapped whole, never changed, so
# the same objects give the same fields. An entry keeps its objects alive, so an id is not reused while
# it is cached. Held with the fields: their JSON, without the braces, to splice into a line.
_sides: dict[tuple[str, int, int, int], tuple[object, dict[str, object], str]] = {}


def _side(prefix: str, workload: wpb.Workload | None, principal: SpiffeId | None,
          service: wpb.Service | None = None) -> tuple[dict[str, object], str]:
    key = (prefix, id(workload), id(principal), id(service))
    held = _sides.get(key)
    if held is None:
        fields: dict[str, object | None] = {
            f"{prefix}.service": service.hostname if service is not None else None,
            f"{prefix}.workload": workload.name if workload is not None else None,
            f"{prefix}.namespace": workload.namespace if workload is not None else None,
            f"{prefix}.identity": str(principal) if principal else None,
        }
        present = _present(fields)
        if len(_sides) >= _ENDS_CACHE_SIZE:
            _sides.clear()
        held = _sides[key] = ((workload, principal, service), present, _fragment(present))
    return held[1], held[2]


def _ends(record: RequestRecord | TcpRecord) -> list[tuple[dict[str, object], str]]:
    """The fields of the two ends, with ztunnel's names, in their order: each address, then its side."""
    source_address, upstream_address = _address(record.source_address), _address(record.upstream_address)
    return [
        ({"src.addr": source_address}, f'"src.addr": {encode_basestring_ascii(source_address)}')
        if source_address is not None else ({}, ""),
        _side("src", record.source, record.source_principal),
        ({"dst.addr": upstream_address}, f'"dst.addr": {encode_basestring_ascii(upstream_address)}')
        if upstream_address is not None else ({}, ""),
        _side("dst", record.destination, record.destination_principal, record.destination_service),
    ]


def _present(fields: dict[str, object | None]) -> dict[str, object]:
    return {key: value for key, value in fields.items() if value is not None}


# json.dumps's own settings, without the check for circular references: an entry is flat, made here.
_ENCODER = json.JSONEncoder(check_circular=False)


def _fragment(fields: dict[str, object]) -> str:
    """``fields`` as JSON without its braces: ``"a": 1, "b": "x"`` (empty for no fields)."""
    return _ENCODER.encode(fields)[1:-1]


def _flags(flags: str) -> list[str]:
    return [flag for flag in flags.split(",") if flag and flag != NO_FLAGS]


def _outcome(flags: list[str], detail: str | None, failed: bool) -> tuple[str, dict[str, str | None]]:
    """The message, and where the detail goes: ``reason`` for a policy denial, else ``error``."""
    if RBAC_FLAG in flags:
        return "denied", {"reason": detail}
    if flags or failed:
        return "failed", {"error": detail}
    return "complete", {"detail": detail}


# An entry in parts, in the order of its fields: the record's own first fields, the ends (with their
# JSON), the last ones. ``*_entry`` merges them; ``AccessLog`` encodes the first and last and splices
# the ends' cached JSON between them.
_Parts = tuple[dict[str, object], list[tuple[dict[str, object], str]], dict[str, object]]


def _request_parts(record: RequestRecord, ended: int) -> _Parts:
    response_flags = record.response_flags
    # Most requests have no flags: no list to split them into then.
    flags = _flags(response_flags) if response_flags and response_flags != NO_FLAGS else []
    outcome, detail = _outcome(flags, record.detail, record.status == 0 or record.status >= SERVER_ERROR)
    duration = max(record.duration, 0.0)
    first = _present({
        "time": _time(ended), "message": f"request {outcome}",
        "start_time": _time(ended - round(duration * 1_000_000)),
        "method": record.method, "path": record.path, "protocol": record.http_version,
        "response_code": record.status, "response_flags": response_flags or NO_FLAGS,
        "grpc_status": record.grpc_status, "authority": record.authority, "request_id": record.request_id,
    })
    last = _present({
        "duration": f"{int(duration * 1000)}ms",
        "bytes_recv": record.request_bytes, "bytes_sent": record.response_bytes,
        "route_name": record.route, "policy": record.policy, **detail,
    })
    return first, _ends(record), last


def _tcp_parts(record: TcpRecord, ended: int) -> _Parts:
    outcome, detail = _outcome(_flags(record.response_flags), record.detail, False)
    duration = max(record.duration, 0.0)
    first = _present({
        "time": _time(ended), "message": f"connection {outcome}",
        "start_time": _time(ended - round(duration * 1_000_000)),
        "protocol": "TCP", "response_flags": record.response_flags or NO_FLAGS,
    })
    last = _present({
        "duration": f"{int(duration * 1000)}ms",
        "bytes_recv": record.received_bytes, "bytes_sent": record.sent_bytes, **detail,
    })
    return first, _ends(record), last


def _entry(parts: _Parts) -> dict[str, object]:
    first, ends, last = parts
    entry = dict(first)
    for fields, _ in ends:
        entry.update(fields)
    entry.update(last)
    return entry


def _json(parts: _Parts) -> str:
    """``json.dumps(_entry(parts))``, the same text, with the ends' JSON as cached."""
    first, ends, last = parts
    fragments = [_fragment(first), *(fragment for _, fragment in ends), _fragment(last)]
    return "{" + ", ".join([fragment for fragment in fragments if fragment]) + "}"


def request_entry(record: RequestRecord, ended: dt.datetime) -> dict[str, object]:
    """The access log's object for ``record``, which ended at ``ended`` (an aware datetime)."""
    return _entry(_request_parts(record, _micros(ended)))


def tcp_entry(record: TcpRecord, ended: dt.datetime) -> dict[str, object]:
    """The access log's object for an opaque TCP tunnel: ztunnel's fields, ``protocol`` ``"TCP"``."""
    return _entry(_tcp_parts(record, _micros(ended)))


class AccessLog:
    """Writes one line per finished request or tunnel, as ``logger`` (``ambient.waypoint.access``) would at
    INFO, to ``stream`` (stderr, looked up at each write, by default), buffered (see the module).

    ``run`` is the flusher, to run as long as the waypoint; without it a line waits for a full buffer or
    ``flush``. ``clock`` gives the wall time in nanoseconds (``time.time_ns``; a parameter for the tests).
    Not thread-safe: the waypoint's records come from its trio thread."""

    def __init__(self, logger: logging.Logger | None = None, clock: Callable[[], int] = time.time_ns,
                 stream: TextIO | None = None, *, buffer_bytes: int = ACCESS_LOG_BUFFER_BYTES,
                 flush_interval: float = ACCESS_LOG_FLUSH_INTERVAL) -> None:
        self.logger = logger if logger is not None else logging.getLogger(LOGGER_NAME)
        self._clock = clock
        self._stream = stream
        self.buffer_bytes = buffer_bytes
        self.flush_interval = flush_interval
        self._lines: list[str] = []
        self._size = 0  # characters in _lines: bytes too, the lines are ASCII (JSON escapes the rest)
        self._full: trio.Event | None = None  # set when the buffer is full, while the flusher runs
        self._failing = False  # the last write failed (and said so): the next failure is not repeated
        self._second = (-1, "")  # the last second's local time, as logging's asctime writes it

    def request(self, record: RequestRecord) -> None:
        if self.logger.isEnabledFor(logging.INFO):
            now = self._clock() // 1000
            self._append(now, _json(_request_parts(record, now)))

    def tcp(self, record: TcpRecord) -> None:
        if self.logger.isEnabledFor(logging.INFO):
            now = self._clock() // 1000
            self._append(now, _json(_tcp_parts(record, now)))

    def _append(self, micros: int, text: str) -> None:
        second, rest = divmod(micros, 1_000_000)
        if second != self._second[0]:
            self._second = (second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second)))
        line = f"{self._second[1]},{rest // 1000:03d} INFO {self.logger.name}: {text}\n"
        if self._size >= self.buffer_bytes:
            # Full, and the flusher has not run since it was woken: written here, so that the buffer
            # stays within its bound (a full buffer plus one line).
            self.flush()
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self.buffer_bytes:
            if self._full is not None:
                self._full.set()
            else:
                self.flush()

    def flush(self) -> None:
        """Write what waits, in one write. A failed write loses it, with a warning (once until a write
        succeeds again): a broken stream never raises into the request that happened to fill the buffer.

        The write blocks the trio thread for as long as the stream takes (a few KiB once a second to
        stderr: a pipe or a file, read by the container runtime), as logging's handler did per line."""
        if not self._lines:
            return
        text = "".join(self._lines)
        self._lines.clear()
        self._size = 0
        stream = self._stream if self._stream is not None else sys.stderr
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError) as exc:  # EPIPE, a full disk; ValueError: the stream was closed
            if not self._failing:
                log.warning("the access log could not be written, %d line(s) lost: %s", text.count("\n"), exc)
            self._failing = True
        else:
            self._failing = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Flush every ``flush_interval``, and as soon as the buffer is full, until cancelled; then flush
        what waits (the waypoint's drain is over when its nursery is cancelled)."""
        self._full = full = trio.Event()
        task_status.started()
        try:
            while True:
                with trio.move_on_after(self.flush_interval):
                    await full.wait()
                if full.is_set():
                    self._full = full = trio.Event()
                self.flush()
        finally:
            self._full = None
            self.flush()
