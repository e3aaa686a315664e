"""A loaded plugin and its streams: the Proxy-Wasm lifecycle, and the API the waypoint's pipeline uses.

How it works: ``LoadedPlugin.load`` builds a VM (``vm.Vm``) with the host functions (``host.Host``) and
WASI (``wasi``) linked, runs its start-up, creates the root context (``proxy_on_context_create(1, 0)``),
then ``proxy_on_vm_start`` and ``proxy_on_configure`` with the pluginConfig; a false answer or a trap is a
``PluginLoadError``. ``stream()`` opens an HTTP context per request; each ``HttpStream`` call runs one
callback and turns its answer into a ``Verdict``. A callback that answers Pause parks the stream on a
``trio.Event`` until the plugin calls ``proxy_continue_*``, replies locally or closes the stream (often
from ``proxy_on_http_call_response``), for at most ``WASM_PAUSE_TIMEOUT``.

``run()`` is the plugin's own task, in the owner's nursery for the plugin's lifetime: it sends the
plugin's http_calls (through the ``HttpCaller`` it was given) and delivers their answers, the ticks and
the queue notifications to the root context. A trap anywhere taints the VM: its paused streams fail at
once, and the next ``stream()`` builds a new VM, at most ``WASM_REBUILDS_PER_MINUTE`` times a minute
(past it streams fail at once, for the caller's failStrategy). Metrics (``PluginMetrics``) outlive VMs.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable

import trio

from waypoint.limits import (
    WASM_BODY_BUFFER_BYTES,
    WASM_HTTP_CALL_MAX_TIMEOUT,
    WASM_HTTP_CALLS_IN_FLIGHT,
    WASM_PAUSE_TIMEOUT,
    WASM_REBUILDS_PER_MINUTE,
    WASM_START_FUEL,
)
from waypoint.wasm.abi import Action, StreamType
from waypoint.wasm.host import ROOT_CONTEXT_ID, Host, StreamState
from waypoint.wasm.state import SHARED, PluginMetrics, SharedState
from waypoint.wasm.types import (
    Continue,
    Failed,
    Headers,
    HttpCaller,
    HttpCallResult,
    LocalReply,
    PluginConfig,
    PluginLoadError,
    PluginTrap,
    RequestInfo,
    Reset,
    Verdict,
)
from waypoint.wasm.vm import Vm, compile_module
from waypoint.wasm.wasi import wasi_imports

_REBUILD_WINDOW = 60.0   # seconds over which WASM_REBUILDS_PER_MINUTE counts


class LoadedPlugin:
    """One VM of one plugin (rebuilt after a trap); see the module docstring."""

    def __init__(self, config: PluginConfig, http_call: HttpCaller, log: logging.Logger, *,
                 clock: Callable[[], float] = time.monotonic, shared: SharedState = SHARED) -> None:
        self.config = config
        self.log = log
        self.metrics = PluginMetrics()
        self._http_call = http_call
        self._clock = clock
        self._shared = shared
        self._work_send, self._work_receive = trio.open_memory_channel[tuple[object, ...]](math.inf)
        self._calls_in_flight = 0
        self._tick_ms = 0
        self._tick_changed = trio.Event()
        self._rebuilds: deque[float] = deque()
        self._streams: dict[int, HttpStream] = {}
        self._next_context = ROOT_CONTEXT_ID + 1
        self.rebuilds = 0          # VMs built after the first (for the tests and a metric)
        self.failure: str | None = None
        self._closed = False
        self.vm, self.host = self._build()

    @classmethod
    def load(cls, config: PluginConfig, http_call: HttpCaller, log: logging.Logger, **kwargs: object
             ) -> LoadedPlugin:
        return cls(config, http_call, log, **kwargs)  # type: ignore[arg-type]

    # ---------------------------------------------------------------- VM lifecycle

    def _build(self) -> tuple[Vm, Host]:
        module = compile_module(self.config.module)
        host = Host(self.config, self, self.metrics, self._shared, self.log)
        holder: list[Vm] = []

        def vm_ref() -> Vm:
            return holder[0]

        imports = {**wasi_imports(vm_ref, self.config.vm_env, self.log), **host.imports()}
        vm = Vm(module, imports)
        holder.append(vm)
        host.vm = vm
        self._tick_ms = 0
        vm.start()
        if vm.unimplemented:
            self.log.info("wasm plugin %s: imports not implemented (stubbed): %s", self.config.name,
                          ", ".join(vm.unimplemented))
        try:
            vm.call("proxy_on_context_create", ROOT_CONTEXT_ID, 0, fuel=WASM_START_FUEL)
            if vm.call("proxy_on_vm_start", ROOT_CONTEXT_ID, len(self.config.vm_configuration),
                       fuel=WASM_START_FUEL) == 0:
                raise PluginLoadError("proxy_on_vm_start answered false")
            if vm.call("proxy_on_configure", ROOT_CONTEXT_ID, len(self.config.configuration),
                       fuel=WASM_START_FUEL) == 0:
                raise PluginLoadError("proxy_on_configure answered false (the pluginConfig was refused)")
        except PluginTrap as trap:
            raise PluginLoadError(f"start-up trapped: {trap.reason}") from None
        return vm, host

    def _usable(self) -> bool:
        """The VM can serve a new stream, rebuilding it (rate-limited) if a trap tainted it."""
        if self.vm.tainted is None and self.failure is None:
            return True
        now = self._clock()
        while self._rebuilds and self._rebuilds[0] <= now - _REBUILD_WINDOW:
            self._rebuilds.popleft()
        if len(self._rebuilds) >= WASM_REBUILDS_PER_MINUTE:
            return False
        self._rebuilds.append(now)
        self.rebuilds += 1
        try:
            self.vm, self.host = self._build()
        except PluginLoadError as error:
            self.failure = f"rebuild failed: {error}"
            self.log.warning("wasm plugin %s: %s", self.config.name, self.failure)
            return False
        self.failure = None
        self._streams.clear()
        self._tick_changed.set()
        return True

    def _tainted(self, reason: str) -> None:
        """A trap: log it, and fail every stream paused on this VM now rather than at its timeout."""
        self.log.warning("wasm plugin %s trapped: %s", self.config.name, reason)
        for stream in list(self._streams.values()):
            stream.wake()

    def stream(self, request: RequestInfo) -> HttpStream:
        """A new HTTP context for one request (proxy_on_context_create)."""
        if self._closed:
            return HttpStream(self, None, f"plugin {self.config.name} is closed")
        if not self._usable():
            return HttpStream(self, None, f"plugin {self.config.name} unavailable: "
                              f"{self.failure or self.vm.tainted} (rebuilds rate-limited)")
        context_id = self._next_context
        self._next_context = context_id % 0x7FFFFFFF + 1 if context_id < 0x7FFFFFFF else ROOT_CONTEXT_ID + 1
        state = StreamState(context_id, request)
        self.host.streams[context_id] = state
        stream = HttpStream(self, state, None)
        self._streams[context_id] = stream
        self.host.effective = state
        try:
            self.vm.call("proxy_on_context_create", context_id, ROOT_CONTEXT_ID)
        except PluginTrap as trap:
            self._tainted(trap.reason)
            stream.failure = trap.reason
        return stream

    def root_call(self, name: str, *args: int) -> None:
        """A callback on the root context (tick, http_call answer, queue): a trap taints, never raises."""
        if self.vm.tainted is not None:
            return      # rebuilt at the next stream; until then its ticks and answers go nowhere
        self.host.effective = None
        try:
            self.vm.call(name, *args)
        except PluginTrap as trap:
            self._tainted(trap.reason)

    def close(self) -> None:
        """proxy_on_done and proxy_on_delete for the root context; stop run(); drop the VM."""
        self._closed = True
        self._shared.forget_listener(self.queue_ready)
        if self.vm.tainted is None:
            self.host.effective = None
            try:
                self.vm.call("proxy_on_done", ROOT_CONTEXT_ID)
                self.vm.call("proxy_on_delete", ROOT_CONTEXT_ID)
            except PluginTrap as trap:   # the VM is dropped anyway (gcore's SDK traps in a root's on_done)
                self.log.info("wasm plugin %s: trapped while closing: %s", self.config.name, trap.reason)
        self.vm.tainted = self.vm.tainted or "closed"
        for stream in list(self._streams.values()):
            stream.wake()
        self._work_send.close()

    # ---------------------------------------------------------------- HostOwner

    def resume(self, state: StreamState) -> None:
        stream = self._streams.get(state.context_id)
        if stream is not None:
            stream.wake()

    def dispatch_http_call(self, token: int, upstream: str, headers: Headers, body: bytes, trailers: Headers,
                           timeout: float) -> bool:
        if self._calls_in_flight >= WASM_HTTP_CALLS_IN_FLIGHT:
            return False
        self._calls_in_flight += 1
        self._work_send.send_nowait(("call", self.vm, token, upstream, headers, body, trailers, timeout))
        return True

    def tick_period_changed(self, milliseconds: int) -> None:
        self._tick_ms = milliseconds
        self._tick_changed.set()

    def queue_ready(self, queue_id: int) -> None:
        try:
            self._work_send.send_nowait(("queue", self.vm, queue_id))
        except trio.ClosedResourceError:
            pass

    # ---------------------------------------------------------------- the plugin's task

    async def run(self) -> None:
        """Ticks, http_call answers and queue notifications, until ``close()``."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._ticks)
            async for work in self._work_receive:
                if work[0] == "call":
                    nursery.start_soon(self._call, *work[1:])  # type: ignore[arg-type]
                elif work[1] is self.vm:
                    self.root_call("proxy_on_queue_ready", ROOT_CONTEXT_ID, work[2])  # type: ignore[arg-type]
            nursery.cancel_scope.cancel()

    async def _ticks(self) -> None:
        while True:
            changed = self._tick_changed = trio.Event()
            period = self._tick_ms
            if period <= 0:
                await changed.wait()
                continue
            with trio.move_on_after(period / 1000):
                await changed.wait()
            if not changed.is_set():
                self.root_call("proxy_on_tick", ROOT_CONTEXT_ID)

    async def _call(self, vm: Vm, token: int, upstream: str, headers: Headers, body: bytes, trailers: Headers,
                    timeout: float) -> None:
        result: HttpCallResult | None = None
        try:
            with trio.move_on_after(min(timeout, WASM_HTTP_CALL_MAX_TIMEOUT) if timeout > 0
                                    else WASM_HTTP_CALL_MAX_TIMEOUT):
                result = await self._http_call(upstream, headers, body, trailers, timeout)
        except Exception as error:    # the caller's failure is the plugin's "no answer", not ours
            self.log.info("wasm plugin %s: http_call to %s failed: %r", self.config.name, upstream, error)
        finally:
            self._calls_in_flight -= 1
        if vm is not self.vm or vm.tainted is not None:
            return      # the VM that asked is gone: nobody to tell
        answer = result or HttpCallResult(0, [], b"", [])
        if result is not None:
            answer = HttpCallResult(result.status, [(":status", str(result.status))] +
                                    [(k, v) for k, v in result.headers if k != ":status"],
                                    result.body, list(result.trailers))
        self.host.call_response = answer
        try:
            self.root_call("proxy_on_http_call_response", ROOT_CONTEXT_ID, token,
                           len(answer.headers) if result else 0, len(answer.body), len(answer.trailers))
        finally:
            self.host.call_response = None


