"""The waypoint's access log: one JSON line per request or tunnel, in ztunnel's vocabulary."""

from __future__ import annotations

import datetime as dt
import json
import logging

from tests.waypoint.telemetry_world import REQUEST, TUNNEL, request
from waypoint.access_log import LOGGER_NAME, AccessLog, request_entry, tcp_entry
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


def test_lines_go_to_the_access_logger_as_json(caplog):
    log = AccessLog(clock=lambda: ENDED)
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        log.request(request(path='/a"b\nc'))
        log.tcp(TUNNEL)
    records = [r for r in caplog.records if r.name == LOGGER_NAME]
    assert len(records) == 2
    assert json.loads(records[0].getMessage())["path"] == '/a"b\nc'  # escaped on the line, intact when read
    assert "\n" not in records[0].getMessage()
    assert json.loads(records[1].getMessage())["protocol"] == "TCP"


def test_nothing_is_built_when_the_access_logger_is_off():
    logger = logging.getLogger("tests.waypoint.access-off")
    logger.setLevel(logging.WARNING)

    def clock() -> dt.datetime:
        raise AssertionError("the line was built")

    AccessLog(logger, clock=clock).request(REQUEST)
    AccessLog(logger, clock=clock).tcp(TUNNEL)
    logger.setLevel(logging.INFO)
    try:
        AccessLog(logger, clock=clock).request(REQUEST)
    except AssertionError:
        pass
    else:
        raise AssertionError("an enabled access log builds its line")
