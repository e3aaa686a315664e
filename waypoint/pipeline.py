"""One request through the waypoint: plugins, L7 policy, routing, then an endpoint (DESIGN.md 8).

``Pipeline.handle(downstream, tunnel)`` runs the stages that are configured, in order, each a pure
decision followed by the I/O it asks for:

0. ``waypoint.wasm_stage``: the WasmPlugins that apply, in Istio's order: AUTHN and AUTHZ plugins
   before the policy, STATS and unspecified ones after it; they may change the request, answer it
   themselves, or fail it (503, flag WASM); their response callbacks see the answer on its way back.
1. ``waypoint.authz``: the policies that target this waypoint or the addressed Service. A denial is
   a 403 ``RBAC: access denied`` (flag RBAC); the connection stays usable.
2. ``waypoint.routing``: the Service's HTTPRoutes/GRPCRoutes pick a rule, backend and filters, or
   answer themselves (redirect, 404 NR, 500 for a backend that does not resolve). Without a route
   the request goes to the Service and port it was addressed to; a request addressed to a pod IP
   (a workload waypoint) goes to that pod.
3. ``mesh.outbound.plan_outbound`` from the waypoint's own workload chooses the endpoint (a
   healthy one, by the Service's load balancing), and ``waypoint.upstream`` opens (or reuses) the
   connection to it. No endpoint: 503 UH. No connection: UF.

Retries follow the rule's policy (Istio's default: 2 more tries on connect failure and 503, with a
new endpoint each time) when the request body can be sent again: it is empty, or short enough
(``RETRY_BUFFER_BYTES``, by Content-Length) to be read whole first; otherwise the body streams as it
arrives and the request is tried once. ``timeouts.request`` bounds the whole, ``backendRequest``
each try: past either, 504 UT. Exhausted retries keep the last answer, flag URX.

A response streams back as it arrives (status, headers with the rule's response modifiers, body,
trailers): nothing is buffered for a stage that does not need it. A 101 answer to an HTTP/1.1
``Upgrade`` (WebSocket) turns both sides into a raw relay.

Every request ends as one ``RequestRecord`` for the metrics and the access log.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import trio

from hbone.relay import Counts, relay
from mesh.api import workload_pb2 as wpb
from mesh.identity import SpiffeId
from mesh.outbound import Balancer, HboneToPod, Passthrough, Refuse, plan_outbound
from mesh.proxy_state import ProxyState, identity_of, service_vip
from waypoint.authz import L7Authorizer, RequestAttributes
from waypoint.exchange import Downstream, Headers, end_to_end, header_value
from waypoint.h1 import H1Downstream, H1Upstream, PeerGone
from waypoint.h2 import H2Upstream, MalformedRequest
from waypoint.h2session import StreamReset
from waypoint.limits import MAX_LOCAL_REPLY_BYTES, RETRY_BUFFER_BYTES
from waypoint.records import NO_FLAGS, RequestRecord
from waypoint.request_ids import new_request_id
from waypoint.routing import (
    ISTIO_DEFAULT_RETRY,
    Forward,
    LocalReply,
    RequestHead,
    RouteTable,
    apply_response_headers,
)
from waypoint.upstream import UpstreamConnectError, Upstreams
from waypoint.wasm_stage import (
    AFTER_POLICY,
    BEFORE_POLICY,
    WASM_FLAG,
    Answer,
    PluginAnswered,
    WasmDownstream,
    WasmPlugins,
    send_answer,
)

log = logging.getLogger("ambient.waypoint")

_NEVER = float("inf")


class _NoNursery:
    """What a request without a task beside it uses in place of a nursery: nothing to cancel."""

    cancel_scope = trio.CancelScope()  # never entered: cancel() is a no-op

    async def __aenter__(self) -> _NoNursery:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    def start_soon(self, *args: object) -> None:
        raise AssertionError("a request without a streamed body starts no task")


class _NoScope:
    """A cancel scope's stand-in where no deadline applies (entering a real one costs per request)."""

    cancelled_caught = False

    def __enter__(self) -> _NoScope:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


_NO_NURSERY = _NoNursery()
_NO_SCOPE = _NoScope()


_GONE = (PeerGone, StreamReset, trio.BrokenResourceError, trio.ClosedResourceError)


