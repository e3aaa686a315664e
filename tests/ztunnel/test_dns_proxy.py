"""The DNS proxy's driver over real UDP and TCP sockets on loopback: names the mesh holds answered
here, the rest forwarded to a real upstream and relayed, upstream failures, and the per-pod bounds.
(The pod's netns and the redirect are tests/bpf/test_dns_capture.py's and the lab e2e's.)"""

from __future__ import annotations

import socket
import struct

import dns.message
import dns.rcode
import dns.rrset
import pytest
import trio

from mesh.api import workload_pb2 as wpb
from mesh.proxy_state import ProxyState
from ztunnel import dns_proxy
from ztunnel.dns import DnsTable
from ztunnel.dns_proxy import DnsProxy

TABLE = DnsTable.from_state(ProxyState.from_addresses({"default/httpbin": wpb.Address(service=wpb.Service(
    name="httpbin", namespace="default", hostname="httpbin.default.svc.cluster.local",
    addresses=[wpb.NetworkAddress(network="", address=bytes([10, 96, 0, 10]))]))}))


class Upstream:
    """A real DNS server on loopback: A 192.0.2.1 for every name, or silence (``answer=False``)."""

    def __init__(self, answer: bool = True) -> None:
        self.answer = answer
        self.queries: list[str] = []
        self._arrived = trio.Event()

    async def wait_for_queries(self, count: int) -> None:
        while len(self.queries) < count:
            await self._arrived.wait()
            self._arrived = trio.Event()

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        task_status.started(("127.0.0.1", port))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._tcp, listeners)
            with udp:
                while True:
                    data, peer = await udp.recvfrom(65535)
                    reply = self._reply(data)
                    if reply:
                        await udp.sendto(reply, peer)

    def _reply(self, data: bytes) -> bytes | None:
        query = dns.message.from_wire(data)
        self.queries.append(str(query.question[0].name))
        self._arrived.set()
        if not self.answer:
            return None
        response = dns.message.make_response(query)
        response.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A", "192.0.2.1"))
        return response.to_wire()

    async def _tcp(self, stream: trio.SocketStream) -> None:
        (length,) = struct.unpack("!H", await _exactly(stream, 2))
        reply = self._reply(await _exactly(stream, length))
        if reply:
            await stream.send_all(struct.pack("!H", len(reply)) + reply)


