"""ztunnel's DNS proxy, the driver: port 15053 in each served pod's netns, over UDP and TCP.

How it works: the node agent redirects a captured pod's DNS (UDP and TCP to port 53, anything but
loopback and ztunnel's own marked sockets) to 127.0.0.1:15053 in the pod's netns (``bpf.dns_capture``,
nftables, as istio-cni does); ztunnel listens there (``ztunnel.sockets.open_dns_listeners``, opened
with the pod's other listeners, before the pod is acknowledged). Each query is decided by
``ztunnel.dns.resolve`` against the table of the current view (rebuilt once per discovery change, not
per query) for the pod's namespace; a ``Forward`` goes to the upstream resolvers in order, from a
socket made in the pod's netns and marked so that capture lets it through (the pod's own route to
its cluster DNS), and the upstream's answer is relayed unchanged. No upstream answering in time:
SERVFAIL. Replies to UDP queries leave from the listening socket; the pod's conntrack gives them the
source the pod asked (its nameserver's address and port 53).

Bounds a pod can make ztunnel spend, per pod: ``MAX_QUERIES_PER_SECOND`` (more are dropped),
``MAX_FORWARDS_IN_FLIGHT`` forwarded queries at once
(one more is answered SERVFAIL at once: a resolver retries), ``MAX_TCP_CONNECTIONS`` (one more is
closed), each TCP connection closed after ``TCP_IDLE_TIMEOUT`` without a whole query, each upstream
try bounded by ``UPSTREAM_TIMEOUT``.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from mesh.dns_wire import MAX_TCP_QUERY, TCP, UDP, MalformedQuery, servfail
from ztunnel.dns import DnsTable, Forward, reply_matches, resolve

log = logging.getLogger("ambient.ztunnel.dns")

MAX_DATAGRAM = 65535  # read whole: a datagram cut at the buffer's size would look like a short query
MAX_FORWARDS_IN_FLIGHT = 64  # per pod: a resolver asks A and AAAA per name, a few names at a time
MAX_TCP_CONNECTIONS = 16  # per pod: TCP is a resolver's fallback for a truncated answer
TCP_IDLE_TIMEOUT = 5.0  # ztunnel's DEFAULT_TCP_REQUEST_TIMEOUT
UPSTREAM_TIMEOUT = 2.5  # per upstream try: glibc's resolver gives up on a server after 5 s
# Per pod: queries answered per second, with as many in a burst. glibc asks A and AAAA for each
# search-path step (up to 10 queries per name with ndots:5), so a pod polling a few names keeps
# hundreds a second; at ~50-100 CPU-us per query this bound keeps one pod flooding its resolver under a
# tenth of ztunnel's core, for the node's other pods. A query over the rate is dropped (a resolver retries).
MAX_QUERIES_PER_SECOND = 1000.0

Upstream = tuple[str, int]


@dataclass
class DnsCounts:
    """What ``ZtunnelMetrics`` exports as Istio's ztunnel DNS families."""

    requests: int = 0  # queries received, answered here or forwarded
    forwarded: int = 0  # queries sent upstream
    upstream_failures: int = 0  # forwarded queries no upstream answered
    dropped: int = 0  # queries dropped (malformed) or refused (a bound)


class DnsProxy:
    """Serves the DNS of every pod ztunnel serves; ``table`` is read at each query (``Ztunnel``
    replaces it with a new one on every discovery change), ``upstreams`` are tried in order."""

    def __init__(self, upstreams: Sequence[Upstream], table: DnsTable | None = None) -> None:
        if not upstreams:
            raise ValueError("the DNS proxy needs at least one upstream resolver")
        self.table = table if table is not None else DnsTable()
        self.upstreams = tuple(upstreams)
        self.counts = DnsCounts()

    async def serve(self, pod_key: str, namespace: str, udp: socket.socket, tcp: socket.socket,
                    upstream_socket: Callable[[int], socket.socket]) -> None:
        """Serve one pod until cancelled. ``udp`` and ``tcp`` are its listening sockets (closed when
        this returns); ``upstream_socket(type)`` makes an unconnected socket in the pod's netns that
        capture lets through."""
        forwards = trio.CapacityLimiter(MAX_FORWARDS_IN_FLIGHT)
        connections = trio.CapacityLimiter(MAX_TCP_CONNECTIONS)
        pod = _PodDns(self, pod_key, namespace, upstream_socket, forwards)
        with trio.socket.from_stdlib_socket(udp) as udp_sock, trio.socket.from_stdlib_socket(tcp) as tcp_sock:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pod.serve_udp, udp_sock, nursery)
                nursery.start_soon(pod.serve_tcp, tcp_sock, connections, nursery)


