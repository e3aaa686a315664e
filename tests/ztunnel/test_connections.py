"""The connection tracker (ztunnel/connections.py): what the metrics count, what the access log says,
what a policy change closes and what ``/config_dump`` lists, read back the way a user sees them:
metrics from the exposition read by ``prometheus_client``'s parser, the log as JSON lines, the
snapshot through the ``ambient ztunnel-config`` renderer."""

from __future__ import annotations

import datetime as dt
import functools
import io
import json

import pytest
import trio
import trio.testing

from ambient.ztunnel_config import render
from mesh.api import workload_pb2 as wpb
from mesh.api.types import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL
from mesh.identity import SpiffeId
from mesh.outbound import HboneToPod, HboneToWaypoint, Passthrough, Refuse
from mesh.proxy_state import ProxyState
from tests.ambient.test_ztunnel_config import SAMPLE
from tests.ztunnel.test_metrics import key, samples
from tests.ztunnel.worlds import WAYPOINT_IPS, WAYPOINT_PODS, discovery_view, uid
from ztunnel.connections import (
    AccessLog,
    Connection,
    ConnectionTracker,
    access_log_entry,
    inbound_connection,
    outbound_connection,
)
from ztunnel.inbound import InboundDecision, InboundRequest
from ztunnel.metrics import FLAG_DENIED, MUTUAL_TLS, NO_TLS, UNKNOWN, ZtunnelMetrics, tcp_labels

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

    def closed(self, labels: dict[str, str], flags: str) -> dict[str, float]:
        """How many connections opened under ``labels`` were closed, and failed, with ``flags``."""
        ended = {**labels, "response_flags": flags}
        return {name: self.value(name, ended) for name in ("connections_closed", "connections_failed")}

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
                destination_workload="shop/web-0", destination_identity=WEB, labels=inbound_labels(),
                hbone_address="10.244.0.11:8080", source_name="client", source_namespace="shop",
                destination_name="web-0", destination_namespace="shop")
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
    assert stamp.tzinfo is not None and abs(dt.datetime.now(dt.UTC) - stamp) < dt.timedelta(minutes=1)
    assert line == {  # Istio ztunnel's fields, then ours
        "message": "connection complete", "direction": "inbound",
        "src.addr": "10.244.1.10:40000", "src.workload": "client", "src.namespace": "shop",
        "src.identity": str(CLIENT), "dst.addr": "10.244.0.11:8080", "dst.hbone_addr": "10.244.0.11:8080",
        "dst.workload": "web-0", "dst.namespace": "shop", "dst.identity": str(WEB),
        "bytes_sent": 1200, "bytes_recv": 80, "duration": "1500ms",
        "protocol": "HBONE", "decision": "allow", "policy": "shop/allow-client",
        "reason": "allowed by shop/allow-client",
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


async def test_a_denied_connection_is_counted_opened_and_closed_with_deny(rec):
    labels = inbound_labels()
    conn = inbound(decision="deny", policy="shop/deny-ops", reason="denied by DENY policy shop/deny-ops",
                   response_flags=FLAG_DENIED)
    with rec.tracker.track(conn):
        pass
    # As Istio's ztunnel: opened (its flag not known yet), then closed with DENY; not a failed connect.
    assert rec.values(labels) == {"connections_opened": 1, "connections_closed": 0, "sent_bytes": 0,
                                  "received_bytes": 0}
    assert rec.closed(labels, "DENY") == {"connections_closed": 1, "connections_failed": 0}
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
    assert rec.closed(labels, "CONNECT")["connections_failed"] == 0  # not said to be a connect failure
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
    assert rec.values(labels) == {"connections_opened": 1, "connections_closed": 0, "sent_bytes": 0,
                                  "received_bytes": 5}
    assert rec.closed(labels, "DENY") == {"connections_closed": 1, "connections_failed": 0}
    (line,) = rec.log()
    assert (line["message"], line["decision"], line["error"]) == (
        "connection denied", "deny", "HBONE CONNECT refused with 401")


async def test_a_failed_upstream_connect_is_closed_with_connect_and_counted_failed(rec):
    labels = inbound_labels()
    with rec.tracker.track(conn := inbound()):
        conn.fail("the app at 10.244.0.11:8080 did not accept: refused", connect=True)
    assert rec.values(labels)["connections_opened"] == 1
    assert rec.closed(labels, "-") == {"connections_closed": 0, "connections_failed": 0}
    assert rec.closed(labels, "CONNECT") == {"connections_closed": 1, "connections_failed": 1}
    (line,) = rec.log()
    assert (line["message"], line["error"]) == (
        "connection failed", "the app at 10.244.0.11:8080 did not accept: refused")
    text = rec.metrics.exposition().decode()
    assert "# TYPE istio_tcp_connections_failed_total counter" in text


async def test_plaintext_and_ipv6_addresses_in_the_log(rec):
    conn = inbound(protocol="TCP", source=("fd00::7", 40000), destination=("fd00::5", 8080), source_identity=None,
                   source_name=None, source_namespace=None, hbone_address=None,
                   destination_hostname="web.shop.svc.cluster.local")
    with rec.tracker.track(conn):
        pass
    (line,) = rec.log()
    assert (line["src.addr"], line["dst.addr"], line["dst.service"], line["dst.workload"]) == (
        "[fd00::7]:40000", "[fd00::5]:8080", "web.shop.svc.cluster.local", "web-0")
    # Plaintext proves no identity: none is logged, not even the destination's own.
    assert not {"src.identity", "dst.identity", "src.workload", "src.namespace", "dst.hbone_addr"} & set(line)


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


# ---------------------------------------------------------------- records, as pure functions

# What the control plane sends for the shared waypoint world (db goes through the waypoint wp) with a
# Service in front of web-0 and a pod outside the mesh.
RECORD_WORLD = WAYPOINT_PODS + """---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: legacy, namespace: shop, labels: {istio.io/dataplane-mode: none}}
spec: {serviceAccountName: legacy, containers: [{name: app}]}
"""
RECORD_IPS = {**WAYPOINT_IPS, "shop/legacy": "10.244.0.40"}
WEB_SERVICE_KEY = "shop/web.shop.svc.cluster.local"
DB, WAYPOINT_ID = SpiffeId("cluster.local", "shop", "db"), SpiffeId("cluster.local", "shop", "wp")
APP = ("10.244.0.10", 40000)  # the client app's address


@functools.cache
def record_state() -> ProxyState:
    view = discovery_view(RECORD_WORLD, RECORD_IPS, {"shop/wp": "10.96.0.99", "shop/web": "10.96.0.11"})
    return ProxyState.from_addresses(view[ADDRESS_TYPE_URL], view[AUTHORIZATION_TYPE_URL])


def outbound_record(plan, original: tuple[str, int]) -> tuple[tuple, dict[str, str]]:
    state = record_state()
    conn = outbound_connection(pod="shop/client", client=APP, original=original,
                               source=state.workloads[uid("shop/client")], source_identity=CLIENT, plan=plan,
                               state=state)
    assert (conn.direction, conn.pod, conn.source, conn.destination, conn.source_workload, conn.source_identity) == (
        "outbound", "shop/client", APP, original, "shop/client", CLIENT)
    assert conn.labels["reporter"] == "source" and conn.labels["source_workload"] == "client"
    assert conn.decision == "allow" and conn.recheck is None
    record = (conn.protocol, conn.destination_workload, conn.destination_identity, conn.destination_service)
    return record, {name: conn.labels[name] for name in RECORD_LABELS}


RECORD_LABELS = ("source_principal", "destination_workload", "destination_principal", "destination_service",
                 "destination_service_name", "connection_security_policy")
U = UNKNOWN


def labels_of(*values: str) -> dict[str, str]:
    return dict(zip(RECORD_LABELS, values, strict=True))


OUTBOUND_RECORDS = [
    pytest.param(HboneToPod(("10.244.0.11", 15008), "10.244.0.11:8080", WEB, uid("shop/web-0")),
                 ("10.244.0.11", 8080),
                 ("HBONE", "shop/web-0", WEB, None),
                 labels_of(str(CLIENT), "web-0", str(WEB), U, U, MUTUAL_TLS), id="hbone-to-a-pod-by-its-ip"),
    pytest.param(HboneToPod(("10.244.0.11", 15008), "10.244.0.11:8080", WEB, uid("shop/web-0"), WEB_SERVICE_KEY),
                 ("10.96.0.11", 80),
                 ("HBONE", "shop/web-0", WEB, WEB_SERVICE_KEY),
                 labels_of(str(CLIENT), "web-0", str(WEB), "web.shop.svc.cluster.local", "web", MUTUAL_TLS),
                 id="hbone-to-an-endpoint-of-a-vip-names-the-service"),
    pytest.param(HboneToWaypoint(("10.244.0.50", 15008), "10.244.0.20:8080", WAYPOINT_ID, uid("shop/wp-waypoint"),
                                 "shop/wp.shop.svc.cluster.local", workload_uid=uid("shop/db")),
                 ("10.244.0.20", 8080),
                 ("HBONE", "shop/db", WAYPOINT_ID, None),
                 labels_of(str(CLIENT), "db", str(WAYPOINT_ID), U, U, MUTUAL_TLS),
                 id="waypoint-of-a-pod-the-destination-is-the-pod-addressed-the-principal-the-waypoints"),
    pytest.param(HboneToWaypoint(("10.244.0.50", 15008), "10.96.0.11:80", WAYPOINT_ID, uid("shop/wp-waypoint"),
                                 "shop/wp.shop.svc.cluster.local", service=WEB_SERVICE_KEY),
                 ("10.96.0.11", 80),
                 ("HBONE", "shop/wp-waypoint", WAYPOINT_ID, WEB_SERVICE_KEY),
                 labels_of(str(CLIENT), "wp", str(WAYPOINT_ID), "web.shop.svc.cluster.local", "web", MUTUAL_TLS),
                 id="waypoint-of-a-service-the-destination-is-the-waypoint-pod"),
    pytest.param(Passthrough(("10.244.0.40", 8080), uid("shop/legacy")), ("10.244.0.40", 8080),
                 ("TCP", "shop/legacy", None, None),
                 labels_of(U, "legacy", U, U, U, NO_TLS), id="passthrough-to-a-known-pod-proves-no-identity"),
    pytest.param(Passthrough(("93.184.216.34", 443)), ("93.184.216.34", 443),
                 ("TCP", None, None, None),
                 labels_of(U, U, U, U, U, NO_TLS), id="passthrough-outside-the-mesh"),
    pytest.param(Refuse("service shop/web.shop.svc.cluster.local has no port 81"), ("10.96.0.11", 81),
                 ("TCP", None, None, None),
                 labels_of(U, U, U, U, U, NO_TLS), id="refused"),
]


@pytest.mark.parametrize("plan, original, record, labels", OUTBOUND_RECORDS)
def test_outbound_connection_is_recorded_from_its_plan(plan, original, record, labels):
    assert outbound_record(plan, original) == (record, labels)


def inbound_record(request: InboundRequest, client: tuple[str, int], decision: InboundDecision):
    conn = inbound_connection(pod="shop/web-0", client=client, request=request, own_identity=WEB, decision=decision,
                              state=record_state())
    assert (conn.direction, conn.destination_workload, conn.destination_identity) == ("inbound", "shop/web-0", WEB)
    assert conn.labels["reporter"] == "destination" and conn.labels["destination_workload"] == "web-0"
    assert conn.labels["destination_principal"] == str(WEB)
    return ((conn.protocol, conn.source, conn.destination, conn.source_workload, conn.source_identity),
            (conn.decision, conn.policy, conn.reason),
            {name: conn.labels[name] for name in ("source_workload", "source_principal", "connection_security_policy",
                                                  "destination_service", "destination_service_name")})


def web_request(source_ip: str, identity: SpiffeId | None, *, port: int = 8080) -> InboundRequest:
    return InboundRequest(uid("shop/web-0"), True, ("10.244.0.11", port), source_ip, identity,
                          hbone=identity is not None)


ALLOWED = InboundDecision(True, 200, "no ALLOW policies")
DENIED = InboundDecision(False, 401, "denied by DENY policy shop/deny-ops", "shop/deny-ops")

INBOUND_RECORDS = [
    pytest.param(web_request("10.244.0.10", CLIENT), ("10.244.0.10", 40000), ALLOWED,
                 (("HBONE", ("10.244.0.10", 40000), ("10.244.0.11", 8080), "shop/client", CLIENT),
                  ("allow", None, "no ALLOW policies"),
                  {"source_workload": "client", "source_principal": str(CLIENT),
                   "connection_security_policy": MUTUAL_TLS, "destination_service": "web.shop.svc.cluster.local",
                   "destination_service_name": "web"}),
                 id="hbone-from-a-mesh-pod-to-the-target-port-of-a-service-names-it"),
    pytest.param(web_request("10.244.0.50", CLIENT), ("10.244.0.10", 40000), ALLOWED,
                 (("HBONE", ("10.244.0.10", 40000), ("10.244.0.11", 8080), "shop/client", CLIENT),
                  ("allow", None, "no ALLOW policies"),
                  {"source_workload": "client", "source_principal": str(CLIENT),
                   "connection_security_policy": MUTUAL_TLS, "destination_service": "web.shop.svc.cluster.local",
                   "destination_service_name": "web"}),
                 id="the-source-workload-is-the-forwarded-client-not-the-peer"),
    pytest.param(web_request("192.0.2.7", None, port=9090), ("192.0.2.7", 5000), DENIED,
                 (("TCP", ("192.0.2.7", 5000), ("10.244.0.11", 9090), None, None),
                  ("deny", "shop/deny-ops", "denied by DENY policy shop/deny-ops"),
                  {"source_workload": UNKNOWN, "source_principal": UNKNOWN, "connection_security_policy": "unknown",
                   "destination_service": UNKNOWN, "destination_service_name": UNKNOWN}),
                 id="plaintext-from-outside-denied-to-a-port-of-no-service"),
]


@pytest.mark.parametrize("request_, client, decision, expected", INBOUND_RECORDS)
def test_inbound_connection_is_recorded_from_its_request_and_decision(request_, client, decision, expected):
    assert inbound_record(request_, client, decision) == expected


@pytest.mark.parametrize("changes, message", [
    pytest.param({}, "connection complete", id="complete"),
    pytest.param({"error": "the app at 10.244.0.11:8080 did not accept: refused"}, "connection failed", id="failed"),
    pytest.param({"decision": "deny"}, "connection denied", id="denied"),
    pytest.param({"decision": "deny", "error": "HBONE CONNECT refused with 401"}, "connection denied",
                 id="denied-with-an-error-is-denied"),
])
def test_access_log_entry_says_how_the_connection_ended(changes, message):
    entry = access_log_entry(inbound(**changes), 0.25, "2024-01-01T00:00:00.000+00:00")
    assert (entry["message"], entry["time"], entry["duration"]) == (
        message, "2024-01-01T00:00:00.000+00:00", "250ms")
    assert None not in entry.values()


def test_inbound_records_carry_what_the_access_log_names():
    conn = inbound_connection(pod="shop/web-0", client=("10.244.0.10", 40000),
                              request=web_request("10.244.0.10", CLIENT), own_identity=WEB, decision=ALLOWED,
                              state=record_state())
    entry = access_log_entry(conn, 0.0125, "t")
    assert {k: entry.get(k) for k in ("src.workload", "src.namespace", "dst.addr", "dst.hbone_addr", "dst.service",
                                      "dst.workload", "dst.namespace", "duration")} == {
        "src.workload": "client", "src.namespace": "shop", "dst.addr": "10.244.0.11:8080",
        "dst.hbone_addr": "10.244.0.11:8080", "dst.service": "web.shop.svc.cluster.local",
        "dst.workload": "web-0", "dst.namespace": "shop", "duration": "12ms"}
    denied = inbound_connection(pod="shop/web-0", client=("192.0.2.7", 5000), request=web_request("192.0.2.7", None),
                                own_identity=WEB, decision=DENIED, state=record_state())
    assert denied.response_flags == FLAG_DENIED


def test_outbound_records_log_the_l4_destination_and_the_hbone_target():
    state = record_state()
    plan = HboneToPod(("10.244.0.11", 15008), "10.244.0.11:8080", WEB, uid("shop/web-0"), WEB_SERVICE_KEY)
    conn = outbound_connection(pod="shop/client", client=APP, original=("10.96.0.11", 80),
                               source=state.workloads[uid("shop/client")], source_identity=CLIENT, plan=plan,
                               state=state)
    conn.counts.received, conn.counts.sent = 80, 1200  # from the client app, back to it
    entry = access_log_entry(conn, 2.0, "t")
    assert {k: entry.get(k) for k in ("src.workload", "dst.addr", "dst.hbone_addr", "dst.service", "dst.workload",
                                      "bytes_sent", "bytes_recv", "duration")} == {
        "src.workload": "client", "dst.addr": "10.244.0.11:15008", "dst.hbone_addr": "10.244.0.11:8080",
        "dst.service": "web.shop.svc.cluster.local", "dst.workload": "web-0", "bytes_sent": 80, "bytes_recv": 1200,
        "duration": "2000ms"}
    passthrough = outbound_connection(pod="shop/client", client=APP, original=("93.184.216.34", 443),
                                      source=state.workloads[uid("shop/client")], source_identity=CLIENT,
                                      plan=Passthrough(("93.184.216.34", 443)), state=state)
    entry = access_log_entry(passthrough, 0, "t")
    assert entry["dst.addr"] == "93.184.216.34:443"
    assert not {"dst.hbone_addr", "dst.workload", "dst.service", "src.identity", "dst.identity"} & set(entry)
