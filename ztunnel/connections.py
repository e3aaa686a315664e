"""Open connections: what ``/config_dump`` lists, what metrics count, what the access log records,
and what a policy change re-evaluates.

A connection's record is built once, when it arrives, by a pure function of what the executor
knows: ``outbound_connection`` from the plan, ``inbound_connection`` from the request and its
decision, each against the state the decision was made in; both derive the metric labels
(``tcp_labels``) there too. ``access_log_entry`` is the JSON object one log line holds, with the
fields of Istio's ztunnel access log (``src.addr``, ``src.workload``, ``src.namespace``,
``src.identity``, ``dst.addr``, ``dst.hbone_addr``, ``dst.service``, ``dst.workload``,
``dst.namespace``, ``dst.identity``, ``direction``, ``bytes_sent``, ``bytes_recv``, ``duration``)
and ours beside them (``decision``, ``policy``, ``reason``, ``error``, ``protocol``).

Every proxied connection is a ``Connection`` registered for its lifetime with ``ConnectionTracker.
track``. On entry it counts as opened (``istio_tcp_connections_opened_total``), denied or not; on
exit as closed, with its bytes and the ``response_flags`` of its outcome (``DENY``, ``CONNECT``, or
``-``), and one JSON line goes to the access log. An inbound connection keeps the facts its
authorization was decided on, so ``reevaluate`` can decide again under new policy and cancel the
connection's scope when it is now denied.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TextIO, assert_never

import trio

from hbone.relay import Counts
from mesh.addresses import format_address
from mesh.api import workload_pb2 as wpb
from mesh.identity import SpiffeId
from mesh.outbound import HboneToPod, HboneToWaypoint, Passthrough, Plan, Refuse
from mesh.proxy_state import ProxyState, service_key_of
from ztunnel.inbound import InboundDecision, InboundRequest
from ztunnel.metrics import (
    FLAG_CONNECT_FAILED,
    FLAG_DENIED,
    FLAG_NONE,
    REPORTER_DESTINATION,
    REPORTER_SOURCE,
    tcp_labels,
)

log = logging.getLogger("ambient.ztunnel.connections")


def address_text(address: tuple[str, int] | None) -> str | None:
    return format_address(*address) if address is not None else None


def workload_key(workload: wpb.Workload | None) -> str | None:
    """``<ns>/<name>``, as ``/config_dump`` names a workload."""
    return f"{workload.namespace}/{workload.name}" if workload is not None else None


def inbound_service(workload: wpb.Workload | None, port: int, state: ProxyState) -> wpb.Service | None:
    """The service a connection to ``port`` of ``workload`` was most likely addressed to, as Istio's
    ztunnel guesses it on the destination side (the CONNECT does not name it): of the services the
    workload backs, the first (by key) with a port whose target is ``port``; None if none is."""
    if workload is None:
        return None
    for key in sorted(workload.services):
        for ports in workload.services[key].ports:
            if (ports.target_port or ports.service_port) == port and key in state.services:
                return state.services[key]
    return None


@dataclass
class Connection:
    """One proxied connection, from the point of view of the pod ztunnel serves (``pod``)."""

    direction: str  # "inbound" | "outbound"
    pod: str  # "<ns>/<name>"
    protocol: str  # "HBONE" | "TCP": how it reached or left this node
    source: tuple[str, int]
    destination: tuple[str, int]
    source_workload: str | None = None  # "<ns>/<name>"
    source_identity: SpiffeId | None = None
    destination_workload: str | None = None
    destination_identity: SpiffeId | None = None
    destination_service: str | None = None  # "<ns>/<hostname>"
    upstream: tuple[str, int] | None = None  # outbound: where ztunnel connects (over HBONE, a pod's 15008)
    hbone_address: str | None = None  # over HBONE: the CONNECT's target
    # For the access log, as Istio's ztunnel names the two ends: pod name and namespace.
    source_name: str | None = None
    source_namespace: str | None = None
    destination_name: str | None = None
    destination_namespace: str | None = None
    destination_hostname: str | None = None  # the service's
    labels: dict[str, str] = field(default_factory=dict)  # metric labels, as opened
    response_flags: str = FLAG_NONE  # the outcome, for the closing metrics: FLAG_DENIED, FLAG_CONNECT_FAILED
    # What the last authorization said (inbound), for the log and for re-evaluation.
    decision: str = "allow"
    policy: str | None = None
    reason: str | None = None
    recheck: Callable[[], tuple[bool, str | None, str]] | None = None  # → (allowed, policy, reason)
    counts: Counts = field(default_factory=Counts)
    error: str | None = None
    id: int = 0
    started: float = 0.0  # trio time
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    def fail(self, error: str, *, denied: bool = False, connect: bool = False) -> None:
        """Record why it failed: ``denied`` by policy (here or by the far side), or no ``connect``ion
        upstream could be made (``response_flags`` DENY or CONNECT)."""
        self.error = error
        if denied:
            self.decision = "deny"
            self.response_flags = FLAG_DENIED
        elif connect:
            self.response_flags = FLAG_CONNECT_FAILED

    def summary(self, now: float) -> dict:
        return {
            "direction": self.direction, "pod": self.pod, "protocol": self.protocol,
            "source": address_text(self.source), "destination": address_text(self.destination),
            "source_identity": str(self.source_identity) if self.source_identity else None,
            "destination_identity": str(self.destination_identity) if self.destination_identity else None,
            "policy": self.policy, "bytes_sent": self.counts.sent, "bytes_received": self.counts.received,
            "duration_seconds": round(now - self.started, 3),
        }


def outbound_connection(*, pod: str, client: tuple[str, int], original: tuple[str, int],
                        source: wpb.Workload | None, source_identity: SpiffeId, plan: Plan,
                        state: ProxyState) -> Connection:
    """The record of a connection the app of ``pod`` opened from ``client`` to ``original``, sent
    as ``plan`` says; ``source`` is the pod's workload (None while discovery does not know it).

    The destination is the workload the plan names: the one addressed (by pod IP, or the endpoint
    chosen behind a VIP), else the waypoint pod that carries it. Principals are reported for HBONE
    only: the source's own identity and the one the far side must prove."""
    hbone = False
    identity: SpiffeId | None = None
    destination_uid: str | None = None
    service_key: str | None = None
    upstream: tuple[str, int] | None = None
    authority: str | None = None
    match plan:
        case HboneToPod():
            hbone, identity, destination_uid, service_key = True, plan.identity, plan.workload_uid, plan.service
            upstream, authority = plan.address, plan.authority
        case HboneToWaypoint():
            hbone, identity, service_key = True, plan.identity, plan.service
            destination_uid = plan.workload_uid or plan.waypoint_uid
            upstream, authority = plan.address, plan.authority
        case Passthrough():
            destination_uid, service_key, upstream = plan.workload_uid, plan.service, plan.address
        case Refuse():
            pass
        case _:
            assert_never(plan)
    destination = state.workloads.get(destination_uid) if destination_uid else None
    service = state.services.get(service_key) if service_key else None
    labels = tcp_labels(
        reporter=REPORTER_SOURCE, source=source, source_principal=str(source_identity) if hbone else None,
        destination=destination, destination_principal=str(identity) if identity else None,
        destination_service=service, mutual_tls=hbone)
    return _named(Connection(
        direction="outbound", pod=pod, protocol="HBONE" if hbone else "TCP", source=client, destination=original,
        source_workload=pod, source_identity=source_identity, destination_workload=workload_key(destination),
        destination_identity=identity, destination_service=service_key, upstream=upstream, hbone_address=authority,
        labels=labels), source, destination, service)