@dataclass(frozen=True)
class WaypointView:
    """What a request is decided against: one consistent snapshot, swapped whole on each change."""

    state: ProxyState
    authz: L7Authorizer
    routes: RouteTable
    wasm: WasmPlugins | None = None  # None: no WasmPlugin targets this waypoint (wasmtime never imported)


@dataclass(frozen=True)
class Tunnel:
    """What the HBONE CONNECT said, resolved once per tunnel."""

    peer_identity: SpiffeId
    source_address: tuple[str, int]  # forwarded for, else the peer
    source: wpb.Workload | None
    destination: tuple[str, int]  # the original destination: VIP:port or pod IP:port
    service: wpb.Service | None  # addressed by VIP
    service_key: str | None
    workload: wpb.Workload | None  # addressed by pod IP
    me: wpb.Workload | None  # the waypoint pod's own workload: the source of every upstream plan


@dataclass
class _Outcome:
    status: int = 0
    flags: list[str] = field(default_factory=list)
    detail: str | None = None
    upstream: tuple[str, int] | None = None
    destination: wpb.Workload | None = None
    destination_principal: SpiffeId | None = None
    grpc_status: str | None = None
    route: str | None = None
    policy: str | None = None


class Pipeline:
    def __init__(self, gateway: str, view: Callable[[], WaypointView], upstreams: Upstreams, balancer: Balancer,
                 on_record: Callable[[RequestRecord], None], rng: random.Random | None = None) -> None:
        self.gateway = gateway
        self._view = view
        self.upstreams = upstreams
        self.balancer = balancer
        self._on_record = on_record
        self._rng = rng or random.Random()
        self.open_requests = 0
        self._idle = trio.Event()  # set while no request is open
        self._idle.set()

    def _pick(self, weights: Sequence[int]) -> int:
        return self._rng.choices(range(len(weights)), weights=weights)[0]

    async def handle(self, down: Downstream, tunnel: Tunnel) -> None:
        start = trio.current_time()
        outcome = _Outcome()
        if not self.open_requests:
            self._idle = trio.Event()
        self.open_requests += 1
        view = self._view()
        wasm = None
        if view.wasm is not None and (plugins := view.wasm.plugins_for(self.gateway, tunnel.service_key,
                                                                            tunnel.destination[1])):
            wasm = WasmDownstream(down, plugins, view.wasm.request_info(down, tunnel))
        # The plugins' wrapper is the client's exchange for the rest of the request.
        exchange = cast(Downstream, wasm) if wasm is not None else down
        try:
            await self._handle(exchange, tunnel, view, outcome, wasm)
        except PluginAnswered as exc:
            await _answer(down, outcome, exc.answer)
        except _GONE as exc:
            outcome.flags.append("DC")
            outcome.detail = outcome.detail or f"the client went away: {exc}"
            down.abort()
        except MalformedRequest as exc:
            outcome.detail = str(exc)
            down.abort()
        finally:
            self.open_requests -= 1
            if not self.open_requests:
                self._idle.set()
            if wasm is not None:
                wasm.done()
            self._record(exchange, tunnel, outcome, start)

    async def wait_idle(self) -> None:
        """Return once no request is open."""
        while self.open_requests:
            await self._idle.wait()

    # ------------------------------------------------------------ stages

    async def _handle(self, down: Downstream, tunnel: Tunnel, view: WaypointView, outcome: _Outcome,
                      wasm: WasmDownstream | None) -> None:
        if wasm is not None and (answer := await wasm.request_headers(BEFORE_POLICY)) is not None:
            await _answer(down, outcome, answer)
            return
        head = down.head
        policies = view.authz.policies_for(self.gateway, tunnel.service_key)
        if not policies.empty:
            decision = policies.authorize(_attributes(head, tunnel))
            outcome.policy = decision.policy
            if decision.dry_run:
                log.info("dry-run policies %s would have decided otherwise for %s %s", ", ".join(decision.dry_run),
                         head.method, head.target)
            if not decision.allowed:
                outcome.flags.append("RBAC")
                outcome.detail = decision.reason
                await _local_reply(down, outcome, 403, "RBAC: access denied")
                return
        if wasm is not None:
            if (answer := await wasm.request_headers(AFTER_POLICY)) is not None:
                await _answer(down, outcome, answer)
                return
            head = down.head
        if tunnel.service_key is not None:
            plan = view.routes.plan(tunnel.service_key, tunnel.destination[1], head, self._pick)
            outcome.route = plan.route
            if isinstance(plan, LocalReply):
                if plan.flag != NO_FLAGS:
                    outcome.flags.append(plan.flag)
                outcome.detail = plan.detail
                await _local_reply(down, outcome, plan.status, plan.body.decode("utf-8", "replace"), plan.headers)
                return
            service = view.state.services.get(plan.service)
            vip = service_vip(service)
            if vip is None:
                outcome.flags.append("UH")
                await _local_reply(down, outcome, 503, f"no healthy upstream: service {plan.service} has no address")
                return
            await self._forward(down, tunnel, view, outcome, plan, (vip, plan.port))
        else:
            await self._forward(down, tunnel, view, outcome, None, tunnel.destination)

    async def _forward(self, down: Downstream, tunnel: Tunnel, view: WaypointView, outcome: _Outcome,
                       plan: Forward | None, target: tuple[str, int]) -> None:
        head = plan.head if plan is not None else down.head
        retry = plan.retry if plan is not None else ISTIO_DEFAULT_RETRY  # a pod addressed directly: no route
        attempts = 1 + retry.attempts
        body = await _buffered_body(down)
        if body is None:
            attempts = 1  # a streamed body cannot be sent twice
        if plan is not None and body is not None:
            for service, port, percent in plan.mirrors:
                if self._rng.random() * 100 < percent:
                    self.upstreams.spawn(self._mirror, view, service, port, head, body, tunnel)
        timeout = plan.timeout if plan is not None and plan.timeout else _NEVER
        with trio.move_on_after(timeout) if timeout != _NEVER else _NO_SCOPE as whole:
            for attempt in range(attempts):
                last = attempt == attempts - 1
                # On the last try, what would have been retried is answered, flagged URX (Envoy's
                # "retry limit reached") when there were retries to exhaust.
                again = await self._try(down, tunnel, view, outcome, plan, target, head, body, retry.codes,
                                        may_retry=not last, exhausted=last and attempts > 1)
                if not again:
                    return
                if retry.backoff:
                    await trio.sleep(retry.backoff * (2 ** attempt))
        if whole.cancelled_caught:
            outcome.flags.append("UT")
            if down.responded:
                down.abort()
            else:
                await _local_reply(down, outcome, 504, "upstream request timeout")

    async def _try(self, down: Downstream, tunnel: Tunnel, view: WaypointView, outcome: _Outcome,
                   plan: Forward | None, target: tuple[str, int], head: RequestHead, body: bytes | None,
                   retry_codes: frozenset[int], *, may_retry: bool, exhausted: bool) -> bool:
        """One try; True if it should be tried again (and ``may_retry``)."""
        me = tunnel.me
        if me is None:
            outcome.flags.append("UH")
            await _local_reply(down, outcome, 503, "no healthy upstream: the waypoint does not know its own workload")
            return False
        choice = plan_outbound(me, target, view.state, self.balancer)
        if not isinstance(choice, (HboneToPod, Passthrough)):
            outcome.flags.append("UH")
            outcome.detail = (choice.reason if isinstance(choice, Refuse)
                              else f"the endpoint of {target} is behind another waypoint")
            await _local_reply(down, outcome, 503, "no healthy upstream")
            return False
        outcome.upstream = endpoint_address(choice)
        outcome.destination = view.state.workloads.get(choice.workload_uid or "")
        outcome.destination_principal = choice.identity if isinstance(choice, HboneToPod) else None
        http2 = _upstream_http2(down, tunnel)
        try:  # a pooled connection at once; a new one within CONNECT_TIMEOUT (waypoint.upstream)
            upstream = await (self.upstreams.http2(choice, tunnel.source_address) if http2
                              else self.upstreams.http1(choice, tunnel.source_address))
        except UpstreamConnectError as exc:
            outcome.detail = f"upstream connect error: {exc}"
            if may_retry:
                return True
            outcome.flags += ["UF", "URX"] if exhausted else ["UF"]
            await _local_reply(down, outcome, 503, "upstream connect error or disconnect/reset before headers")
            return False
        backend_timeout = plan.backend_timeout if plan is not None and plan.backend_timeout else _NEVER
        reusable = False
        switched: tuple[trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream] | None = None
        try:
            # A body read whole needs no task beside the response: no nursery, which costs per request.
            async with (trio.open_nursery() if body is None else _NO_NURSERY) as nursery:
                headers = _request_headers(head, getattr(down, "upgrade", None), upstream.http_version, body)
                if isinstance(upstream, H1Upstream):
                    length = len(body) if body is not None else _content_length(head, down)
                    await upstream.start(head, headers, body_length=length, hold=body is not None)
                else:
                    await upstream.start(head, headers, end_stream=body == b"")
                sent = trio.Event()
                if body is not None:
                    if body:
                        await upstream.send_body(body)
                    if body or isinstance(upstream, H1Upstream):  # HTTP/2 ended the stream with the headers
                        await upstream.end_body()
                    sent.set()
                else:
                    nursery.start_soon(_pump, down, upstream, sent)
                with trio.move_on_after(backend_timeout) if backend_timeout != _NEVER else _NO_SCOPE as per_try:
                    status, response_headers = await upstream.response()
                if per_try.cancelled_caught:
                    outcome.flags.append("UT")
                    outcome.detail = f"no response within the backend timeout of {backend_timeout:g} s"
                    await _local_reply(down, outcome, 504, "upstream request timeout")
                    nursery.cancel_scope.cancel()
                    return False
                if status in retry_codes:
                    if may_retry:
                        outcome.detail = f"upstream answered {status}; retrying"
                        nursery.cancel_scope.cancel()
                        return True
                    if exhausted:
                        outcome.flags.append("URX")
                # An HTTP/1.1 client's exchange, or a plugin's wrapper of one, can switch protocols.
                if (status == 101 and isinstance(down, (H1Downstream, WasmDownstream))
                        and down.http_version == "HTTP/1.1" and isinstance(upstream, H1Upstream)):
                    # Switched: relay both ways, outside this nursery, whose scope ends the request's tasks.
                    await down.respond(101, end_to_end_upgrade(response_headers))
                    outcome.status = 101
                    switched = (down.switched(), upstream.switched())
                    nursery.cancel_scope.cancel()
                else:
                    response_headers = end_to_end(response_headers)
                    if plan is not None and plan.response_headers is not None:
                        response_headers = apply_response_headers(plan.response_headers, response_headers)
                    outcome.grpc_status = header_value(response_headers, "grpc-status")
                    outcome.status = status
                    if _ended_with_headers(upstream):
                        # gRPC's Trailers-Only answer (an error status in the one HEADERS frame): an
                        # HTTP/2 client must see it end the stream there, not in a DATA frame after it.
                        await down.respond(status, response_headers, end=True)
                        reusable = sent.is_set()
                        nursery.cancel_scope.cancel()
                        return False
                    # The head and what of the body has already arrived leave in one write; a body
                    # that came whole with it leaves with its end.
                    chunk = upstream.body_at_hand()
                    await down.respond(status, response_headers, hold=chunk is not None)
                    await _relay_body(down, upstream, chunk, outcome)
                    reusable = sent.is_set()
                    nursery.cancel_scope.cancel()
            if switched is not None:
                try:
                    await relay(*switched, Counts())
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    outcome.detail = f"the upgraded connection ended: {exc}"
        except (PeerGone, StreamReset) as exc:
            if down.responded:
                raise  # the client's side (or the upstream mid-response): nothing left to answer
            outcome.detail = f"upstream reset: {exc}"
            if may_retry and body is not None:
                return True
            outcome.flags += ["UC", "URX"] if exhausted and body is not None else ["UC"]
            await _local_reply(down, outcome, 503, "upstream connect error or disconnect/reset before headers")
            return False
        finally:
            if isinstance(upstream, H1Upstream):
                await upstream.release(reusable)  # it never waits: no shield (a cancel scope per request) needed
            else:
                with trio.CancelScope(shield=True):
                    await upstream.release(reusable)
        return False

    async def _mirror(self, view: WaypointView, service_key: str, port: int, head: RequestHead, body: bytes,
                      tunnel: Tunnel) -> None:
        """Send a copy of the request to a mirror backend and drop its answer (Envoy's shadowing: the
        authority gets ``-shadow``)."""
        service = view.state.services.get(service_key)
        vip = service_vip(service)
        if tunnel.me is None or vip is None:
            return
        choice = plan_outbound(tunnel.me, (vip, port), view.state, self.balancer)
        if not isinstance(choice, (HboneToPod, Passthrough)):
            return
        host, sep, host_port = head.authority.rpartition(":")
        authority = f"{host}-shadow:{host_port}" if sep and host_port.isdigit() else f"{head.authority}-shadow"
        mirrored = RequestHead(head.method, head.target, authority, head.headers)
        try:
            upstream = await self.upstreams.http1(choice, tunnel.source_address)  # bounded by CONNECT_TIMEOUT
            try:
                await upstream.start(mirrored, _request_headers(mirrored, None, upstream.http_version, body),
                                     body_length=len(body))
                await upstream.send_body(body)
                await upstream.end_body()
                await upstream.response()
                while await upstream.receive_body():
                    pass
                await upstream.release(True)
            except BaseException:
                await upstream.release(False)
                raise
        except (UpstreamConnectError, *_GONE) as exc:
            log.debug("mirror of %s %s to %s failed: %s", head.method, head.target, service_key, exc)

    # ------------------------------------------------------------ the record

    def _record(self, down: Downstream, tunnel: Tunnel, outcome: _Outcome, start: float) -> None:
        head = down.head
        record = RequestRecord(
            start=start, duration=trio.current_time() - start,
            protocol="grpc" if (header_value(head.headers, "content-type") or "").startswith("application/grpc")
            else "http",
            http_version=down.http_version, method=head.method, path=head.target, authority=head.authority,
            status=outcome.status, response_flags=",".join(outcome.flags) or NO_FLAGS,
            request_bytes=down.received_bytes, response_bytes=down.sent_bytes,
            source_address=tunnel.source_address, source=tunnel.source, source_principal=tunnel.peer_identity,
            destination_service=tunnel.service, destination=outcome.destination,
            destination_principal=outcome.destination_principal, upstream_address=outcome.upstream,
            grpc_status=outcome.grpc_status, route=outcome.route, policy=outcome.policy, detail=outcome.detail,
            request_id=header_value(head.headers, "x-request-id"),
        )
        try:
            self._on_record(record)
        except Exception:  # telemetry must never fail a request
            log.exception("recording a request failed")


