"""ztunnel's DNS answers, as a table: what a pod of a namespace hears for each name and type."""

from __future__ import annotations

import random

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from mesh.api import workload_pb2 as wpb
from mesh.dns_wire import MAX_UDP_QUERY, TCP, UDP, MalformedQuery, servfail
from mesh.proxy_state import ProxyState
from ztunnel.dns import TTL, DnsTable, Forward, Reply, aliases, reply_matches, resolve


def _service(name: str, namespace: str, vip: bytes | None = None, hostname: str | None = None) -> wpb.Address:
    service = wpb.Service(name=name, namespace=namespace,
                          hostname=hostname or f"{name}.{namespace}.svc.cluster.local")
    if vip is not None:
        service.addresses.add(network="", address=vip)
    return wpb.Address(service=service)


def _workload(uid: str, namespace: str, ip: bytes, backs: str, healthy: bool = True) -> wpb.Address:
    workload = wpb.Workload(uid=uid, name=uid, namespace=namespace, addresses=[ip],
                            status=wpb.HEALTHY if healthy else wpb.UNHEALTHY)
    workload.services[backs].ports.add(service_port=80, target_port=8080)
    return wpb.Address(workload=workload)


STATE = ProxyState.from_addresses({
    "default/httpbin": _service("httpbin", "default", bytes([10, 96, 0, 10])),
    "other/httpbin": _service("httpbin", "other", bytes([10, 96, 0, 20])),
    "other/echo": _service("echo", "other", bytes([10, 96, 0, 30])),
    "default/db": _service("db", "default"),  # headless
    "db-0": _workload("db-0", "default", bytes([10, 1, 0, 5]), "default/db.default.svc.cluster.local"),
    "db-1": _workload("db-1", "default", bytes([10, 1, 0, 6]), "default/db.default.svc.cluster.local"),
    "db-2": _workload("db-2", "default", bytes([10, 1, 0, 7]), "default/db.default.svc.cluster.local",
                      healthy=False),
    "mesh/external": _service("external", "mesh", hostname="api.example.com"),  # no VIP, not Kubernetes
})
TABLE = DnsTable.from_state(STATE)


def ask(name: str, rdtype: str = "A", namespace: str = "default", transport: str = UDP, **kwargs) -> Reply | Forward:
    query = dns.message.make_query(name, rdtype, **kwargs)
    return resolve(query.to_wire(), TABLE, namespace, transport, shuffle=random.Random(1))


def answers(reply: Reply | Forward) -> dict[str, list[str]]:
    assert isinstance(reply, Reply), reply
    message = dns.message.from_wire(reply.wire)
    assert message.rcode() == dns.rcode.NOERROR
    assert message.flags & dns.flags.AA
    found: dict[str, list[str]] = {}
    for rrset in message.answer:
        assert rrset.ttl == TTL
        found.setdefault(f"{rrset.name} {dns.rdatatype.to_text(rrset.rdtype)}", []).extend(
            sorted(rdata.to_text() for rdata in rrset))
    return found


@pytest.mark.parametrize("name, namespace, expected", [
    # the FQDN, whoever asks
    ("httpbin.default.svc.cluster.local.", "default", {"httpbin.default.svc.cluster.local. A": ["10.96.0.10"]}),
    ("httpbin.other.svc.cluster.local.", "default", {"httpbin.other.svc.cluster.local. A": ["10.96.0.20"]}),
    # the short forms a resolver sends before its search path
    ("httpbin.", "default", {"httpbin. A": ["10.96.0.10"]}),
    ("httpbin.", "other", {"httpbin. A": ["10.96.0.20"]}),  # the client's own namespace
    ("echo.other.", "default", {"echo.other. A": ["10.96.0.30"]}),
    ("echo.other.svc.", "default", {"echo.other.svc. A": ["10.96.0.30"]}),
    # a search-path expansion of a shorter name: a CNAME to the stripped name, whose A records follow
    ("echo.other.default.svc.cluster.local.", "default",
     {"echo.other.default.svc.cluster.local. CNAME": ["echo.other."], "echo.other. A": ["10.96.0.30"]}),
    ("echo.other.svc.cluster.local.cluster.local.", "default",
     {"echo.other.svc.cluster.local.cluster.local. CNAME": ["echo.other.svc.cluster.local."],
      "echo.other.svc.cluster.local. A": ["10.96.0.30"]}),
    # a headless Service: its healthy endpoints
    ("db.default.svc.cluster.local.", "default", {"db.default.svc.cluster.local. A": ["10.1.0.5", "10.1.0.6"]}),
    # case does not matter to DNS
    ("HTTPBIN.Default.SVC.cluster.local.", "other", {"HTTPBIN.Default.SVC.cluster.local. A": ["10.96.0.10"]}),
])
def test_names_the_mesh_holds_are_answered_here(name, namespace, expected):
    assert answers(ask(name, namespace=namespace)) == expected


