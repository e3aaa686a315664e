"""The lab's cluster DNS without root: ``answer`` as tables (each name shape, NXDOMAIN, outside
cluster.local, malformed and oversized queries), fuzzed bytes, the view from YAML and its file, the
pods' resolv.conf, and the trio server over loopback UDP and TCP."""

from __future__ import annotations

import socket
import struct
from ipaddress import IPv4Address

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest
import trio
from hypothesis import given, settings, strategies as st

from controlplane.view import ClusterState, PodStatus
from lab import dns_server
from lab.dns import TTL, DnsView, PodEntry, ServiceEntry, answer, cluster_view
from lab.resolv import resolv_conf, write_resolv_conf
from mesh.dns_wire import MAX_UDP_QUERY, TCP, MalformedQuery
from mesh.parse import parse_text

A = IPv4Address
VIEW = DnsView(
    services=(
        ServiceEntry("default", "httpbin", A("10.96.0.5")),
        ServiceEntry("shop", "web", A("10.96.0.9")),
        ServiceEntry("shop", "db", None, (A("10.244.1.3"), A("10.244.0.4"))),  # headless
        ServiceEntry("shop", "lonely", None),  # headless, no ready endpoint
    ),
    pods=(PodEntry("default", "curl", A("10.244.0.2")), PodEntry("shop", "db-0", A("10.244.1.3"))),
    namespaces=("default", "shop", "empty"),
)
SOA = "SOA"


def ask(name: str, rdtype: str = "A", view: DnsView = VIEW, **query_args) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, **query_args)
    response = dns.message.from_wire(answer(query.to_wire(), view))
    assert response.id == query.id and response.flags & dns.flags.QR
    return response


def addresses(response: dns.message.Message) -> list[str]:
    return sorted(rd.address for rrset in response.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset)


def authority(response: dns.message.Message) -> list[str]:
    return [dns.rdatatype.to_text(rrset.rdtype) for rrset in response.authority]


@pytest.mark.parametrize(("name", "rdtype", "rcode", "answers", "in_authority"), [
    # Services: <svc>.<ns>.svc.cluster.local, any case, with or without the root's dot
    ("httpbin.default.svc.cluster.local", "A", "NOERROR", ["10.96.0.5"], []),
    ("HttpBin.Default.SVC.cluster.local.", "A", "NOERROR", ["10.96.0.5"], []),
    ("web.shop.svc.cluster.local", "A", "NOERROR", ["10.96.0.9"], []),
    # a headless Service: its ready endpoints, and each endpoint by its dashed IP under the Service
    ("db.shop.svc.cluster.local", "A", "NOERROR", ["10.244.0.4", "10.244.1.3"], []),
    ("10-244-1-3.db.shop.svc.cluster.local", "A", "NOERROR", ["10.244.1.3"], []),
    ("lonely.shop.svc.cluster.local", "A", "NOERROR", [], [SOA]),
    # pods: <a-b-c-d>.<ns>.pod.cluster.local, only with a pod of that namespace at that IP
    ("10-244-0-2.default.pod.cluster.local", "A", "NOERROR", ["10.244.0.2"], []),
    ("10-244-0-2.shop.pod.cluster.local", "A", "NXDOMAIN", [], [SOA]),
    ("10-244-9-9.default.pod.cluster.local", "A", "NXDOMAIN", [], [SOA]),
    # IPv4 only: AAAA of a name that exists is empty NOERROR, as is any other type
    ("httpbin.default.svc.cluster.local", "AAAA", "NOERROR", [], [SOA]),
    ("httpbin.default.svc.cluster.local", "TXT", "NOERROR", [], [SOA]),
    ("httpbin.default.svc.cluster.local", "ANY", "NOERROR", ["10.96.0.5"], []),
    # names that exist without records (the zone, namespaces, empty non-terminals)
    ("cluster.local", "A", "NOERROR", [], [SOA]),
    ("svc.cluster.local", "A", "NOERROR", [], [SOA]),
    ("empty.svc.cluster.local", "A", "NOERROR", [], [SOA]),
    ("shop.pod.cluster.local", "A", "NOERROR", [], [SOA]),
    # what a resolver's search path tries on the way: NXDOMAIN, so it goes on to the next suffix
    ("httpbin.default.default.svc.cluster.local", "A", "NXDOMAIN", [], [SOA]),
    ("httpbin.default.svc.cluster.local.svc.cluster.local", "A", "NXDOMAIN", [], [SOA]),
    ("httpbin.cluster.local", "A", "NXDOMAIN", [], [SOA]),
    ("httpbin.empty.svc.cluster.local", "A", "NXDOMAIN", [], [SOA]),
    ("nobody.svc.cluster.local", "A", "NXDOMAIN", [], [SOA]),
    # outside cluster.local: no upstream in the lab
    ("example.com", "A", "REFUSED", [], []),
    ("httpbin", "A", "REFUSED", [], []),
    ("local", "A", "REFUSED", [], []),
    ("evilcluster.local", "A", "REFUSED", [], []),
])
def test_answers(name, rdtype, rcode, answers, in_authority):
    response = ask(name, rdtype)
    assert dns.rcode.to_text(response.rcode()) == rcode
    assert addresses(response) == answers
    assert authority(response) == in_authority
    assert bool(response.flags & dns.flags.AA) == (rcode != "REFUSED")
    assert not response.flags & dns.flags.RA  # no recursion here
    if answers:
        assert response.answer[0].ttl == TTL
        assert response.answer[0].name == dns.name.from_text(name)  # the question's name, its case kept