# ---------------------------------------------------------------- helpers


def _attributes(head: RequestHead, tunnel: Tunnel) -> RequestAttributes:
    headers: dict[str, tuple[str, ...]] = {}
    for name, value in head.headers:
        headers[name] = (*headers.get(name, ()), value)
    forwarded = headers.get("x-forwarded-for")
    remote = forwarded[0].split(",")[0].strip() if forwarded else tunnel.source_address[0]
    return RequestAttributes(
        source_identity=tunnel.peer_identity, source_ip=tunnel.source_address[0], remote_ip=remote,
        destination_ip=tunnel.destination[0], destination_port=tunnel.destination[1], host=head.authority,
        method=head.method, path=head.target, headers=headers)


def endpoint_address(choice: HboneToPod | Passthrough) -> tuple[str, int]:
    """The endpoint a plan reaches: the pod IP and target port (not its ztunnel's HBONE port)."""
    if isinstance(choice, HboneToPod):
        host, _, port = choice.authority.rpartition(":")
        return host.strip("[]"), int(port)
    return choice.address


def _upstream_http2(down: Downstream, tunnel: Tunnel) -> bool:
    """The upstream's HTTP version: what the Service port declares, else the client's."""
    if tunnel.service is not None:
        for port in tunnel.service.ports:
            if port.service_port == tunnel.destination[1]:
                if port.app_protocol in (wpb.HTTP2, wpb.GRPC):
                    return True
                if port.app_protocol == wpb.HTTP11:
                    return False
    return down.http_version == "HTTP/2"


