"""The WasmPlugins a waypoint runs, loaded and kept current with its discovery view (issue #20).

``Waypoint`` hands every view change to ``update`` (the WasmPlugin resources, and the Services the
waypoint serves); ``run`` does the slow part in the waypoint's nursery: fetch a new or changed plugin's
module (``waypoint.wasm_fetch``), load it (``waypoint.wasm``: compile, start the VM, configure), and
swap it in. Until the new one is loaded a changed plugin keeps running as it was, and a request
keeps the plugins it started with to its end, so adding, changing or removing one never fails a request in
flight. A plugin whose module cannot be had or whose configure fails is held as failed: it fails the
requests it applies to (503, flag WASM) under FAIL_CLOSE and is skipped under FAIL_OPEN, as Istio's agent
puts a deny-all or an allow-all in place of a module it cannot fetch; it is tried again after
``WASM_LOAD_RETRY_INTERVAL`` and on every change of its resource.

The host (``waypoint.wasm``, which imports wasmtime) is imported by the loader the waypoint gives, called
only once a WasmPlugin targets this waypoint: a waypoint without one never imports it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from mesh.api import waypoint_pb2 as wp
from waypoint.limits import WASM_LOAD_RETRY_INTERVAL
from waypoint.wasm.types import Failed, PluginConfig
from waypoint.wasm_fetch import FetchError, ModuleCache, fetch_module, sha256_hex
from waypoint.wasm_stage import AppliedPlugin, Phase

log = logging.getLogger("ambient.waypoint.wasm")


# Destinations (gateway, Service, port) whose ordered plugins are kept between requests, until the loaded set
# changes; a client may name ports, so the cache is cleared whole when it reaches this.
_CHAINS_KEPT = 1024

_PHASES = {wp.WasmPlugin.AUTHN: Phase.AUTHN, wp.WasmPlugin.AUTHZ: Phase.AUTHZ, wp.WasmPlugin.STATS: Phase.STATS,
           wp.WasmPlugin.UNSPECIFIED_PHASE: Phase.UNSPECIFIED}

Loader = Callable[[wp.WasmPlugin, bytes], Any]  # (resource, module) → a loaded plugin (blocking: in a thread)


@dataclass(frozen=True)
class PluginStatus:
    """What the config dump shows of one plugin."""

    name: str
    url: str
    sha256: str
    phase: str
    priority: int
    fail_open: bool
    state: str  # "loaded" | "loading" | "failed"
    error: str | None


class _Failed:
    """Stands in for a plugin that could not be loaded: every stream of it fails at once."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def stream(self, info: Any) -> _FailedStream:
        return _FailedStream(self.reason)

    def close(self) -> None:
        pass


class _FailedStream:
    def __init__(self, reason: str) -> None:
        self.reason = reason

    def _failed(self) -> Failed:
        return Failed(f"not loaded: {self.reason}")

    async def request_headers(self, headers: Any, end_of_stream: bool) -> Any:
        return self._failed()

    async def request_body(self, data: bytes, end_of_stream: bool) -> Any:
        return self._failed()

    async def response_headers(self, headers: Any, end_of_stream: bool) -> Any:
        return self._failed()

    async def response_body(self, data: bytes, end_of_stream: bool) -> Any:
        return self._failed()

    def done(self) -> None:
        pass


@dataclass
class _Entry:
    resource: wp.WasmPlugin
    identity: bytes  # the resource serialized: a change of any field reloads the plugin
    applied: AppliedPlugin
    state: str
    error: str | None = None
    failed_at: float = -math.inf
    cancel: trio.CancelScope | None = None  # the plugin's own run() task


def _applied(resource: wp.WasmPlugin, plugin: Any) -> AppliedPlugin:
    return AppliedPlugin(f"{resource.namespace}/{resource.name}", _PHASES.get(resource.phase, Phase.UNSPECIFIED),
                         resource.priority, resource.fail_open, plugin)