def test_the_soa_is_corednss_and_its_serial_follows_the_content():
    (soa,) = ask("cluster.local", SOA).answer
    (rd,) = soa
    assert (str(rd.mname), str(rd.rname)) == ("ns.dns.cluster.local.", "hostmaster.cluster.local.")
    assert (rd.refresh, rd.retry, rd.expire, rd.minimum) == (7200, 1800, 86400, TTL)
    changed = DnsView(VIEW.services[:1], VIEW.pods, VIEW.namespaces)
    assert DnsView(VIEW.services, VIEW.pods, VIEW.namespaces).serial == VIEW.serial != changed.serial


def test_a_service_added_answers_at_once():
    before = DnsView()
    assert ask("new.default.svc.cluster.local", view=before).rcode() == dns.rcode.NXDOMAIN
    after = DnsView((ServiceEntry("default", "new", A("10.96.0.7")),))
    assert addresses(ask("new.default.svc.cluster.local", view=after)) == ["10.96.0.7"]


def header(query_id: int = 0x1234, flags: int = 0x0100, qd: int = 1) -> bytes:
    return struct.pack("!HHHHHH", query_id, flags, qd, 0, 0, 0)


@pytest.mark.parametrize(("wire", "rcode"), [
    (header(qd=1), dns.rcode.FORMERR),  # a question counted but absent
    (header(qd=1) + b"\x07example", dns.rcode.FORMERR),  # a name cut short
    (header(qd=1) + b"\xc0\x0c\x00\x01\x00\x01", dns.rcode.FORMERR),  # a compression pointer to itself
    (header(qd=1) + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01", dns.rcode.FORMERR),  # a label over 63
    (header(qd=0), dns.rcode.FORMERR),  # no question
    (dns.message.make_query("a.cluster.local", "A").to_wire() + b"junk", dns.rcode.FORMERR),
])
def test_malformed_queries_are_formerr_with_their_id(wire, rcode):
    response = dns.message.from_wire(answer(wire, VIEW))
    assert (response.id, response.rcode()) == (struct.unpack("!H", wire[:2])[0], rcode)
    assert not response.question and not response.answer


def test_two_questions_are_formerr():
    query = dns.message.make_query("a.default.svc.cluster.local", "A")
    query.question.append(dns.message.make_query("httpbin.default.svc.cluster.local", "A").question[0])
    assert dns.message.from_wire(answer(query.to_wire(), VIEW)).rcode() == dns.rcode.FORMERR


def test_an_oversized_udp_query_is_refused_unread_but_tcp_takes_more():
    query = dns.message.make_query("httpbin.default.svc.cluster.local", "A", use_edns=0, pad=600)
    wire = query.to_wire()
    assert len(wire) > MAX_UDP_QUERY
    refused = dns.message.from_wire(answer(wire, VIEW))
    assert (refused.id, refused.rcode(), refused.answer) == (query.id, dns.rcode.REFUSED, [])
    over_tcp = dns.message.from_wire(answer(wire, VIEW, TCP))
    assert addresses(over_tcp) == ["10.96.0.5"]


def test_other_opcodes_and_classes():
    query = dns.message.make_query("httpbin.default.svc.cluster.local", "A")
    query.set_opcode(dns.opcode.UPDATE)
    assert dns.message.from_wire(answer(query.to_wire(), VIEW)).rcode() == dns.rcode.NOTIMP
    chaos = dns.message.make_query("version.bind", "TXT", rdclass="CH")
    assert dns.message.from_wire(answer(chaos.to_wire(), VIEW)).rcode() == dns.rcode.REFUSED


@pytest.mark.parametrize("wire", [b"", b"\x12\x34", header()[:11],
                                  dns.message.make_response(dns.message.make_query("a.", "A")).to_wire(),
                                  header(flags=0x8100, qd=0)])
def test_what_cannot_be_answered_raises_malformed_query(wire):
    with pytest.raises(MalformedQuery):
        answer(wire, VIEW)


def test_udp_answers_fit_the_clients_payload_and_truncate_beyond():
    endpoints = tuple(A(f"10.244.{i // 250}.{i % 250 + 2}") for i in range(200))
    many = DnsView((ServiceEntry("big", "all", None, endpoints),))
    plain = dns.message.make_query("all.big.svc.cluster.local", "A")
    wire = answer(plain.to_wire(), many)
    assert len(wire) <= 512 and dns.message.from_wire(wire).flags & dns.flags.TC
    edns = dns.message.make_query("all.big.svc.cluster.local", "A", use_edns=0, payload=4096)
    wire = answer(edns.to_wire(), many)
    assert len(wire) <= 1232 and dns.message.from_wire(wire).flags & dns.flags.TC
    whole = dns.message.from_wire(answer(plain.to_wire(), many, TCP))
    assert len(addresses(whole)) == 200 and not whole.flags & dns.flags.TC


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_are_an_answer_or_malformed_query_never_a_crash(wire):
    try:
        reply = answer(wire, VIEW)
    except MalformedQuery:
        return
    assert dns.message.from_wire(reply).flags & dns.flags.QR


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 0xFFFF), st.binary(max_size=80))
def test_a_valid_header_with_any_body_is_answered(query_id, body):
    reply = dns.message.from_wire(answer(header(query_id) + body, VIEW))
    assert reply.id == query_id