def _ended_with_headers(upstream: Any) -> bool:
    """Whether an HTTP/2 upstream's response ended with its headers: no body, no trailers."""
    stream = upstream.stream if isinstance(upstream, H2Upstream) else None
    return stream is not None and stream.ended and not stream.has_data and stream.trailers is None


def _content_length(head: RequestHead, down: Downstream) -> int | None:
    """The request body's length for an HTTP/1.1 upstream; None: unknown (sent chunked)."""
    value = header_value(head.headers, "content-length")
    if value is not None and value.isdigit():
        return int(value)
    if down.http_version == "HTTP/1.1" and header_value(head.headers, "transfer-encoding") is None:
        return 0  # HTTP/1.1 without either has no body
    return None


async def _buffered_body(down: Downstream) -> bytes | None:
    """The whole request body if it is known to be at most RETRY_BUFFER_BYTES (or empty); None if it
    must stream."""
    head = down.head
    length = header_value(head.headers, "content-length")
    if length is not None and length.isdigit() and int(length) <= RETRY_BUFFER_BYTES:
        pass
    elif down.http_version == "HTTP/1.1" and length is None and header_value(head.headers, "transfer-encoding") is None:
        pass  # HTTP/1.1 without either has no body
    elif down.request_ended():
        pass  # END_STREAM on the headers
    else:
        return None
    chunks = []
    size = 0
    while chunk := await down.receive_body():
        size += len(chunk)
        if size > RETRY_BUFFER_BYTES:
            raise PeerGone(f"the request body is longer than its Content-Length ({length})")
        chunks.append(chunk)
    return b"".join(chunks)


