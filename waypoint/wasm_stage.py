"""The WasmPlugin stage of one request (DESIGN.md 8): the plugins that apply, in Istio's order, around
the rest of the pipeline. Nothing here imports wasmtime: the plugins it is given were loaded by
``waypoint.wasm_manager``, which imports the host only when a WasmPlugin targets this waypoint.

Istio places a plugin by its phase: ``AUTHN`` and ``AUTHZ`` plugins see a request before the L7
authorization policy, ``STATS`` and unspecified ones after it (``STATS`` first), and all before the
routes; within a phase by ``priority``, highest first, then by namespace and name. Request callbacks run
in that order, response callbacks in the reverse one (Envoy's encoder filters).

A plugin sees the request headers as Envoy gives them, pseudo-headers first (``:method``, ``:scheme``,
``:path``, ``:authority``), and may change them: routing, policy and the upstream see what the plugins
left (Envoy clears its route cache when a plugin changes headers). The response headers come with
``:status``. ``WasmDownstream`` wraps the client's exchange (``waypoint.exchange.Downstream``) so that the
rest of the pipeline is unchanged: the request body it reads and the response it writes pass through
the plugins' body and header callbacks.

A plugin may answer itself (``proxy_send_local_response``): that answer goes to the client and the
request goes no further (on the response path it replaces the upstream's answer if nothing has been sent
yet; once the response has started, the exchange is cut instead). ``proxy_close_stream`` resets the
client's stream (HTTP/2) or closes its connection (HTTP/1.1). A plugin that fails (a trap, its fuel
or memory spent, a pause past its bound) fails the request with 503 and the flag ``WASM`` when its
``failStrategy`` is ``FAIL_CLOSE`` (Istio's default; Envoy answers 503 with details
``wasm_fail_stream``), or is skipped for the rest of the request when it is ``FAIL_OPEN``.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from waypoint.exchange import Downstream, Headers
from waypoint.routing import RequestHead
from waypoint.wasm.types import Continue, Failed, LocalReply, Reset

log = logging.getLogger("ambient.waypoint.wasm")

WASM_FLAG = "WASM"  # the response flag of a request failed by a plugin (FAIL_CLOSE)
FAIL_STATUS = 503


class Phase(enum.IntEnum):
    """Istio's WasmPlugin phases, in the order a request meets them."""

    AUTHN = 0
    AUTHZ = 1
    STATS = 2
    UNSPECIFIED = 3


BEFORE_POLICY = frozenset({Phase.AUTHN, Phase.AUTHZ})
AFTER_POLICY = frozenset({Phase.STATS, Phase.UNSPECIFIED})


@dataclass(frozen=True)
class AppliedPlugin:
    """One loaded plugin as it applies to a request: its place and its failure strategy.

    ``plugin`` is a ``waypoint.wasm`` LoadedPlugin (anything with ``stream(info)``)."""

    name: str  # "<ns>/<name>" of the WasmPlugin
    phase: Phase
    priority: int
    fail_open: bool
    plugin: Any

    @property
    def order(self) -> tuple[int, int, str]:
        return (int(self.phase), -self.priority, self.name)


def ordered(plugins: Sequence[AppliedPlugin]) -> tuple[AppliedPlugin, ...]:
    return tuple(sorted(plugins, key=lambda applied: applied.order))


@dataclass(frozen=True)
class Answer:
    """A plugin's own answer to the client, or the 503 of a plugin that failed closed."""

    status: int
    body: bytes
    headers: Headers
    plugin: str
    detail: str
    failed: bool  # FAIL_CLOSE: flag WASM
    reset: bool = False  # proxy_close_stream: the client's stream is reset, nothing is answered


def request_pseudo_headers(head: RequestHead, scheme: str = "http") -> Headers:
    return [(":method", head.method), (":scheme", scheme), (":path", head.target), (":authority", head.authority),
            *head.headers]


def head_from(headers: Headers, before: RequestHead) -> RequestHead:
    """The request head as a plugin left its headers (pseudo-headers split off again)."""
    method, target, authority = before.method, before.target, before.authority
    rest = []
    for name, value in headers:
        if name[:1] != ":":
            rest.append((name, value))
        elif name == ":method":
            method = value
        elif name == ":path":
            target = value
        elif name == ":authority":
            authority = value
    return RequestHead(method, target, authority, tuple(rest))