YAML = """
apiVersion: v1
kind: Namespace
metadata: {name: quiet}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {containers: [{name: c, command: [sleep, infinity]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: shop, labels: {app: web}}
spec: {containers: [{name: c, command: [sleep, infinity]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: default, labels: {app: web}}
spec: {containers: [{name: c, command: [sleep, infinity]}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-headless, namespace: shop}
spec: {clusterIP: None, selector: {app: web}, ports: [{port: 80}]}
"""


def test_the_view_of_the_cluster_state():
    result = parse_text(YAML, "apps.yaml")
    assert not result.errors, result.errors
    state = ClusterState.build(result.resources, vips={("shop", "web"): "10.96.0.10"})
    statuses = {("shop", "web-1"): PodStatus("10.244.0.2", "node-0", True),
                ("shop", "web-2"): PodStatus("10.244.1.2", "node-1", False),  # not ready
                ("default", "other"): PodStatus("10.244.0.3", "node-0", True)}  # another namespace
    view = cluster_view(state, statuses)
    assert addresses(ask("web.shop.svc.cluster.local", view=view)) == ["10.96.0.10"]
    assert addresses(ask("web-headless.shop.svc.cluster.local", view=view)) == ["10.244.0.2"]
    assert addresses(ask("10-244-1-2.shop.pod.cluster.local", view=view)) == ["10.244.1.2"]  # ready or not
    assert ask("quiet.svc.cluster.local", view=view).rcode() == dns.rcode.NOERROR  # a Namespace of the YAML
    assert DnsView.from_json(view.to_json()) == view