async def _relay_body(down: Downstream, upstream: Any, chunk: bytes | None, outcome: _Outcome) -> None:
    """The response body as it arrives, then its end; ``chunk``: what was already at hand (None: nothing).
    A chunk the end follows at once leaves with it (one write, one DATA frame with END_STREAM, one pass
    through a plugin's body callback)."""
    while True:
        if chunk is None:
            chunk = await upstream.receive_body()
        if chunk == b"":
            trailers = upstream.trailers
            if trailers:
                outcome.grpc_status = header_value(trailers, "grpc-status") or outcome.grpc_status
            await down.end(end_to_end(trailers) if trailers else None)
            return
        after = upstream.body_at_hand()
        if after == b"" and not upstream.trailers:
            await down.send_body(chunk, end=True)
            return
        await down.send_body(chunk)
        chunk = after


async def _pump(down: Downstream, upstream: Any, done: trio.Event) -> None:
    while chunk := await down.receive_body():
        await upstream.send_body(chunk)
    await upstream.end_body()
    done.set()


def _request_headers(head: RequestHead, upgrade: str | None, version: str, body: bytes | None) -> Headers:
    # Expect: 100-continue was answered here (h1 sends the 100 as the body is first read), as Envoy does.
    headers = [(n, v) for n, v in end_to_end(head.headers) if n not in ("content-length", "expect")]
    if version == "HTTP/2":
        te = header_value(head.headers, "te")
        if te is not None and "trailers" in te:
            headers.append(("te", "trailers"))  # gRPC needs it; the only TE HTTP/2 allows
        length = header_value(head.headers, "content-length")
        if body is not None:
            headers.append(("content-length", str(len(body))))
        elif length is not None:
            headers.append(("content-length", length))
    if upgrade and version == "HTTP/1.1":
        headers += [("connection", "upgrade"), ("upgrade", upgrade)]
    if header_value(headers, "x-request-id") is None:
        headers.append(("x-request-id", new_request_id()))
    return headers


