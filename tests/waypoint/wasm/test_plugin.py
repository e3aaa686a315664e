"""The plugin lifecycle through ``LoadedPlugin`` and ``HttpStream``, with WAT plugins: the verdicts the
pipeline sees (headers changed, local replies, pauses resumed by http_call answers), the sandbox (fuel,
memory, traps, rebuilds and their rate limit) and the root context's ticks and queues.

Time is trio's MockClock (autojump) where a test waits: pause timeouts and ticks fire when all tasks wait."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from waypoint.limits import WASM_MEMORY_LIMIT_BYTES, WASM_PAUSE_TIMEOUT, WASM_REBUILDS_PER_MINUTE
from waypoint.wasm.abi import AbiVersion
from waypoint.wasm.plugin import LoadedPlugin
from waypoint.wasm.state import SharedState
from waypoint.wasm.types import (
    Continue,
    Failed,
    HttpCallResult,
    LocalReply,
    PluginConfig,
    PluginLoadError,
    RequestInfo,
    Reset,
)

from . import plugins, wat

HEADERS = [(":method", "GET"), (":path", "/"), (":authority", "svc"), ("x-a", "1"), ("x-gone", "bye")]


async def no_calls(*args: object) -> HttpCallResult | None:
    raise AssertionError("no http_call expected")


def load(module: bytes, **kwargs: object) -> LoadedPlugin:
    config_fields = {k: kwargs.pop(k) for k in list(kwargs) if k in PluginConfig.__dataclass_fields__}
    http_call = kwargs.pop("http_call", no_calls)
    return LoadedPlugin.load(wat.config(module, **config_fields), http_call, wat.LOG, **kwargs)  # type: ignore


async def test_header_plugin_changes_are_in_the_verdict_and_done_runs_the_last_callbacks() -> None:
    plugin = load(plugins.HEADER, configuration=b"from-config")
    stream = plugin.stream(RequestInfo())
    verdict = await stream.request_headers(HEADERS, True)
    assert verdict == Continue(headers=[(":method", "GET"), (":path", "/"), (":authority", "svc"),
                                        ("x-a", "replaced"), ("x-wasm", "from-config")])
    assert plugin.vm.call("get_done") == 0
    stream.done()
    stream.done()                                   # once only
    assert plugin.vm.call("get_done") == 111        # on_done, on_log, on_delete
    assert plugin.host.streams == {}


async def test_a_callback_the_plugin_lacks_continues() -> None:
    stream = load(plugins.HEADER).stream(RequestInfo())
    assert await stream.response_headers([(":status", "200")], False) == Continue(headers=[(":status", "200")])
    assert await stream.response_body(b"data", True) == Continue(body=b"data")


async def test_deny_without_header_is_a_local_reply() -> None:
    plugin = load(plugins.DENY)
    denied = await plugin.stream(RequestInfo()).request_headers(HEADERS, True)
    assert denied == LocalReply(403, b"forbidden", [], "denied")
    allowed = await plugin.stream(RequestInfo()).request_headers(HEADERS + [("x-token", "t")], True)
    assert allowed == Continue(headers=HEADERS + [("x-token", "t")])


@pytest.mark.parametrize(("answer", "expected"), [
    (HttpCallResult(200, [("content-type", "text/plain")], b"yes"), "continue"),
    (HttpCallResult(200, [], b"no"), 403),
    (None, 403),
])
async def test_http_call_pauses_the_stream_until_the_answer(answer: HttpCallResult | None,
                                                            expected: object) -> None:
    asked: list[tuple[object, ...]] = []
    answered = trio.Event()

    async def http_call(*args: object) -> HttpCallResult | None:
        asked.append(args)
        await answered.wait()
        return answer

    plugin = load(plugins.HTTP_CALL, http_call=http_call)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(plugin.run)
        stream = plugin.stream(RequestInfo())
        verdicts: list[object] = []

        async def request() -> None:
            verdicts.append(await stream.request_headers(HEADERS, True))

        nursery.start_soon(request)
        await trio.testing.wait_all_tasks_blocked()
        assert verdicts == []                       # paused while the call is out
        assert asked == [("authz", [(":method", "GET"), (":path", "/allow"), (":authority", "authz.ns")],
                          b"", [], 1.0)]
        answered.set()
        await trio.testing.wait_all_tasks_blocked()
        plugin.close()
    if expected == "continue":
        assert verdicts == [Continue(headers=HEADERS)]
    else:
        assert isinstance(verdicts[0], LocalReply) and verdicts[0].status == expected


async def test_a_pause_nobody_ends_fails_after_the_timeout(autojump_clock: trio.testing.MockClock) -> None:
    stream = load(plugins.PAUSE).stream(RequestInfo())
    start = trio.current_time()
    verdict = await stream.request_headers(HEADERS, True)
    assert isinstance(verdict, Failed) and "paused" in verdict.reason
    assert trio.current_time() - start == pytest.approx(WASM_PAUSE_TIMEOUT)


async def test_an_endless_loop_fails_on_fuel_and_the_vm_is_rebuilt() -> None:
    plugin = load(plugins.LOOP)
    first_vm = plugin.vm
    verdict = await plugin.stream(RequestInfo()).request_headers(HEADERS, True)
    assert isinstance(verdict, Failed) and "fuel" in verdict.reason
    assert first_vm.tainted is not None
    second = plugin.stream(RequestInfo())
    assert plugin.vm is not first_vm and plugin.rebuilds == 1
    assert second._vm is plugin.vm and plugin.vm.tainted is None


async def test_unbounded_memory_growth_stops_at_the_limit() -> None:
    plugin = load(plugins.GROW)
    vm = plugin.vm
    verdict = await plugin.stream(RequestInfo()).request_headers(HEADERS, True)
    assert isinstance(verdict, Failed) and "unreachable" in verdict.reason
    vm.tainted = None                                 # to read its memory size after the fact
    assert WASM_MEMORY_LIMIT_BYTES - 16 * 65536 < vm.memory.size() <= WASM_MEMORY_LIMIT_BYTES


async def test_a_trap_fails_paused_streams_and_rebuilds_are_rate_limited() -> None:
    now = [1000.0]
    plugin = load(plugins.TRAP, clock=lambda: now[0])
    for _ in range(WASM_REBUILDS_PER_MINUTE + 1):      # the first VM, then each rebuild, traps once
        verdict = await plugin.stream(RequestInfo()).request_headers(HEADERS, True)
        assert isinstance(verdict, Failed) and "unreachable" in verdict.reason
    assert plugin.rebuilds == WASM_REBUILDS_PER_MINUTE
    refused = await plugin.stream(RequestInfo()).request_headers(HEADERS, True)
    assert isinstance(refused, Failed) and "rate-limited" in refused.reason
    assert plugin.rebuilds == WASM_REBUILDS_PER_MINUTE
    now[0] += 61
    await plugin.stream(RequestInfo()).request_headers(HEADERS, True)
    assert plugin.rebuilds == WASM_REBUILDS_PER_MINUTE + 1


async def test_a_trap_elsewhere_fails_a_paused_stream_at_once() -> None:
    plugin = load(plugins.HTTP_CALL, http_call=lambda *a: trio.sleep_forever())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(plugin.run)
        stream = plugin.stream(RequestInfo())
        verdicts: list[object] = []

        async def request() -> None:
            verdicts.append(await stream.request_headers(HEADERS, True))

        nursery.start_soon(request)
        await trio.testing.wait_all_tasks_blocked()
        plugin.root_call("no_such_export_is_fine", 1)
        assert verdicts == []
        plugin.vm.tainted = "a trap in another stream"
        plugin._tainted("a trap in another stream")
        await trio.testing.wait_all_tasks_blocked()
        assert isinstance(verdicts[0], Failed)
        nursery.cancel_scope.cancel()


async def test_body_is_buffered_only_while_asked_and_can_be_replaced() -> None:
    plugin = load(plugins.BODY)
    stream = plugin.stream(RequestInfo())
    assert await stream.request_body(b"abc", False) == Continue(body=b"")
    assert await stream.request_body(b"defg", True) == Continue(body=b"REPLACED")
    assert plugin.vm.call("get_seen") == 7          # the plugin saw the whole body at its end


async def test_a_body_past_the_buffer_bound_is_413(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("waypoint.wasm.plugin.WASM_BODY_BUFFER_BYTES", 5)
    stream = load(plugins.BODY).stream(RequestInfo())
    assert await stream.request_body(b"abc", False) == Continue(body=b"")
    verdict = await stream.request_body(b"def", False)
    assert isinstance(verdict, LocalReply) and verdict.status == 413


async def test_ticks_and_queue_notifications_reach_the_root(autojump_clock: trio.testing.MockClock) -> None:
    shared = SharedState()
    plugin = load(plugins.TICKS, shared=shared)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(plugin.run)
        await trio.sleep(5.5)
        status, queue = shared.resolve_queue("vm", "jobs")
        shared.enqueue(queue, b"job")
        await trio.testing.wait_all_tasks_blocked()
        plugin.close()
    assert dict((name, value) for name, _, value in plugin.metrics.samples()) == {"wasm_ticks": 5, "wasm_jobs": 1}


@pytest.mark.parametrize("marker", [True, False])
async def test_abi_0_1_0_by_marker_or_arity(marker: bool, autojump_clock: trio.testing.MockClock) -> None:
    plugin = load(plugins.abi_0_1_0(marker))
    assert plugin.vm.version is AbiVersion.V0_1_0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(plugin.run)
        verdict = await plugin.stream(RequestInfo()).request_headers(HEADERS, True)   # resumed by a tick
        plugin.close()
    assert verdict == Continue(headers=HEADERS + [("x-old", "abi")])


def test_a_refused_configuration_fails_the_load() -> None:
    with pytest.raises(PluginLoadError, match="proxy_on_configure"):
        load(plugins.CONFIGURE_FALSE)


def test_close_runs_the_root_callbacks_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    plugin = load(plugins.HEADER)
    plugin.close()
    assert plugin.vm.tainted == "closed"
    assert not caplog.records
    assert plugin.stream(RequestInfo()).failure == "plugin ns/test is closed" and plugin.rebuilds == 0


async def test_the_response_side_and_trailers() -> None:
    stream = load(plugins.RESPONSE).stream(RequestInfo())
    assert await stream.request_headers(HEADERS, False) == Continue(headers=HEADERS)
    assert await stream.request_trailers([("grpc-x", "1")]) == Continue(headers=[("grpc-x", "1"), ("t-wasm", "1")])
    assert await stream.response_headers([(":status", "200")], False) == \
        Continue(headers=[(":status", "200"), ("x-resp", "1")])
    assert await stream.response_body(b"ab", False) == Continue(body=b"")
    assert await stream.response_body(b"cd", True) == Continue(body=b"abcd")
    assert await stream.response_trailers([("t", "2")]) == Continue(headers=[("t", "2")])


async def test_a_response_body_past_the_buffer_bound_is_500(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("waypoint.wasm.plugin.WASM_BODY_BUFFER_BYTES", 3)
    stream = load(plugins.RESPONSE).stream(RequestInfo())
    assert await stream.response_body(b"ab", False) == Continue(body=b"")
    verdict = await stream.response_body(b"cd", False)
    assert isinstance(verdict, LocalReply) and verdict.status == 500


async def test_close_stream_is_a_reset() -> None:
    stream = load(plugins.RESPONSE).stream(RequestInfo())
    verdict = await stream.request_headers(HEADERS + [("x-close", "1")], True)
    assert isinstance(verdict, Reset) and "closed by the plugin" in verdict.reason


async def test_a_plugin_loaded_in_a_worker_thread_serves_in_trio(autojump_clock: trio.testing.MockClock) -> None:
    plugin = await trio.to_thread.run_sync(lambda: load(plugins.TICKS, shared=SharedState()))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(plugin.run)
        await trio.sleep(2.5)
        plugin.close()
    assert dict((name, value) for name, _, value in plugin.metrics.samples())["wasm_ticks"] == 2
