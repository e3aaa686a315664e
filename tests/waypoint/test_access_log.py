"""The waypoint's access log: one JSON line per request or tunnel, in ztunnel's vocabulary."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import time
from dataclasses import replace

import pytest
import trio
import trio.testing

from tests.waypoint.telemetry_world import REQUEST, TUNNEL, request
from waypoint.access_log import LOGGER_NAME, AccessLog, request_entry, tcp_entry
from waypoint.limits import ACCESS_LOG_FLUSH_INTERVAL
from ztunnel.connections import Connection, access_log_entry

ENDED = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)


def test_a_request_line():
    assert request_entry(REQUEST, ENDED) == {
        "time": "2026-01-02T03:04:05.678Z", "message": "request complete",
        "start_time": "2026-01-02T03:04:05.666Z",  # 12 ms before the end
        "method": "GET", "path": "/items?id=7", "protocol": "HTTP/1.1", "response_code": 200, "response_flags": "-",
        "authority": "web.shop.svc.cluster.local", "request_id": "req-1",
        "src.addr": "10.244.0.11:40000", "src.workload": "client", "src.namespace": "shop",
        "src.identity": "spiffe://cluster.local/ns/shop/sa/client",
        "dst.addr": "10.244.0.12:8080", "dst.service": "web.shop.svc.cluster.local",
        "dst.workload": REQUEST.destination.name, "dst.namespace": "shop",
        "dst.identity": "spiffe://cluster.local/ns/shop/sa/web",
        "duration": "12ms", "bytes_recv": 0, "bytes_sent": 512, "route_name": "shop/web",
    }


def test_the_shared_fields_have_ztunnels_names():
    conn = Connection(direction="inbound", pod="shop/web", protocol="HBONE", source=("10.0.0.1", 1),
                      destination=("10.0.0.2", 2), source_name="a", source_namespace="b",
                      destination_name="c", destination_namespace="d", destination_hostname="e",
                      policy="p", reason="r", error="x")
    ztunnel = set(access_log_entry(conn, 0.1, "t"))
    ours = set(request_entry(request(policy="p", response_flags="RBAC", status=403, detail="d"), ENDED))
    ours |= set(request_entry(request(detail="x", status=503, response_flags="UF"), ENDED))
    shared = {"time", "message", "src.addr", "src.workload", "src.namespace", "dst.addr", "dst.service",
              "dst.workload", "dst.namespace", "duration", "bytes_sent", "bytes_recv", "policy", "reason", "error",
              "protocol"}
    assert shared <= ztunnel and shared <= ours


def test_a_denied_request_names_the_policy_and_the_reason():
    entry = request_entry(request(status=403, response_flags="RBAC", policy="shop/only-get", detail="no ALLOW matched",
                                  destination=None, destination_principal=None, upstream_address=None), ENDED)
    assert (entry["message"], entry["response_code"], entry["response_flags"]) == ("request denied", 403, "RBAC")
    assert (entry["policy"], entry["reason"]) == ("shop/only-get", "no ALLOW matched")
    assert "error" not in entry and "dst.addr" not in entry and "dst.workload" not in entry


def test_a_failed_request_has_the_error():
    entry = request_entry(request(status=503, response_flags="UF,URX", detail="connection refused"), ENDED)
    assert (entry["message"], entry["error"]) == ("request failed", "connection refused")
    assert request_entry(request(status=0, response_flags="DC"), ENDED)["message"] == "request failed"
    assert request_entry(request(grpc_status="14", protocol="grpc"), ENDED)["grpc_status"] == "14"


def test_a_tunnel_line():
    entry = tcp_entry(TUNNEL, ENDED)
    assert entry["message"] == "connection complete" and entry["protocol"] == "TCP"
    assert (entry["bytes_recv"], entry["bytes_sent"], entry["duration"]) == (100, 300, "2500ms")
    assert entry["start_time"] == "2026-01-02T03:04:03.178Z"
    assert "method" not in entry and "response_code" not in entry


ENDED_NS = (ENDED - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1) * 1000
# How logging's default formatter writes ENDED's line (local time, milliseconds after a comma).
ASCTIME = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ENDED.timestamp())) + ",678"


def entries(text: str) -> list[dict]:
    """What lab.demo and the e2e tests read of a waypoint's log."""
    return [json.loads(line.split(" ambient.waypoint.access: ", 1)[1]) for line in text.splitlines()
            if " ambient.waypoint.access: " in line]


@pytest.mark.parametrize("record", [
    REQUEST, request(path='/a"b\nc\u00e9', authority="h\x00"), request(source=None, source_principal=None),
    request(policy="p", response_flags="RBAC", status=403, detail="d", destination=None, upstream_address=None,
            destination_principal=None, destination_service=None),
    request(status=0, response_flags="DC", route=None, request_id=None, grpc_status="14"),
    request(source_address=("fd00::1", 5), duration=-1.0),
])
def test_a_line_is_its_entry_as_json(record):
    out = io.StringIO()
    log = AccessLog(clock=lambda: ENDED_NS, stream=out)
    with enabled():
        log.request(record)
    log.flush()
    line = out.getvalue()
    assert line.startswith(f"{ASCTIME} INFO ambient.waypoint.access: {{") and line.endswith("}\n")
    assert line.count("\n") == 1  # request content is escaped on its line, intact when read
    [entry] = entries(line)
    assert list(entry.items()) == list(request_entry(record, ENDED).items())  # the same fields, in order
    assert line.split(": ", 1)[1] == json.dumps(request_entry(record, ENDED)) + "\n"