class HttpStream:
    """One request through one plugin: each method runs one callback and answers a ``Verdict``."""

    def __init__(self, plugin: LoadedPlugin, state: StreamState | None, failure: str | None) -> None:
        self._plugin = plugin
        self._vm = plugin.vm
        self._host = plugin.host
        self._state = state
        self.failure = failure
        self._event: trio.Event | None = None
        self._holding = {StreamType.REQUEST: False, StreamType.RESPONSE: False}
        self._done = state is None

    def wake(self) -> None:
        if self._event is not None:
            self._event.set()

    async def request_headers(self, headers: Headers, end_of_stream: bool) -> Verdict:
        state = self._state
        if state is not None:
            state.request_headers = list(headers)
        return await self._headers(StreamType.REQUEST, "proxy_on_request_headers", len(headers), end_of_stream)

    async def response_headers(self, headers: Headers, end_of_stream: bool) -> Verdict:
        state = self._state
        if state is not None:
            state.response_headers = list(headers)
        return await self._headers(StreamType.RESPONSE, "proxy_on_response_headers", len(headers), end_of_stream)

    async def request_body(self, data: bytes, end_of_stream: bool) -> Verdict:
        return await self._body(StreamType.REQUEST, data, end_of_stream)

    async def response_body(self, data: bytes, end_of_stream: bool) -> Verdict:
        return await self._body(StreamType.RESPONSE, data, end_of_stream)

    async def request_trailers(self, trailers: Headers) -> Verdict:
        state = self._state
        if state is not None:
            state.request_trailers = list(trailers)
        verdict = await self._verdict(StreamType.REQUEST, "proxy_on_request_trailers", len(trailers))
        return Continue(headers=state.request_trailers) if isinstance(verdict, Continue) and state else verdict

    async def response_trailers(self, trailers: Headers) -> Verdict:
        state = self._state
        if state is not None:
            state.response_trailers = list(trailers)
        verdict = await self._verdict(StreamType.RESPONSE, "proxy_on_response_trailers", len(trailers))
        return Continue(headers=state.response_trailers) if isinstance(verdict, Continue) and state else verdict

    async def _headers(self, side: StreamType, callback: str, count: int, end_of_stream: bool) -> Verdict:
        args = (count, int(end_of_stream)) if self._vm.version.headers_have_end_of_stream else (count,)
        verdict = await self._callback(side, callback, *args)    # not _verdict: a frame less, per request
        assert not isinstance(verdict, _Hold)   # only a body callback holds
        if isinstance(verdict, Continue) and self._state is not None:
            headers = self._state.request_headers if side == StreamType.REQUEST else self._state.response_headers
            return Continue(headers=list(headers or []))
        return verdict

    async def _body(self, side: StreamType, data: bytes, end_of_stream: bool) -> Verdict:
        state = self._state
        if state is None:
            return Failed(self.failure or "no stream")
        attr = "request_body" if side == StreamType.REQUEST else "response_body"
        held = getattr(state, attr) if self._holding[side] else None
        body = bytearray(held or b"") + data
        if self._holding[side] and len(body) > WASM_BODY_BUFFER_BYTES:
            # Envoy's answer when a filter's buffer overflows: 413 for a request, 500 for a response.
            self._holding[side] = False
            if side == StreamType.REQUEST:
                return LocalReply(413, b"", [], "request_payload_too_large")
            return LocalReply(500, b"", [], "response_payload_too_large")
        setattr(state, attr, body)
        callback = "proxy_on_request_body" if side == StreamType.REQUEST else "proxy_on_response_body"
        verdict = await self._callback(side, callback, len(body), int(end_of_stream), buffering=not end_of_stream)
        if isinstance(verdict, _Hold):
            self._holding[side] = True
            return Continue(body=b"")
        self._holding[side] = False
        if isinstance(verdict, Continue):
            return Continue(body=bytes(getattr(state, attr) or b""))
        return verdict

    async def _verdict(self, side: StreamType, name: str, *args: int) -> Verdict:
        verdict = await self._callback(side, name, *args)
        assert not isinstance(verdict, _Hold)   # only a body callback holds
        return verdict

    async def _callback(self, side: StreamType, name: str, *args: int, buffering: bool = False
                        ) -> Verdict | _Hold:
        state = self._state
        if state is None or self.failure is not None:
            return Failed(self.failure or "no stream")
        plugin, vm = self._plugin, self._vm
        if vm.tainted is not None:
            return Failed(f"the VM trapped: {vm.tainted}")
        self._host.effective = state
        try:
            action = vm.call(name, state.context_id, *args)
        except PluginTrap as trap:
            plugin._tainted(trap.reason)
            self.failure = trap.reason
            return Failed(trap.reason)
        settled = self._settled()
        if settled is not None:
            return settled
        if action is None or action == Action.CONTINUE:
            return _CONTINUE
        if buffering:
            return _HOLD    # StopIterationAndBuffer before the end of the body: hold it, ask again with more
        state.paused = side
        self._event = event = trio.Event()
        with trio.move_on_after(WASM_PAUSE_TIMEOUT):
            await event.wait()
        self._event = None
        settled = self._settled()
        if settled is not None:
            return settled
        if state.paused is not None:
            state.paused = None
            return Failed(f"paused by the plugin for more than {WASM_PAUSE_TIMEOUT} s")
        return Continue()

    def _settled(self) -> Verdict | None:
        """What ends the stream whatever the callback answered: a trap, a reset, a local reply."""
        state = self._state
        assert state is not None
        if self._vm.tainted is not None:
            return Failed(self.failure or f"the VM trapped: {self._vm.tainted}")
        if state.reset is not None:
            return Reset(state.reset)
        if state.local_reply is not None:
            reply, state.local_reply = state.local_reply, None
            return reply
        return None

    def done(self) -> None:
        """proxy_on_done, proxy_on_log, proxy_on_delete: the request is over (call it whatever happened)."""
        if self._done:
            return
        self._done = True
        state = self._state
        assert state is not None
        plugin, vm = self._plugin, self._vm
        plugin._streams.pop(state.context_id, None)
        if vm.tainted is None:
            self._host.effective = state
            try:
                for callback in ("proxy_on_done", "proxy_on_log", "proxy_on_delete"):
                    vm.call(callback, state.context_id)
            except PluginTrap as trap:
                plugin._tainted(trap.reason)
        self._host.streams.pop(state.context_id, None)


class _Hold:
    """A body callback's StopIterationAndBuffer before the end of the body: hold it, ask again with more."""


_HOLD = _Hold()
_CONTINUE = Continue()     # frozen: one serves every callback that answers Continue