class _Streams:
    """The plugins' HTTP contexts of one request, created as the request reaches each plugin."""

    def __init__(self, plugins: Sequence[AppliedPlugin], info: Any) -> None:
        self.plugins = plugins
        self.info = info
        self.live: list[tuple[AppliedPlugin, Any]] = []  # (plugin, HttpStream) in request order
        self.skipped: set[str] = set()  # FAIL_OPEN plugins that failed: out of this request

    def open(self, applied: AppliedPlugin) -> Any:
        stream = applied.plugin.stream(self.info)
        self.live.append((applied, stream))
        return stream

    def active(self, reverse: bool = False) -> list[tuple[AppliedPlugin, Any]]:
        streams = self.live if not self.skipped else [(a, s) for a, s in self.live if a.name not in self.skipped]
        return streams[::-1] if reverse else streams

    def done(self) -> None:
        for applied, stream in self.live:
            try:
                stream.done()
            except Exception:  # a plugin's end must not fail the request's record
                log.exception("wasm plugin %s: on_done/on_log failed", applied.name)


class WasmDownstream:
    """The client's exchange as the rest of the pipeline sees it, with the plugins on both paths."""

    def __init__(self, inner: Downstream, plugins: Sequence[AppliedPlugin], info: Any) -> None:
        self._inner = inner
        self._streams = _Streams(plugins, info)
        self.http_version = inner.http_version
        self.head = inner.head
        self.upgrade = getattr(inner, "upgrade", None)
        self._replaced = False  # a plugin answered on the response path: the upstream's answer is dropped
        self._ended_with_headers = False  # the plugins were told the request had no body
        self.answer: Answer | None = None  # set when a plugin answered or failed the request

    # ------------------------------------------------------------ what the pipeline reads

    @property
    def received_bytes(self) -> int:
        return self._inner.received_bytes

    @property
    def sent_bytes(self) -> int:
        return self._inner.sent_bytes

    @property
    def responded(self) -> bool:
        return self._inner.responded

    def request_ended(self) -> bool:
        return self._inner.request_ended()

    def abort(self) -> None:
        self._inner.abort()

    def switched(self) -> Any:
        return self._inner.switched()  # type: ignore[attr-defined]

    def done(self) -> None:
        self._streams.done()

    # ------------------------------------------------------------ the request path

    async def request_headers(self, phases: frozenset[Phase]) -> Answer | None:
        """Run the request headers through the plugins of ``phases``; their answer if one answers."""
        end = self._ended_with_headers = self._inner.request_ended() and not self.upgrade
        for applied in self._streams.plugins:
            if applied.phase not in phases:
                continue
            stream = self._streams.open(applied)
            verdict = await stream.request_headers(request_pseudo_headers(self.head), end)
            if isinstance(verdict, Continue):
                if verdict.headers is not None:
                    self.head = head_from(verdict.headers, self.head)
                continue
            answer = self._fail_or_answer(applied, verdict)
            if answer is not None:
                return answer
        return None

    async def receive_body(self) -> bytes:
        data = await self._inner.receive_body()
        streams = self._streams.active()
        if not streams or (not data and self._ended_with_headers):
            return data  # Envoy calls no body callback for a request that had none
        end = not data or self._inner.request_ended()
        for applied, stream in streams:
            verdict = await stream.request_body(data, end)
            if isinstance(verdict, Continue):
                if verdict.body is not None:
                    data = verdict.body
                continue
            answer = self._fail_or_answer(applied, verdict)
            if answer is not None:
                raise PluginAnswered(answer)
        return data

    # ------------------------------------------------------------ the response path

    async def respond(self, status: int, headers: Headers, *, end: bool = False, hold: bool = False) -> None:
        if self._replaced:
            return
        streams = self._streams.active(reverse=True)
        if streams and status != 101:
            out: Headers = [(":status", str(status)), *headers]
            for applied, stream in streams:
                verdict = await stream.response_headers(out, end)
                if isinstance(verdict, Continue):
                    if verdict.headers is not None:
                        out = verdict.headers
                    continue
                answer = self._fail_or_answer(applied, verdict)
                if answer is not None:
                    if answer.reset:
                        raise PluginAnswered(answer)
                    await self._replace(answer)
                    return
            status = _status_of(out, status)
            headers = [(name, value) for name, value in out if name[:1] != ":"]
        await self._inner.respond(status, headers, end=end, hold=hold)

    async def send_body(self, data: bytes, *, end: bool = False) -> None:
        if self._replaced:
            return
        data = await self._response_body(data, end)
        if end:
            await self._inner.send_body(data, end=True)
        elif data:
            await self._inner.send_body(data)

    async def end(self, trailers: Headers | None = None) -> None:
        if self._replaced:
            return
        data = await self._response_body(b"", True)
        if data:
            await self._inner.send_body(data)
        await self._inner.end(trailers)

    async def _response_body(self, data: bytes, end: bool) -> bytes:
        streams = self._streams.active(reverse=True)
        if not streams:
            return data
        for applied, stream in streams:
            verdict = await stream.response_body(data, end)
            if isinstance(verdict, Continue):
                if verdict.body is not None:
                    data = verdict.body
                continue
            if isinstance(verdict, Failed) and not isinstance(verdict, Reset) and applied.fail_open:
                self._skip(applied, verdict)
                continue
            # A plugin cannot answer once the response head has gone: the exchange is cut.
            reason = verdict.reason if isinstance(verdict, Failed) else verdict.details or "a local reply"
            self.answer = Answer(FAIL_STATUS, b"", [], applied.name, f"wasm plugin {applied.name}: {reason}",
                                 isinstance(verdict, Failed) and not isinstance(verdict, Reset), reset=True)
            raise PluginAnswered(self.answer)
        return data

    async def _replace(self, answer: Answer) -> None:
        """A plugin answered on the response path before anything was sent: its answer goes instead."""
        self._replaced = True
        self.answer = answer
        await send_answer(self._inner, answer)

    # ------------------------------------------------------------ helpers

    def _fail_or_answer(self, applied: AppliedPlugin, verdict: Failed | LocalReply) -> Answer | None:
        if isinstance(verdict, Reset):
            self.answer = Answer(0, b"", [], applied.name, f"stream reset by wasm plugin {applied.name}: "
                                 f"{verdict.reason}", False, reset=True)
            return self.answer
        if isinstance(verdict, Failed):
            if applied.fail_open:
                self._skip(applied, verdict)
                return None
            self.answer = Answer(FAIL_STATUS, b"", [], applied.name,
                                 f"wasm plugin {applied.name} failed: {verdict.reason}", True)
            return self.answer
        # A local reply (proxy_send_local_response).
        self.answer = Answer(verdict.status, verdict.body or b"", list(verdict.headers or ()), applied.name,
                             f"{verdict.details or 'local reply'} (wasm plugin {applied.name})", False)
        return self.answer

    def _skip(self, applied: AppliedPlugin, verdict: Failed) -> None:
        log.warning("wasm plugin %s failed (FAIL_OPEN: skipped for this request): %s", applied.name, verdict.reason)
        self._streams.skipped.add(applied.name)


class WasmPlugins(Protocol):
    """The loaded WasmPlugins (``waypoint.wasm_manager``), as a request asks for them."""

    def plugins_for(self, gateway: str, service_key: str | None, port: int = 0) -> Sequence[AppliedPlugin]: ...

    def request_info(self, down: Any, tunnel: Any) -> Any: ...


class PluginAnswered(Exception):
    """A plugin answered (or failed closed) in the middle of a body: the pipeline stops the request."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.detail)
        self.answer = answer


def _status_of(headers: Headers, default: int) -> int:
    for name, value in headers:
        if name == ":status":
            return int(value) if value.isdigit() and 100 <= int(value) <= 999 else default
    return default


async def send_answer(down: Downstream, answer: Answer) -> None:
    headers = [(n, v) for n, v in answer.headers if not n.startswith(":") and n != "content-length"]
    headers.append(("content-length", str(len(answer.body))))
    if answer.body:
        await down.respond(answer.status, headers, hold=True)
        await down.send_body(answer.body)
        await down.end()
    else:
        await down.respond(answer.status, headers, end=True)
