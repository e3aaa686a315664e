"""Proxy-Wasm plugins in the waypoint (issue #20): the host of the Proxy-Wasm ABI, on wasmtime.

Importing this package never imports wasmtime: it re-exports only the pure pieces (the ABI's data, the
configuration and verdict types). The engine is loaded by ``waypoint.wasm.plugin`` (``LoadedPlugin``),
which the waypoint imports only when a WasmPlugin targets it, inside the function that loads one.

Modules: ``abi`` (the ABI as data), ``types`` (what the pipeline exchanges with a plugin), ``state``
(metrics, shared data and queues), ``raw`` (the ctypes plumbing under wasmtime, the only unsafe code),
``vm`` (compile, link, sandbox), ``wasi`` and ``host`` (the imported functions), ``plugin`` (lifecycle).
"""

from waypoint.wasm.abi import AbiVersion, Status
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

__all__ = ["AbiVersion", "Continue", "Failed", "Headers", "HttpCallResult", "HttpCaller", "LocalReply",
           "PluginConfig", "PluginLoadError", "PluginTrap", "RequestInfo", "Reset", "Status", "Verdict"]
