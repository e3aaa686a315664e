"""The connection tracker (ztunnel/connections.py): what the metrics count, what the access log says,
what a policy change closes and what ``/config_dump`` lists, read back the way a user sees them:
metrics from the exposition read by ``prometheus_client``'s parser, the log as JSON lines, the
snapshot through the ``ambient ztunnel-config`` renderer."""

from __future__ import annotations

import datetime as dt
import io
import json

import pytest
import trio
import trio.testing

from mesh.api import workload_pb2 as wpb
from mesh.identity import SpiffeId
from tests.ambient.test_ztunnel_config import SAMPLE
from tests.ztunnel.test_metrics import key, samples
from ambient.ztunnel_config import render
from ztunnel.connections import AccessLog, Connection, ConnectionTracker
from ztunnel.metrics import ZtunnelMetrics, tcp_labels

CLIENT = SpiffeId("cluster.local", "shop", "client")
WEB = SpiffeId("cluster.local", "shop", "web")
CLIENT_POD = wpb.Workload(uid="c", name="client", namespace="shop", service_account="client")
WEB_POD = wpb.Workload(uid="w", name="web-0", workload_name="web", namespace="shop", service_account="web")


class Recorder:
    """The tracker over real metrics and an access log into memory."""

    def __init__(self) -> None:
        self.metrics = ZtunnelMetrics(build_tag="test")
        self.out = io.StringIO()
        self.tracker = ConnectionTracker(self.metrics, AccessLog(self.out))

    def value(self, name: str, labels: dict[str, str]) -> float:
        return samples(self.metrics).get(key(f"istio_tcp_{name}_total", labels), 0.0)

    def values(self, labels: dict[str, str]) -> dict[str, float]:
        return {name: self.value(name, labels) for name in
                ("connections_opened", "connections_closed", "sent_bytes", "received_bytes")}

    def log(self) -> list[dict]:
        text = self.out.getvalue()
        assert text == "" or text.endswith("\n")
        return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


def inbound_labels() -> dict[str, str]:
    return tcp_labels(reporter="destination", source=CLIENT_POD, source_principal=str(CLIENT), destination=WEB_POD,
                      destination_principal=str(WEB), destination_service=None, mutual_tls=True)


def inbound(**kw) -> Connection:
    args = dict(direction="inbound", pod="shop/web-0", protocol="HBONE", source=("10.244.1.10", 40000),
                destination=("10.244.0.11", 8080), source_workload="shop/client", source_identity=CLIENT,
                destination_workload="shop/web-0", destination_identity=WEB, labels=inbound_labels())
    return Connection(**{**args, **kw})


# ---------------------------------------------------------------- metrics and the access log


async def test_an_allowed_connection_counts_opened_then_closed_with_its_bytes(rec, autojump_clock):
    labels = inbound_labels()
    conn = inbound(policy="shop/allow-client", reason="allowed by shop/allow-client")
    with rec.tracker.track(conn):
        assert rec.values(labels) == {"connections_opened": 1, "connections_closed": 0, "sent_bytes": 0,
                                      "received_bytes": 0}
        assert rec.log() == []  # one line, when it ends
        conn.counts.received += 80  # from the client
        conn.counts.sent += 1200  # back to it
        await trio.sleep(1.5)
    assert rec.values(labels) == {"connections_opened": 1, "connections_closed": 1, "sent_bytes": 1200,
                                  "received_bytes": 80}
    (line,) = rec.log()
    stamp = dt.datetime.fromisoformat(line.pop("time"))
    assert stamp.tzinfo is not None and abs(dt.datetime.now(dt.timezone.utc) - stamp) < dt.timedelta(minutes=1)
    assert line == {
        "message": "connection complete", "direction": "inbound", "protocol": "HBONE",
        "src.addr": "10.244.1.10:40000", "src.workload": "shop/client", "src.identity": str(CLIENT),
        "dst.addr": "10.244.0.11:8080", "dst.workload": "shop/web-0", "dst.identity": str(WEB),
        "bytes_sent": 1200, "bytes_recv": 80, "duration_ms": 1500.0, "decision": "allow",
        "policy": "shop/allow-client", "reason": "allowed by shop/allow-client",
    }