def test_aaaa_of_a_known_name_is_an_empty_authoritative_answer():
    reply = ask("httpbin.default.svc.cluster.local.", "AAAA")
    assert answers(reply) == {} and reply.result == "no records"


@pytest.mark.parametrize("name, rdtype, reason", [
    ("nosuch.default.svc.cluster.local.", "A", "unknown host"),  # the cluster's DNS says NXDOMAIN
    ("httpbin.third.svc.cluster.local.", "A", "unknown host"),  # no such namespace's Service
    ("api.example.com.", "A", "unknown host"),  # no VIP, not a Kubernetes name: forwarded, as ztunnel
    ("www.example.org.", "A", "unknown host"),
    ("httpbin.default.svc.cluster.local.", "SRV", "record type"),
    ("httpbin.default.svc.cluster.local.", "TXT", "record type"),
    ("10.0.96.10.in-addr.arpa.", "PTR", "record type"),
])
def test_everything_else_is_forwarded(name, rdtype, reason):
    assert ask(name, rdtype) == Forward(reason)


def test_a_query_that_cannot_be_answered_is_dropped_or_refused():
    with pytest.raises(MalformedQuery):
        resolve(b"\x00\x01", TABLE, "default")
    response = dns.message.make_response(dns.message.make_query("httpbin.", "A"))
    with pytest.raises(MalformedQuery):  # a response is never answered: no loops between servers
        resolve(response.to_wire(), TABLE, "default")
    garbage = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff"  # a label that runs off the end
    formerr = dns.message.from_wire(resolve(garbage, TABLE, "default").wire)  # type: ignore[union-attr]
    assert formerr.id == 0x1234 and formerr.rcode() == dns.rcode.FORMERR
    too_long = dns.message.make_query("httpbin.", "A").to_wire() + b"\x00" * MAX_UDP_QUERY
    refused = resolve(too_long, TABLE, "default")
    assert isinstance(refused, Reply) and dns.message.from_wire(refused.wire).rcode() == dns.rcode.REFUSED
    # the same length over TCP is a query (the bound is TCP's)
    assert isinstance(resolve(too_long[:600], TABLE, "default", TCP), Reply | Forward)


def test_udp_answers_fit_the_clients_payload_and_are_truncated_beyond():
    many = {f"w{i}": _workload(f"w{i}", "default", bytes([10, 2, i // 256, i % 256]),
                               "default/big.default.svc.cluster.local") for i in range(200)}
    table = DnsTable.from_state(ProxyState.from_addresses({"default/big": _service("big", "default"), **many}))
    query = dns.message.make_query("big.default.svc.cluster.local.", "A")
    udp = resolve(query.to_wire(), table, "default", UDP)
    assert isinstance(udp, Reply) and len(udp.wire) <= 512
    assert dns.message.from_wire(udp.wire).flags & dns.flags.TC
    tcp = resolve(query.to_wire(), table, "default", TCP)
    assert isinstance(tcp, Reply) and len(dns.message.from_wire(tcp.wire).answer[0]) == 200


def test_aliases_follow_the_kubernetes_forms_and_the_clients_search_path():
    names = [str(alias.name) for alias in aliases(dns.name.from_text("web.shop"), TABLE.domain, "default")]
    assert names == ["web.shop.", "web.shop.svc.cluster.local."]
    names = [str(alias.name) for alias in aliases(dns.name.from_text("web"), TABLE.domain, "shop")]
    assert names == ["web.", "web.shop.svc.cluster.local."]
    stripped = aliases(dns.name.from_text("web.shop.default.svc.cluster.local"), TABLE.domain, "default")
    assert [(str(a.name), str(a.stripped)) for a in stripped] == [
        ("web.shop.default.svc.cluster.local.", "None"),
        ("web.shop.", "web.shop."), ("web.shop.svc.cluster.local.", "web.shop."),
        ("web.shop.default.", "web.shop.default."), ("web.shop.default.svc.", "web.shop.default.svc.")]


def test_helpers_for_forwarding():
    query = dns.message.make_query("example.org.", "A")
    wire = query.to_wire()
    response = dns.message.make_response(query).to_wire()
    assert reply_matches(wire, response)
    assert not reply_matches(wire, wire)  # a query is no answer
    other = dns.message.make_response(dns.message.make_query("example.org.", "A")).to_wire()
    assert not reply_matches(wire, other) or other[:2] == wire[:2]
    failed = dns.message.from_wire(servfail(wire))  # type: ignore[arg-type]
    assert failed.id == query.id and failed.rcode() == dns.rcode.SERVFAIL
    assert servfail(b"\x01") is None