def end_to_end_upgrade(headers: Headers) -> Headers:
    upgrade = header_value(headers, "upgrade")
    kept = end_to_end(headers)
    return [*kept, ("connection", "upgrade"), ("upgrade", upgrade)] if upgrade else kept


async def _answer(down: Downstream, outcome: _Outcome, answer: Answer) -> None:
    """A WasmPlugin's own answer, the 503 of one that failed closed, or the reset it asked for."""
    if answer.failed:
        outcome.flags.append(WASM_FLAG)
    outcome.detail = answer.detail
    if down.responded or answer.reset:
        down.abort()
        return
    outcome.status = answer.status
    await send_answer(down, answer)


async def _local_reply(down: Downstream, outcome: _Outcome, status: int, text: str,
                       headers: Sequence[tuple[str, str]] = ()) -> None:
    """Answer the client ourselves (Envoy's local reply), unless a response has already started."""
    if down.responded:
        down.abort()
        return
    body = text.encode("utf-8", "replace")[:MAX_LOCAL_REPLY_BYTES]
    out = [*headers]
    if body:
        out += [("content-type", "text/plain"), ("content-length", str(len(body)))]
    else:
        out.append(("content-length", "0"))
    outcome.status = status
    await down.respond(status, out, end=not body)
    if body:
        await down.send_body(body)
        await down.end()


def source_identity_of(workload: wpb.Workload | None) -> SpiffeId | None:
    if workload is None:
        return None
    try:
        return identity_of(workload)
    except ValueError:
        return None