async def test_connections_with_the_same_labels_add_up(rec):
    labels = inbound_labels()
    for sent, received in ((10, 1), (20, 2), (30, 3)):
        conn = inbound()
        with rec.tracker.track(conn):
            conn.counts.sent, conn.counts.received = sent, received
    assert rec.values(labels) == {"connections_opened": 3, "connections_closed": 3, "sent_bytes": 60,
                                  "received_bytes": 6}
    assert len(rec.log()) == 3


async def test_a_denied_connection_is_logged_but_not_counted(rec):
    labels = inbound_labels()
    conn = inbound(decision="deny", policy="shop/deny-ops", reason="denied by DENY policy shop/deny-ops")
    with rec.tracker.track(conn):
        pass
    assert key("istio_tcp_connections_opened_total", labels) not in samples(rec.metrics)
    assert key("istio_tcp_connections_closed_total", labels) not in samples(rec.metrics)
    (line,) = rec.log()
    assert (line["message"], line["decision"], line["policy"], line["reason"]) == (
        "connection denied", "deny", "shop/deny-ops", "denied by DENY policy shop/deny-ops")
    assert "error" not in line  # fields without a value are left out


async def test_a_failed_connection_is_counted_and_logged_with_its_error(rec):
    labels = inbound_labels()
    conn = inbound()
    with rec.tracker.track(conn):
        conn.fail("the app at 10.244.0.11:8080 did not accept: Connection refused")
    assert rec.values(labels)["connections_opened"] == rec.values(labels)["connections_closed"] == 1
    (line,) = rec.log()
    assert (line["message"], line["decision"], line["error"]) == (
        "connection failed", "allow", "the app at 10.244.0.11:8080 did not accept: Connection refused")


async def test_a_connection_denied_after_it_was_counted_is_also_counted_closed(rec):
    """An outbound connection is counted when it starts; the far side may then refuse it with 401
    (``fail(denied=True)``). Opened and closed must still pair up, or the dashboards show it open
    for ever."""
    labels = tcp_labels(reporter="source", source=CLIENT_POD, source_principal=str(CLIENT), destination=WEB_POD,
                        destination_principal=str(WEB), destination_service=None, mutual_tls=True)
    conn = inbound(direction="outbound", pod="shop/client", labels=labels)
    with rec.tracker.track(conn):
        conn.counts.received = 5
        conn.fail("HBONE CONNECT refused with 401", denied=True)
    assert rec.values(labels) == {"connections_opened": 1, "connections_closed": 1, "sent_bytes": 0,
                                  "received_bytes": 5}
    (line,) = rec.log()
    assert (line["message"], line["decision"], line["error"]) == (
        "connection denied", "deny", "HBONE CONNECT refused with 401")


async def test_plaintext_and_ipv6_addresses_in_the_log(rec):
    conn = inbound(protocol="TCP", source=("fd00::7", 40000), destination=("fd00::5", 8080), source_identity=None,
                   source_workload=None, destination_service="shop/web.shop.svc.cluster.local")
    with rec.tracker.track(conn):
        pass
    (line,) = rec.log()
    assert (line["src.addr"], line["dst.addr"], line["dst.service"]) == (
        "[fd00::7]:40000", "[fd00::5]:8080", "shop/web.shop.svc.cluster.local")
    assert "src.identity" not in line and "src.workload" not in line


async def test_without_metrics_only_the_log_is_written():
    out = io.StringIO()
    tracker = ConnectionTracker(None, AccessLog(out))
    with tracker.track(inbound()):
        pass
    assert json.loads(out.getvalue())["message"] == "connection complete"


# ---------------------------------------------------------------- re-evaluation under new policy