class WasmManager:
    def __init__(self, gateway: str, load: Loader, info: Callable[[Any, Any], Any]) -> None:
        """``load`` turns a resource and its module into a loaded plugin (it imports the host: called only
        once a plugin is wanted, in a worker thread); ``info`` makes a request's RequestInfo for the host."""
        self.gateway = gateway
        self._load = load
        self._info = info
        self._wanted: dict[str, wp.WasmPlugin] = {}
        self._entries: dict[str, _Entry] = {}
        self._table: tuple[tuple[wp.WasmPlugin, AppliedPlugin], ...] = ()
        self._chains: dict[tuple[str, str | None, int], tuple[AppliedPlugin, ...]] = {}
        self._changed = trio.Event()
        self._busy = False
        self._quiet = trio.Event()  # set (and replaced) each time a pass over the wanted plugins ends
        self._cache = ModuleCache()
        self.loads = 0  # plugins loaded so far (what the tests wait on)

    # ------------------------------------------------------------ the view's side

    def update(self, resources: Mapping[str, wp.WasmPlugin], served: frozenset[str]) -> None:
        """The WasmPlugins of the new view: those that target this waypoint or a Service it serves are wanted."""
        wanted = {key: plugin for key, plugin in resources.items()
                  if self.gateway in plugin.gateways or served.intersection(plugin.services)}
        if wanted != self._wanted:
            self._wanted = wanted
            self._changed.set()

    @property
    def active(self) -> bool:
        """Whether any plugin applies (or is on its way): a view without plugins needs no manager."""
        return bool(self._wanted or self._table)

    def plugins_for(self, gateway: str, service_key: str | None, port: int = 0) -> tuple[AppliedPlugin, ...]:
        """The plugins a request to ``service_key`` (or to a workload: None) on ``port`` goes through, in order
        (kept per destination until the loaded set changes: at most one entry per Service port served)."""
        key = (gateway, service_key, port)
        found = self._chains.get(key)
        if found is None:
            found = tuple(sorted(
                (applied for resource, applied in self._table
                 if (gateway in resource.gateways or (service_key is not None and service_key in resource.services))
                 and (not resource.ports or port in resource.ports)),
                key=lambda applied: applied.order))
            if len(self._chains) >= _CHAINS_KEPT:
                self._chains.clear()
            self._chains[key] = found
        return found

    def request_info(self, down: Any, tunnel: Any) -> Any:
        return self._info(down, tunnel)

    def metric_samples(self) -> Iterator[tuple[str, str, str, int | tuple[int, int]]]:
        """Every loaded plugin's own metrics: (plugin, name, kind, value)."""
        for key, entry in sorted(self._entries.items()):
            metrics = getattr(entry.applied.plugin, "metrics", None) if entry.state == "loaded" else None
            if metrics is not None:
                for name, kind, value in metrics.samples():
                    yield key, name, kind, value

    def statuses(self) -> list[PluginStatus]:
        return [PluginStatus(f"{e.resource.namespace}/{e.resource.name}", e.resource.url, e.resource.sha256,
                             e.applied.phase.name, e.resource.priority, e.resource.fail_open, e.state, e.error)
                for _, e in sorted(self._entries.items())]

    async def settled(self) -> None:
        """Return once every change handed to ``update`` so far has been acted on (loaded or failed)."""
        while self._busy or self._changed.is_set():
            await self._quiet.wait()

    # ------------------------------------------------------------ loading

    async def run(self) -> None:
        """Keep the loaded plugins as the view wants them, for the waypoint's lifetime."""
        async with trio.open_nursery() as nursery:
            try:
                while True:
                    self._busy, self._changed = True, trio.Event()
                    await self._reconcile(nursery)
                    self._busy = False
                    quiet, self._quiet = self._quiet, trio.Event()
                    quiet.set()
                    retry = min((e.failed_at + WASM_LOAD_RETRY_INTERVAL for e in self._entries.values()
                                 if e.state == "failed"), default=math.inf)
                    with trio.move_on_at(retry):
                        await self._changed.wait()
            finally:
                for entry in self._entries.values():
                    _close(entry)

    async def _reconcile(self, nursery: trio.Nursery) -> None:
        wanted = dict(self._wanted)
        for key in [key for key in self._entries if key not in wanted]:
            entry = self._entries.pop(key)
            log.info("wasm plugin %s removed", key)
            self._publish()
            _close(entry)  # requests that hold it keep their own streams to their end
        for key, resource in wanted.items():
            identity = resource.SerializeToString(deterministic=True)
            held = self._entries.get(key)
            if held is not None and held.identity == identity and (
                    held.state == "loaded" or trio.current_time() < held.failed_at + WASM_LOAD_RETRY_INTERVAL):
                continue
            if held is None:
                # Until its first load ends it fails closed (or is skipped, FAIL_OPEN): never an unfiltered
                # request in place of a plugin that is meant to run.
                self._entries[key] = _Entry(resource, identity, _applied(resource, _Failed("still loading")),
                                            "loading")
                self._publish()
            await self._load_one(nursery, key, resource, identity, held)

    async def _load_one(self, nursery: trio.Nursery, key: str, resource: wp.WasmPlugin, identity: bytes,
                        previous: _Entry | None) -> None:
        try:
            module = await fetch_module(resource.url, resource.sha256, self._cache)
            log.info("wasm plugin %s: loading %s (sha256 %s)", key, resource.url, sha256_hex(module)[:12])
            plugin = await trio.to_thread.run_sync(self._load, resource, module)
        except (FetchError, Exception) as exc:  # a plugin that cannot load must never stop the waypoint
            reason = str(exc) or type(exc).__name__
            log.warning("wasm plugin %s could not be loaded: %s", key, reason)
            if previous is not None and previous.identity == identity and previous.state == "loaded":
                return  # a retry of what already runs: keep it
            previous = previous or self._entries.get(key)
            failed = _Entry(resource, identity, _applied(resource, _Failed(reason)), "failed", reason,
                            trio.current_time())
            self._entries[key] = failed
            self._publish()
            if previous is not None:
                _close(previous)
            return
        entry = _Entry(resource, identity, _applied(resource, plugin), "loaded")
        runner = getattr(plugin, "run", None)
        if runner is not None:
            entry.cancel = trio.CancelScope()
            nursery.start_soon(_run_plugin, key, runner, entry.cancel)
        self._entries[key] = entry
        self.loads += 1
        self._publish()
        if previous is not None:
            _close(previous)

    def _publish(self) -> None:
        self._table = tuple((e.resource, e.applied) for e in self._entries.values())
        self._chains = {}


async def _run_plugin(key: str, runner: Callable[[], Awaitable[None]], scope: trio.CancelScope) -> None:
    with scope:
        try:
            await runner()
        except Exception:
            log.exception("wasm plugin %s: its timer/callout task failed", key)


def _close(entry: _Entry) -> None:
    if entry.cancel is not None:
        entry.cancel.cancel()
    try:
        entry.applied.plugin.close()
    except Exception:
        log.exception("wasm plugin %s/%s: closing failed", entry.resource.namespace, entry.resource.name)



def plugin_config(resource: wp.WasmPlugin, module: bytes, environ: Mapping[str, str]) -> PluginConfig:
    """What the host loads for ``resource``: its module and configuration, and the VM's environment
    (``vmConfig.env``: the INLINE values, and the HOST names copied from the waypoint's own ``environ``
    where it has them, as Envoy reads HOST)."""
    env = dict(resource.vm_env)
    env.update({name: environ[name] for name in resource.vm_host_env if name in environ})
    return PluginConfig(name=f"{resource.namespace}/{resource.name}", root_id=resource.plugin_name, vm_id="",
                        module=module, sha256=sha256_hex(module), configuration=bytes(resource.plugin_config),
                        vm_env=env, fail_open=resource.fail_open)