async def _exactly(stream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        assert chunk
        data += chunk
    return data


def _plain_socket(kind: int) -> socket.socket:
    return socket.socket(socket.AF_INET, kind)


async def _start_pod(nursery: trio.Nursery, proxy: DnsProxy) -> tuple[str, int]:
    udp, tcp = _plain_socket(socket.SOCK_DGRAM), _plain_socket(socket.SOCK_STREAM)
    udp.bind(("127.0.0.1", 0))
    port = udp.getsockname()[1]
    tcp.bind(("127.0.0.1", port))
    tcp.listen()
    nursery.start_soon(proxy.serve, "default/client", "default", udp, tcp, _plain_socket)
    return "127.0.0.1", port


async def ask_udp(address, name: str, rdtype: str = "A", timeout: float = 10) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.connect(address)
        await sock.send(query.to_wire())
        with trio.fail_after(timeout):
            reply = dns.message.from_wire(await sock.recv(65535))
    assert reply.id == query.id
    return reply


async def ask_tcp(address, name: str) -> dns.message.Message:
    query = dns.message.make_query(name, "A").to_wire()
    async with await trio.open_tcp_stream(*address) as stream:
        await stream.send_all(struct.pack("!H", len(query)) + query)
        with trio.fail_after(10):
            (length,) = struct.unpack("!H", await _exactly(stream, 2))
            return dns.message.from_wire(await _exactly(stream, length))


def a_records(message: dns.message.Message) -> list[str]:
    return [rdata.to_text() for rrset in message.answer for rdata in rrset if rrset.rdtype == 1]


async def test_known_names_are_answered_here_and_the_rest_forwarded_over_udp_and_tcp(nursery):
    upstream = Upstream()
    proxy = DnsProxy([await nursery.start(upstream.serve)], table=TABLE)
    pod = await _start_pod(nursery, proxy)

    assert a_records(await ask_udp(pod, "httpbin.default.svc.cluster.local.")) == ["10.96.0.10"]
    assert a_records(await ask_tcp(pod, "httpbin.")) == ["10.96.0.10"]
    assert upstream.queries == []

    assert a_records(await ask_udp(pod, "example.org.")) == ["192.0.2.1"]
    assert a_records(await ask_tcp(pod, "nosuch.default.svc.cluster.local.")) == ["192.0.2.1"]
    assert (await ask_udp(pod, "httpbin.default.svc.cluster.local.", "SRV")).answer  # type forwarded
    assert upstream.queries == ["example.org.", "nosuch.default.svc.cluster.local.",
                                "httpbin.default.svc.cluster.local."]
    assert (proxy.counts.requests, proxy.counts.forwarded, proxy.counts.upstream_failures) == (5, 3, 0)


async def test_a_dead_upstream_is_skipped_and_none_answering_is_servfail(nursery, monkeypatch):
    monkeypatch.setattr(dns_proxy, "UPSTREAM_TIMEOUT", 0.5)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:  # a port where nothing answers
        holder.bind(("127.0.0.1", 0))
        dead = holder.getsockname()
    live = await nursery.start(Upstream().serve)
    silent = await nursery.start(Upstream(answer=False).serve)
    proxy = DnsProxy([dead, live], table=TABLE)
    pod = await _start_pod(nursery, proxy)
    assert a_records(await ask_udp(pod, "example.org.")) == ["192.0.2.1"]

    failing = DnsProxy([dead, silent], table=TABLE)
    pod = await _start_pod(nursery, failing)
    assert (await ask_udp(pod, "example.org.")).rcode() == dns.rcode.SERVFAIL
    assert failing.counts.upstream_failures == 1


async def test_a_malformed_datagram_is_dropped_and_the_next_query_answered(nursery):
    proxy = DnsProxy([await nursery.start(Upstream().serve)], table=TABLE)
    pod = await _start_pod(nursery, proxy)
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.sendto(b"\x00", pod)
    assert a_records(await ask_udp(pod, "httpbin.")) == ["10.96.0.10"]
    assert proxy.counts.dropped == 1


async def test_forwards_in_flight_are_bounded_per_pod(nursery, monkeypatch):
    monkeypatch.setattr(dns_proxy, "MAX_FORWARDS_IN_FLIGHT", 2)
    monkeypatch.setattr(dns_proxy, "UPSTREAM_TIMEOUT", 30.0)
    silent = Upstream(answer=False)
    proxy = DnsProxy([await nursery.start(silent.serve)], table=TABLE)
    pod = await _start_pod(nursery, proxy)
    senders = []
    for name in ("a.example.", "b.example."):  # two forwards wait on the silent upstream
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        senders.append(sock)
        await sock.sendto(dns.message.make_query(name, "A").to_wire(), pod)
    with trio.fail_after(5):
        await silent.wait_for_queries(2)
    third = await ask_udp(pod, "c.example.")  # over the bound: SERVFAIL at once, not a third wait
    assert third.rcode() == dns.rcode.SERVFAIL
    assert a_records(await ask_udp(pod, "httpbin.")) == ["10.96.0.10"]  # names held here still answer
    assert proxy.counts.dropped == 1
    for sock in senders:
        sock.close()


def test_the_query_rate_is_a_token_bucket():
    rate = dns_proxy.QueryRate(10.0)
    assert all(rate.allow(0.0) for _ in range(10)) and not rate.allow(0.0)  # a burst of `rate`
    assert rate.allow(0.1) and not rate.allow(0.1)  # one more per 1/rate seconds
    assert sum(rate.allow(100.0) for _ in range(20)) == 10  # refilled to the burst, no more


async def test_a_pod_flooding_its_resolver_is_dropped_over_the_rate(nursery, monkeypatch):
    real = dns_proxy.QueryRate
    monkeypatch.setattr(dns_proxy, "QueryRate", lambda rate: real(0.001, burst=1))  # one query, then none
    proxy = DnsProxy([await nursery.start(Upstream().serve)], table=TABLE)
    pod = await _start_pod(nursery, proxy)
    assert a_records(await ask_udp(pod, "httpbin.")) == ["10.96.0.10"]
    with pytest.raises(trio.TooSlowError):  # over the rate: no answer (the resolver would retry)
        await ask_udp(pod, "httpbin.", timeout=0.5)
    assert proxy.counts.dropped == 1


def test_at_least_one_upstream_is_required():
    with pytest.raises(ValueError, match="upstream"):
        DnsProxy([])