def test_a_tunnel_line_is_its_entry_as_json():
    out = io.StringIO()
    log = AccessLog(clock=lambda: ENDED_NS, stream=out)
    with enabled():
        log.tcp(TUNNEL)
        log.tcp(replace(TUNNEL, response_flags="UF", detail="refused", upstream_address=None))
    log.flush()
    assert entries(out.getvalue()) == [tcp_entry(TUNNEL, ENDED), tcp_entry(
        replace(TUNNEL, response_flags="UF", detail="refused", upstream_address=None), ENDED)]


@contextlib.contextmanager
def enabled(level: int = logging.INFO):
    logger = logging.getLogger(LOGGER_NAME)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


@contextlib.asynccontextmanager
async def flushing(log: AccessLog, level: int = logging.INFO):
    """``log`` with its flusher running and the access logger at ``level``; the flusher ends on exit."""
    with enabled(level):
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run)
            yield
            nursery.cancel_scope.cancel()


def test_nothing_is_built_when_the_access_logger_is_off():
    logger = logging.getLogger("tests.waypoint.access-off")
    logger.setLevel(logging.WARNING)

    def clock() -> int:
        raise AssertionError("the line was built")

    out = io.StringIO()
    AccessLog(logger, clock=clock, stream=out).request(REQUEST)
    AccessLog(logger, clock=clock, stream=out).tcp(TUNNEL)
    logger.setLevel(logging.INFO)
    with pytest.raises(AssertionError):
        AccessLog(logger, clock=clock, stream=out).request(REQUEST)


async def test_lines_are_written_together_after_the_interval(autojump_clock):
    out = io.StringIO()
    log = AccessLog(clock=lambda: ENDED_NS, stream=out)
    async with flushing(log):
        log.request(REQUEST)
        await trio.sleep(ACCESS_LOG_FLUSH_INTERVAL / 2)
        log.request(REQUEST)
        assert out.getvalue() == ""  # buffered
        await trio.sleep(ACCESS_LOG_FLUSH_INTERVAL / 2 + 0.01)
        assert len(entries(out.getvalue())) == 2
        log.tcp(TUNNEL)
        await trio.sleep(ACCESS_LOG_FLUSH_INTERVAL)
        assert len(entries(out.getvalue())) == 3


class Writes(io.StringIO):
    """A stream that counts its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


async def test_a_full_buffer_is_written_at_once_and_stays_bounded(autojump_clock):
    out = Writes()
    log = AccessLog(clock=lambda: ENDED_NS, stream=out, buffer_bytes=4096)
    async with flushing(log):
        start = trio.current_time()
        while log._size < 4096:
            log.request(REQUEST)
        assert out.writes == 0 and log._size < 4096 + 1024  # a full buffer plus one line at most
        await trio.testing.wait_all_tasks_blocked()
        # The flusher wrote it as soon as it was full, not after the interval.
        assert trio.current_time() == start and out.writes == 1 and log._size == 0
        assert len(out.getvalue()) >= 4096
        # Filled again before the flusher runs: the line after a full buffer writes it itself.
        while out.writes == 1:
            full = log._size >= 4096
            log.request(REQUEST)
            assert log._size < 4096 + 1024
        assert full and log._size == len(out.getvalue().splitlines(keepends=True)[-1])  # the new line waits
    whole = entries(out.getvalue())
    assert whole and all(entry == request_entry(REQUEST, ENDED) for entry in whole)


async def test_what_waits_is_written_when_the_flusher_ends(autojump_clock):
    out = io.StringIO()
    log = AccessLog(clock=lambda: ENDED_NS, stream=out)
    async with flushing(log):
        log.request(REQUEST)
    assert trio.current_time() < ACCESS_LOG_FLUSH_INTERVAL and len(entries(out.getvalue())) == 1


async def test_no_line_when_the_level_is_off(autojump_clock):
    out = io.StringIO()
    log = AccessLog(clock=lambda: ENDED_NS, stream=out)
    async with flushing(log, logging.CRITICAL + 10):  # POST /logging?level=ambient.waypoint.access:off
        log.request(REQUEST)
        log.tcp(TUNNEL)
        await trio.sleep(ACCESS_LOG_FLUSH_INTERVAL * 2)
    assert out.getvalue() == ""


def test_a_failed_write_loses_the_buffer_with_one_warning(caplog):
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    log = AccessLog(clock=lambda: ENDED_NS, stream=Broken(), buffer_bytes=1)
    with enabled(), caplog.at_level(logging.WARNING, logger="ambient.waypoint"):
        log.request(REQUEST)  # a full buffer, written at once: no exception into the request
        log.request(REQUEST)
    assert log._size == 0
    warnings = [r for r in caplog.records if r.name == "ambient.waypoint"]
    assert len(warnings) == 1 and "1 line(s) lost" in warnings[0].getMessage()


def test_stderr_by_default(capsys):
    log = AccessLog(clock=lambda: ENDED_NS)
    with enabled():
        log.request(REQUEST)
    log.flush()
    assert entries(capsys.readouterr().err) == [request_entry(REQUEST, ENDED)]
