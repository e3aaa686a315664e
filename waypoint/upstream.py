"""Connections from the waypoint to endpoints, pooled: the I/O that carries out an outbound plan.

A request the pipeline routed to (service, port) becomes a ``mesh.outbound`` plan, made with the
waypoint's own workload as the source (so the Service's waypoint, ourselves, is not chosen again):

- ``HboneToPod``: an HBONE stream to the endpoint's ztunnel (``hbone.HbonePool``: HTTP/2
  connections per expected identity and address, up to 100 streams each), over mTLS with the
  waypoint's certificate, ``CONNECT <pod IP>:<target port>`` with ``forwarded`` naming the original
  client, ``baggage`` the waypoint's own peer metadata and a new ``traceparent``. The destination
  ztunnel sees the waypoint's identity, as Istio's does.
- ``Passthrough``: an endpoint outside the mesh, plain TCP from the waypoint's pod.

Inside that stream the request goes as HTTP/1.1 or HTTP/2. HTTP/1.1 connections are kept after a
clean exchange (keep-alive, at most ``MAX_IDLE_PER_ENDPOINT`` idle per endpoint); an HTTP/2
connection carries up to ``UPSTREAM_STREAMS_PER_CONNECTION`` requests at once and is shared until
it ends. Both are keyed by (plan address, CONNECT authority, expected identities): the same endpoint
through the same tunnel.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Hashable

import trio

from hbone.pool import HbonePool
from hbone.tls import ContextCache, WorkloadCredentials, client_handshake
from mesh.outbound import HboneToPod, Passthrough
from mesh.peer_metadata import new_traceparent
from waypoint.h1 import H1Upstream
from waypoint.h2 import H2Upstream
from waypoint.h2session import H2Session
from waypoint.limits import CONNECT_TIMEOUT, MAX_IDLE_PER_ENDPOINT

log = logging.getLogger("ambient.waypoint.upstream")

Credentials = Callable[[], Awaitable[WorkloadCredentials]]


class UpstreamConnectError(Exception):
    """No connection to the endpoint: Envoy's "UF" (upstream connect failure)."""


class Upstreams:
    def __init__(self, nursery: trio.Nursery, credentials: Credentials,
                 baggage: Callable[[], str | None] = lambda: None) -> None:
        self._nursery = nursery
        self._credentials = credentials
        self._baggage = baggage
        self._contexts = ContextCache()
        self.hbone = HbonePool(nursery)
        self._idle_h1: dict[Hashable, list[H1Upstream]] = {}
        self._h2: dict[Hashable, list[H2Session]] = {}
        self.opened = 0

    @staticmethod
    def key(plan: HboneToPod | Passthrough) -> Hashable:
        if isinstance(plan, HboneToPod):
            return (plan.address, plan.authority, frozenset(plan.expected_identities))
        return (plan.address,)

    async def http1(self, plan: HboneToPod | Passthrough, client: tuple[str, int]) -> H1Upstream:
        key = self.key(plan)
        idle = self._idle_h1.get(key)
        if idle:
            upstream = idle.pop()
            if not idle:
                del self._idle_h1[key]
            return upstream
        stream = await self._open(plan, client)

        def release(upstream: H1Upstream, clean: bool) -> None:
            pool = self._idle_h1.setdefault(key, [])
            if clean and len(pool) < MAX_IDLE_PER_ENDPOINT:
                pool.append(upstream)
            else:
                if not pool:
                    del self._idle_h1[key]
                self._nursery.start_soon(trio.aclose_forcefully, upstream.stream)

        return H1Upstream(stream, release)

    async def http2(self, plan: HboneToPod | Passthrough, client: tuple[str, int]) -> H2Upstream:
        key = self.key(plan)
        session = next((s for s in self._h2.get(key, ()) if s.available()), None)
        if session is None:
            stream = await self._open(plan, client)
            session = H2Session(stream, client_side=True)
            # Looked up again after the connect: a session that ended meanwhile may have dropped the list.
            self._h2.setdefault(key, []).append(session)
            await self._nursery.start(self._run_session, key, session)
        return H2Upstream(session, lambda _session: None)

    async def _run_session(self, key: Hashable, session: H2Session,
                           task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await session.run(task_status=task_status)
        finally:
            sessions = self._h2.get(key, [])
            if session in sessions:
                sessions.remove(session)
            if not sessions:
                self._h2.pop(key, None)

    async def raw(self, plan: HboneToPod | Passthrough, client: tuple[str, int]) -> trio.abc.HalfCloseableStream:
        """A stream of its own to the endpoint, for opaque TCP or a protocol switch."""
        return await self._open(plan, client)

    async def _open(self, plan: HboneToPod | Passthrough, client: tuple[str, int]) -> trio.abc.HalfCloseableStream:
        self.opened += 1
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                return await self._dial(plan, client)
        except trio.Cancelled:
            raise
        except trio.TooSlowError:
            raise UpstreamConnectError(f"no connection within {CONNECT_TIMEOUT:g} s") from None
        except UpstreamConnectError:
            raise
        except Exception as exc:
            raise UpstreamConnectError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc

    async def _dial(self, plan: HboneToPod | Passthrough, client: tuple[str, int]) -> trio.abc.HalfCloseableStream:
        if isinstance(plan, Passthrough):
            return await trio.open_tcp_stream(*plan.address)
        credentials = await self._credentials()
        context = self._contexts.client(credentials)
        expected = frozenset(plan.expected_identities)

        async def dial():
            tcp = await trio.open_tcp_stream(*plan.address)
            tls, _ = await client_handshake(tcp, context, expected)
            return tls

        # The waypoint's own peer metadata: a pooled tunnel carries the requests of many clients.
        return await self.hbone.open_stream((expected, plan.address), dial, plan.authority, client,
                                            self._baggage(), new_traceparent())

    def spawn(self, task: Callable[..., Awaitable[object]], *args: object) -> None:
        """Run ``task`` beside the requests (a mirror), ended with the waypoint."""
        self._nursery.start_soon(task, *args)

    def close_all(self) -> None:
        self.hbone.close_all()
        for sessions in list(self._h2.values()):
            for session in list(sessions):
                session.close(reason="the waypoint is stopping")
