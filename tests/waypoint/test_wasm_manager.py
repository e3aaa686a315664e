"""The waypoint's WasmPlugins kept as its view wants them (``waypoint.wasm_manager``), with a fake host:
which plugins apply, their order, live changes that never drop what runs, failures held and retried."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import trio.testing

from mesh.api import waypoint_pb2 as wp
from waypoint.wasm_fetch import sha256_hex
from waypoint.wasm_manager import WASM_LOAD_RETRY_INTERVAL, WasmManager
from waypoint.wasm_stage import Phase

GATEWAY = "apps/waypoint"
SERVICE = "apps/web.apps.svc.cluster.local"


@dataclass
class FakePlugin:
    resource: wp.WasmPlugin
    module: bytes
    closed: bool = False
    ran: trio.Event = field(default_factory=trio.Event)

    def stream(self, info: Any) -> Any:
        return None

    async def run(self) -> None:
        self.ran.set()
        await trio.sleep_forever()

    def close(self) -> None:
        self.closed = True


@dataclass
class Host:
    loaded: list[FakePlugin] = field(default_factory=list)
    refuse: set[bytes] = field(default_factory=set)  # modules whose configure fails

    def load(self, resource: wp.WasmPlugin, module: bytes) -> FakePlugin:
        if module in self.refuse:
            raise RuntimeError("proxy_on_configure returned false")
        plugin = FakePlugin(resource, module)
        self.loaded.append(plugin)
        return plugin


def resource(tmp_path: Path, name: str, module: bytes = b"\0asm-1", **fields: Any) -> wp.WasmPlugin:
    path = tmp_path / f"{name}.wasm"
    path.write_bytes(module)
    fields.setdefault("gateways", [GATEWAY])
    return wp.WasmPlugin(name=name, namespace="apps", url=f"file://{path}", sha256=sha256_hex(module), **fields)


@asynccontextmanager
async def running(host: Host) -> AsyncIterator[WasmManager]:
    manager = WasmManager(GATEWAY, host.load, lambda head, tunnel: (head, tunnel))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(manager.run)
        yield manager
        nursery.cancel_scope.cancel()


async def settle(manager: WasmManager, loads: int) -> None:
    """Every change acted on; ``loads`` plugins loaded so far. (Loading runs in a worker thread, which
    wait_all_tasks_blocked counts as blocked: the manager says when it is done.)"""
    await manager.settled()
    assert manager.loads == loads


def names(manager: WasmManager, service: str | None = SERVICE, port: int = 80) -> list[str]:
    return [applied.name for applied in manager.plugins_for(GATEWAY, service, port)]


async def test_only_plugins_for_this_waypoint_or_its_services_load(tmp_path: Path) -> None:
    host = Host()
    async with running(host) as manager:
        manager.update({"apps/a": resource(tmp_path, "a"),
                        "apps/b": resource(tmp_path, "b", gateways=[], services=[SERVICE]),
                        "apps/other": resource(tmp_path, "other", gateways=["apps/other-waypoint"])},
                       frozenset({SERVICE}))
        await settle(manager, 2)
        assert sorted(p.resource.name for p in host.loaded) == ["a", "b"]
        assert names(manager) == ["apps/a", "apps/b"]
        assert names(manager, service=None) == ["apps/a"]  # a workload: only the Gateway's plugins
        await trio.testing.wait_all_tasks_blocked()  # each plugin's own task has started
        assert all(p.ran.is_set() for p in host.loaded)


async def test_no_plugin_for_this_waypoint_means_nothing_loads() -> None:
    host = Host()
    async with running(host) as manager:
        manager.update({}, frozenset())
        await settle(manager, 0)
        assert not manager.active and host.loaded == [] and manager.statuses() == []


async def test_order_is_phase_then_priority_then_name(tmp_path: Path) -> None:
    host = Host()
    plugins = {
        "apps/stats": resource(tmp_path, "stats", phase=wp.WasmPlugin.STATS),
        "apps/last": resource(tmp_path, "last"),
        "apps/authz-low": resource(tmp_path, "authz-low", phase=wp.WasmPlugin.AUTHZ, priority=1),
        "apps/authz-high": resource(tmp_path, "authz-high", phase=wp.WasmPlugin.AUTHZ, priority=10),
        "apps/authn": resource(tmp_path, "authn", phase=wp.WasmPlugin.AUTHN, priority=-5),
        "apps/authz-b": resource(tmp_path, "authz-b", phase=wp.WasmPlugin.AUTHZ, priority=1),
    }
    async with running(host) as manager:
        manager.update(plugins, frozenset())
        await settle(manager, len(plugins))
        applied = manager.plugins_for(GATEWAY, SERVICE)
        assert [a.name for a in applied] == ["apps/authn", "apps/authz-high", "apps/authz-b", "apps/authz-low",
                                             "apps/stats", "apps/last"]
        assert [a.phase for a in applied][:2] == [Phase.AUTHN, Phase.AUTHZ]


async def test_ports_limit_where_a_plugin_runs(tmp_path: Path) -> None:
    host = Host()
    async with running(host) as manager:
        manager.update({"apps/a": resource(tmp_path, "a", ports=[8080])}, frozenset())
        await settle(manager, 1)
        assert names(manager, port=8080) == ["apps/a"] and names(manager, port=80) == []


async def test_a_change_loads_the_new_one_and_then_closes_the_old(tmp_path: Path) -> None:
    host = Host()
    async with running(host) as manager:
        manager.update({"apps/a": resource(tmp_path, "a")}, frozenset())
        await settle(manager, 1)
        old = manager.plugins_for(GATEWAY, SERVICE)[0].plugin
        manager.update({"apps/a": resource(tmp_path, "a", plugin_config=b'{"v":2}')}, frozenset())
        await settle(manager, 2)
        new = manager.plugins_for(GATEWAY, SERVICE)[0].plugin
        assert new is not old and new.resource.plugin_config == b'{"v":2}'
        assert old.closed and not new.closed


async def test_an_unchanged_view_loads_nothing_again(tmp_path: Path) -> None:
    host = Host()
    plugin = resource(tmp_path, "a")
    async with running(host) as manager:
        manager.update({"apps/a": plugin}, frozenset())
        await settle(manager, 1)
        manager.update({"apps/a": wp.WasmPlugin.FromString(plugin.SerializeToString())}, frozenset({SERVICE}))
        await settle(manager, 1)
        assert len(host.loaded) == 1


async def test_removal_closes_it_and_requests_started_before_keep_theirs(tmp_path: Path) -> None:
    host = Host()
    async with running(host) as manager:
        manager.update({"apps/a": resource(tmp_path, "a")}, frozenset())
        await settle(manager, 1)
        in_flight = manager.plugins_for(GATEWAY, SERVICE)
        manager.update({}, frozenset())
        await settle(manager, 1)
        assert names(manager) == [] and not manager.active
        assert in_flight[0].plugin.closed and in_flight[0].name == "apps/a"


async def test_a_module_that_cannot_be_had_is_held_as_failed_and_retried(tmp_path: Path,
                                                                          autojump_clock: trio.testing.MockClock
                                                                          ) -> None:
    host = Host()
    broken = resource(tmp_path, "a")
    (tmp_path / "a.wasm").unlink()
    async with running(host) as manager:
        manager.update({"apps/a": broken}, frozenset())
        await settle(manager, 0)
        [status] = manager.statuses()
        assert status.state == "failed" and "No such file" in (status.error or "")
        assert names(manager) == ["apps/a"]  # it still applies: FAIL_CLOSE fails its requests
        (tmp_path / "a.wasm").write_bytes(b"\0asm-1")
        await trio.sleep(WASM_LOAD_RETRY_INTERVAL + 1)  # the retry's pass has begun by then
        await settle(manager, 1)
        assert manager.statuses()[0].state == "loaded"


async def test_a_failed_reload_keeps_the_running_plugin_only_when_unchanged(tmp_path: Path) -> None:
    host = Host()
    async with running(host) as manager:
        manager.update({"apps/a": resource(tmp_path, "a")}, frozenset())
        await settle(manager, 1)
        host.refuse.add(b"\0asm-2")
        manager.update({"apps/a": resource(tmp_path, "a", module=b"\0asm-2")}, frozenset())
        await settle(manager, 1)
        [status] = manager.statuses()
        # A new version that cannot configure replaces the old as failed (Istio: FAIL_CLOSE denies).
        assert status.state == "failed" and "proxy_on_configure" in (status.error or "")
        assert host.loaded[0].closed