def _named(conn: Connection, source: wpb.Workload | None, destination: wpb.Workload | None,
           service: wpb.Service | None) -> Connection:
    """``conn`` with the names the access log gives its two ends."""
    if source is not None:
        conn.source_name, conn.source_namespace = source.name, source.namespace
    if destination is not None:
        conn.destination_name, conn.destination_namespace = destination.name, destination.namespace
    if service is not None:
        conn.destination_hostname = service.hostname
    return conn


def inbound_connection(*, pod: str, client: tuple[str, int], request: InboundRequest, own_identity: SpiffeId,
                       decision: InboundDecision, state: ProxyState) -> Connection:
    """The record of ``request`` to ``pod``, as ``decision`` (made under ``state``) answered it.

    ``client`` is who the connection is from: the CONNECT's ``forwarded`` address if it gave one,
    else the peer; its workload is looked up by that address. The source principal is the verified
    peer identity (none for plaintext)."""
    peer_identity = request.peer_identity
    source = state.workload_by_ip(client[0])
    destination = state.workloads.get(request.pod_uid)
    service = inbound_service(destination, request.destination[1], state)
    labels = tcp_labels(
        reporter=REPORTER_DESTINATION, source=source, source_principal=str(peer_identity) if peer_identity else None,
        destination=destination, destination_principal=str(own_identity),
        destination_service=service, mutual_tls=peer_identity is not None)
    return _named(Connection(
        direction="inbound", pod=pod, protocol="HBONE" if request.hbone else "TCP", source=client,
        destination=request.destination, source_workload=workload_key(source), source_identity=peer_identity,
        destination_workload=pod, destination_identity=own_identity,
        destination_service=service_key_of(service) if service else None,
        hbone_address=format_address(*request.destination) if request.hbone else None, labels=labels,
        decision="allow" if decision.allowed else "deny", policy=decision.policy, reason=decision.reason,
        response_flags=FLAG_NONE if decision.allowed else FLAG_DENIED), source, destination, service)