@pytest.mark.parametrize("data", [
    None, [], {"services": []},
    {"services": [{"namespace": "a.b", "name": "x", "vip": None, "endpoints": []}], "pods": [], "namespaces": []},
    {"services": [], "pods": [{"namespace": "a", "name": "p", "ip": "300.1.1.1"}], "namespaces": []},
    {"services": [], "pods": [], "namespaces": ["x" * 64]},
])
def test_a_bad_view_file_is_a_value_error(data):
    with pytest.raises(ValueError):
        DnsView.from_json(data)


def test_resolv_conf_is_the_kubelets_cluster_first(tmp_path):
    assert resolv_conf("shop", "10.255.0.2") == (
        "nameserver 10.255.0.2\n"
        "search shop.svc.cluster.local svc.cluster.local cluster.local\n"
        "options ndots:5\n")
    path = write_resolv_conf(tmp_path / "dns" / "shop.conf", "shop", "10.255.0.2")
    assert path.read_text() == resolv_conf("shop", "10.255.0.2")
    assert path.stat().st_mode & 0o777 == 0o644


async def test_the_server_answers_over_udp_and_tcp_and_follows_the_view():
    views = [VIEW]
    async with trio.open_nursery() as nursery:
        port = await nursery.start(dns_server.serve, lambda: views[0], "127.0.0.1", 0)
        udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with udp:
            await udp.connect(("127.0.0.1", port))
            query = dns.message.make_query("httpbin.default.svc.cluster.local", "A")
            await udp.send(b"\x00")  # garbage first: dropped, and the server serves on
            await udp.send(query.to_wire())
            assert addresses(dns.message.from_wire(await udp.recv(2048))) == ["10.96.0.5"]
            views[0] = DnsView()
            await udp.send(query.to_wire())
            assert dns.message.from_wire(await udp.recv(2048)).rcode() == dns.rcode.NXDOMAIN
        views[0] = VIEW
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            for name in ("web.shop.svc.cluster.local", "db.shop.svc.cluster.local"):  # two on one connection
                wire = dns.message.make_query(name, "A").to_wire()
                await stream.send_all(struct.pack("!H", len(wire)) + wire)
                (length,) = struct.unpack("!H", await receive_exactly(stream, 2))
                assert addresses(dns.message.from_wire(await receive_exactly(stream, length)))
            await stream.send_all(struct.pack("!H", 0xFFFF))  # longer than any query: closed
            assert await stream.receive_some(10) == b""
        nursery.cancel_scope.cancel()


async def receive_exactly(stream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        assert chunk
        data += chunk
    return data


def test_a_bug_in_the_answerer_is_servfail_not_a_dead_server(monkeypatch):
    def broken(*args):
        raise RuntimeError("bug")
    monkeypatch.setattr(dns_server, "answer", broken)
    wire = dns.message.make_query("httpbin.default.svc.cluster.local", "A").to_wire()
    reply = dns.message.from_wire(dns_server.respond(wire, VIEW, "udp"))
    assert (reply.id, reply.rcode()) == (struct.unpack("!H", wire[:2])[0], dns.rcode.SERVFAIL)
    assert dns_server.respond(b"\x01", VIEW, "udp") is None