class QueryRate:
    """A token bucket: ``allow(now)`` is True for at most ``rate`` queries a second on average and
    ``burst`` (default: ``rate``) at once."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = rate if burst is None else burst
        self._tokens = self.burst
        self._at: float | None = None

    def allow(self, now: float) -> bool:
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class _PodDns:
    def __init__(self, proxy: DnsProxy, pod_key: str, namespace: str,
                 upstream_socket: Callable[[int], socket.socket], forwards: trio.CapacityLimiter) -> None:
        self.proxy = proxy
        self.counts = proxy.counts
        self.pod_key = pod_key
        self.namespace = namespace
        self.upstream_socket = upstream_socket
        self.forwards = forwards
        self.rate = QueryRate(MAX_QUERIES_PER_SECOND)

    def _decide(self, query: bytes, transport: str) -> bytes | Forward | None:
        self.counts.requests += 1
        if not self.rate.allow(trio.current_time()):
            self.counts.dropped += 1
            return None
        try:
            decision = resolve(query, self.proxy.table, self.namespace, transport)
        except MalformedQuery as exc:
            self.counts.dropped += 1
            log.debug("pod %s: dropped a %s query: %s", self.pod_key, transport, exc)
            return None
        except Exception:  # a bug here must not end the pod's DNS
            log.exception("pod %s: answering a %s query failed", self.pod_key, transport)
            return servfail(query)
        if isinstance(decision, Forward):
            return decision
        return decision.wire

    # -- UDP

    async def serve_udp(self, sock: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        while True:
            try:
                query, peer = await sock.recvfrom(MAX_DATAGRAM)
            except OSError as exc:  # an ICMP error of an earlier reply, reported on this socket
                log.debug("pod %s: DNS receive: %s", self.pod_key, exc)
                continue
            decision = self._decide(query, UDP)
            if isinstance(decision, Forward):
                token = object()
                try:
                    self.forwards.acquire_on_behalf_of_nowait(token)
                except trio.WouldBlock:
                    self.counts.dropped += 1
                    decision = servfail(query)
                else:
                    nursery.start_soon(self._forward_udp, sock, query, peer, token)
                    continue
            if decision is not None:
                await _send_quietly(sock, decision, peer)

    async def _forward_udp(self, sock: trio.socket.SocketType, query: bytes, peer: tuple[str, int],
                           token: object) -> None:
        try:
            reply = await self.forward(query, UDP)
            await _send_quietly(sock, reply, peer)
        finally:
            self.forwards.release_on_behalf_of(token)

    async def forward(self, query: bytes, transport: str) -> bytes:
        """The first upstream's answer, or SERVFAIL when none answered in time."""
        self.counts.forwarded += 1
        for upstream in self.proxy.upstreams:
            try:
                with trio.fail_after(UPSTREAM_TIMEOUT):
                    if transport == UDP:
                        return await self._ask_udp(query, upstream)
                    return await self._ask_tcp(query, upstream)
            except (OSError, trio.TooSlowError, EOFError) as exc:
                log.debug("pod %s: upstream %s:%d: %s", self.pod_key, *upstream, exc or "timed out")
        self.counts.upstream_failures += 1
        return servfail(query) or b""

    async def _ask_udp(self, query: bytes, upstream: Upstream) -> bytes:
        with trio.socket.from_stdlib_socket(self.upstream_socket(socket.SOCK_DGRAM)) as sock:
            await sock.connect(upstream)
            await sock.send(query)
            while True:
                reply = await sock.recv(MAX_DATAGRAM)
                if reply_matches(query, reply):
                    return reply

    async def _ask_tcp(self, query: bytes, upstream: Upstream) -> bytes:
        sock = trio.socket.from_stdlib_socket(self.upstream_socket(socket.SOCK_STREAM))
        try:
            await sock.connect(upstream)
        except BaseException:
            sock.close()
            raise
        async with trio.SocketStream(sock) as stream:
            await stream.send_all(struct.pack("!H", len(query)) + query)
            prefix = await _receive_exactly(stream, 2)
            (length,) = struct.unpack("!H", prefix)
            reply = await _receive_exactly(stream, length)
            if not reply_matches(query, reply):
                raise EOFError("the upstream's TCP answer is not for the query")
            return reply

    # -- TCP

    async def serve_tcp(self, sock: trio.socket.SocketType, limiter: trio.CapacityLimiter,
                        nursery: trio.Nursery) -> None:
        while True:
            conn, _ = await sock.accept()
            stream = trio.SocketStream(conn)
            try:
                limiter.acquire_on_behalf_of_nowait(stream)
            except trio.WouldBlock:
                self.counts.dropped += 1
                await trio.aclose_forcefully(stream)
                continue
            nursery.start_soon(self._serve_tcp_connection, stream, limiter)

    async def _serve_tcp_connection(self, stream: trio.SocketStream, limiter: trio.CapacityLimiter) -> None:
        try:
            while True:
                with trio.move_on_after(TCP_IDLE_TIMEOUT):
                    prefix = await _receive_exactly(stream, 2)
                    (length,) = struct.unpack("!H", prefix)
                    query = await _receive_exactly(stream, length) if 0 < length <= MAX_TCP_QUERY else None
                if query is None:
                    return  # idle, or a length over the bound
                decision = self._decide(query, TCP)
                if isinstance(decision, Forward):
                    decision = await self.forward(query, TCP)
                if decision:
                    await stream.send_all(struct.pack("!H", len(decision)) + decision)
        except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            limiter.release_on_behalf_of(stream)
            await trio.aclose_forcefully(stream)


async def _receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        if not chunk:
            raise EOFError("closed")
        data += chunk
    return bytes(data)


async def _send_quietly(sock: trio.socket.SocketType, data: bytes, peer: tuple[str, int]) -> None:
    if not data:
        return
    try:
        await sock.sendto(data, peer)
    except OSError as exc:
        log.debug("DNS reply to %s: %s", peer, exc)