def access_log_entry(conn: Connection, duration: float, time: str) -> dict[str, object]:
    """The access log's JSON object for ``conn``, which lasted ``duration`` seconds and ended at
    ``time`` (ISO 8601); fields without a value are left out.

    As Istio's ztunnel writes them: ``src.workload``/``dst.workload`` are pod names, with their
    namespaces beside them; ``dst.addr`` is where the connection went at L4 (over HBONE outbound, the
    far side's 15008) and ``dst.hbone_addr`` the CONNECT's target; ``dst.service`` the service's
    hostname; identities only over mTLS; ``bytes_sent`` what this ztunnel sent on towards the
    destination (outbound) or back to the source (inbound), ``bytes_recv`` the other way; ``duration``
    whole milliseconds, e.g. ``"12ms"``."""
    mtls = conn.protocol == "HBONE"  # HBONE is mTLS, both ways
    outbound = conn.direction == "outbound"
    entry = {
        "time": time,
        "message": "connection complete" if conn.decision == "allow" and conn.error is None else
                   ("connection denied" if conn.decision == "deny" else "connection failed"),
        "src.addr": address_text(conn.source), "src.workload": conn.source_name,
        "src.namespace": conn.source_namespace,
        "src.identity": str(conn.source_identity) if conn.source_identity and mtls else None,
        "dst.addr": address_text(conn.upstream or conn.destination), "dst.hbone_addr": conn.hbone_address,
        "dst.service": conn.destination_hostname, "dst.workload": conn.destination_name,
        "dst.namespace": conn.destination_namespace,
        "dst.identity": str(conn.destination_identity) if conn.destination_identity and mtls else None,
        "direction": conn.direction, "protocol": conn.protocol,
        "bytes_sent": conn.counts.received if outbound else conn.counts.sent,
        "bytes_recv": conn.counts.sent if outbound else conn.counts.received,
        "duration": f"{int(duration * 1000)}ms",
        "decision": conn.decision, "policy": conn.policy, "reason": conn.reason, "error": conn.error,
    }
    return {k: v for k, v in entry.items() if v is not None}


class AccessLog:
    """One JSON object per line, per connection, to ``stream`` (stdout: the component's log)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout

    def write(self, conn: Connection, duration: float) -> None:
        now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        self._stream.write(json.dumps(access_log_entry(conn, duration, now)) + "\n")
        self._stream.flush()


class ConnectionTracker:
    def __init__(self, metrics, access_log: AccessLog) -> None:
        self._metrics = metrics
        self._access_log = access_log
        self._open: dict[int, Connection] = {}
        self._ids = itertools.count(1)
        self._emptied = trio.lowlevel.ParkingLot()

    def __len__(self) -> int:
        return len(self._open)

    @contextlib.contextmanager
    def track(self, conn: Connection) -> Iterator[Connection]:
        """Register ``conn`` while the block runs, inside its cancel scope (a policy change or the
        end of its pod cancels it). Closing it is the block's business; this records it."""
        conn.id = next(self._ids)
        conn.started = trio.current_time()
        self._open[conn.id] = conn
        # Counted opened, denied or not (as Istio's ztunnel does); then closed whatever happens to it
        # later, under the flag of its outcome, so that opened and closed always pair up.
        counted = self._metrics is not None
        if counted:
            self._metrics.opened(conn.labels)
        try:
            with conn.scope:
                yield conn
        finally:
            del self._open[conn.id]
            if counted:
                self._metrics.closed(conn.labels, conn.counts.sent, conn.counts.received,
                                     response_flags=conn.response_flags)
            try:
                self._access_log.write(conn, trio.current_time() - conn.started)
            except (OSError, ValueError) as exc:  # a broken log must not break draining
                log.error("cannot write the access log: %s", exc)
            if not self._open:
                self._emptied.unpark_all()

    def reevaluate(self) -> int:
        """Decide every re-checkable connection again; cancel those now denied. Returns how many."""
        closed = 0
        for conn in list(self._open.values()):
            if conn.recheck is None or conn.decision != "allow":
                continue
            allowed, policy, reason = conn.recheck()
            if not allowed:
                conn.decision, conn.policy, conn.reason = "deny", policy, f"policy changed: {reason}"
                conn.error = "closed: denied by a policy change"
                conn.scope.cancel()
                closed += 1
        if closed:
            log.info("a policy change closed %d connection(s) it now denies", closed)
        return closed

    def snapshot(self) -> list[dict]:
        now = trio.current_time()
        return [conn.summary(now) for conn in self._open.values()]

    async def wait_empty(self) -> None:
        while self._open:
            await self._emptied.park()

    def cancel_all(self) -> None:
        for conn in list(self._open.values()):
            conn.scope.cancel()