async def test_reevaluate_cancels_only_what_the_new_policy_denies(rec):
    labels = inbound_labels()
    verdicts = {"stays": (True, "shop/allow-client", "allowed by shop/allow-client"),
                "goes": (False, "shop/deny-ops", "denied by DENY policy shop/deny-ops")}
    conns = {"stays": inbound(source=("10.244.1.10", 1)), "goes": inbound(source=("10.244.1.10", 2)),
             "no-recheck": inbound(source=("10.244.1.10", 3))}
    for name in verdicts:
        conns[name].recheck = lambda name=name: verdicts[name]
    ended: dict[str, bool] = {}

    async def serve(name: str) -> None:
        with rec.tracker.track(conns[name]):
            await trio.sleep_forever()  # the relay, until its scope is cancelled
        ended[name] = True

    async with trio.open_nursery() as nursery:
        for name in conns:
            nursery.start_soon(serve, name)
        await trio.testing.wait_all_tasks_blocked()
        assert len(rec.tracker) == 3
        assert rec.tracker.reevaluate() == 1
        await trio.testing.wait_all_tasks_blocked()
        assert ended == {"goes": True}
        assert len(rec.tracker) == 2
        assert rec.tracker.reevaluate() == 0  # the rest are still allowed
        (line,) = rec.log()
        assert line["src.addr"] == "10.244.1.10:2"
        assert (line["message"], line["decision"], line["policy"], line["reason"], line["error"]) == (
            "connection denied", "deny", "shop/deny-ops", "policy changed: denied by DENY policy shop/deny-ops",
            "closed: denied by a policy change")
        # It was counted as opened under the old policy: its end is counted too.
        assert rec.values(labels)["connections_opened"] == 3
        assert rec.values(labels)["connections_closed"] == 1
        rec.tracker.cancel_all()
    assert ended == {"goes": True, "stays": True, "no-recheck": True}
    assert rec.values(labels)["connections_closed"] == 3
    assert [line["message"] for line in rec.log()] == ["connection denied"] + ["connection complete"] * 2


async def test_reevaluate_skips_connections_already_denied(rec):
    calls = []
    conn = inbound(decision="deny", recheck=lambda: calls.append(1) or (False, None, "x"))
    with rec.tracker.track(conn):
        assert rec.tracker.reevaluate() == 0
    assert calls == []


# ---------------------------------------------------------------- draining and the config dump


async def test_wait_empty_returns_when_the_last_connection_ends(rec):
    await rec.tracker.wait_empty()  # nothing open: at once
    release = {name: trio.Event() for name in ("a", "b")}
    drained = trio.Event()

    async def serve(name: str) -> None:
        with rec.tracker.track(inbound()):
            await release[name].wait()

    async def drain() -> None:
        await rec.tracker.wait_empty()
        drained.set()

    async with trio.open_nursery() as nursery:
        for name in release:
            nursery.start_soon(serve, name)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(drain)
        await trio.testing.wait_all_tasks_blocked()
        release["a"].set()
        await trio.testing.wait_all_tasks_blocked()
        assert not drained.is_set() and len(rec.tracker) == 1
        release["b"].set()
        await trio.testing.wait_all_tasks_blocked()
        assert drained.is_set() and len(rec.tracker) == 0


async def test_snapshot_is_the_config_dump_connections_shape(rec, autojump_clock):
    inside = trio.Event()
    done = trio.Event()

    async def serve(conn: Connection) -> None:
        with rec.tracker.track(conn):
            conn.counts.sent, conn.counts.received = 1200, 80
            inside.set()
            await done.wait()

    hbone = inbound(policy="shop/allow-client")
    passthrough = Connection(direction="outbound", pod="legacy/db", protocol="TCP", source=("10.244.0.12", 50000),
                             destination=("93.184.216.34", 443),
                             labels=tcp_labels(reporter="source", source=None, source_principal=None, destination=None,
                                               destination_principal=None, destination_service=None,
                                               mutual_tls=False))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, hbone)
        await inside.wait()
        await trio.sleep(75.5)
        inside = trio.Event()
        nursery.start_soon(serve, passthrough)
        await inside.wait()
        await trio.sleep(1.25)
        snapshot = rec.tracker.snapshot()
        assert snapshot == [
            {"direction": "inbound", "pod": "shop/web-0", "protocol": "HBONE", "source": "10.244.1.10:40000",
             "destination": "10.244.0.11:8080", "source_identity": str(CLIENT), "destination_identity": str(WEB),
             "policy": "shop/allow-client", "bytes_sent": 1200, "bytes_received": 80, "duration_seconds": 76.75},
            {"direction": "outbound", "pod": "legacy/db", "protocol": "TCP", "source": "10.244.0.12:50000",
             "destination": "93.184.216.34:443", "source_identity": None, "destination_identity": None,
             "policy": None, "bytes_sent": 1200, "bytes_received": 80, "duration_seconds": 1.25},
        ]
        assert all(set(entry) == set(SAMPLE["connections"][0]) for entry in snapshot)
        json.dumps(snapshot)  # served as JSON
        table = render("connections", {"connections": snapshot}).splitlines()
        assert table[1].split()[:4] == ["legacy", "db", "Outbound", "10.244.0.12:50000"]
        assert table[2].split()[-4:] == ["shop/allow-client", "1200", "80", "1m16s"]
        done.set()
    assert rec.tracker.snapshot() == []
