"""WAT plugins for the host's tests: a bump allocator, the ABI marker, and whatever callbacks a test writes.

``plugin(body)`` wraps WAT text (imports first, then functions) into a module with memory, a bump
allocator exported as ``proxy_on_memory_allocate`` (or ``malloc``), the ABI marker and ``_initialize``.
``probe()`` builds a module that re-exports every host function as ``t_<name>`` so a test can call each
one with the arguments it chooses (good and bad pointers) through the real wasm boundary.
"""

from __future__ import annotations

import hashlib
import logging

import wasmtime

from waypoint.wasm.types import PluginConfig

HEAP = 65536          # the bump allocator starts here; tests use memory below it as scratch
SCRATCH = 1024
BAD = 0xFFFFFF00      # a pointer far outside any test module's memory
LOG = logging.getLogger("ambient.waypoint.wasm.test")

# The host functions' signatures (params; every one answers an i32 status), for the probe module.
HOST_FUNCTIONS = {
    "proxy_log": "i32 i32 i32", "proxy_get_log_level": "i32", "proxy_get_current_time_nanoseconds": "i32",
    "proxy_set_tick_period_milliseconds": "i32", "proxy_set_effective_context": "i32", "proxy_done": "",
    "proxy_get_configuration": "i32 i32", "proxy_get_buffer_bytes": "i32 i32 i32 i32 i32",
    "proxy_get_buffer_status": "i32 i32 i32", "proxy_set_buffer_bytes": "i32 i32 i32 i32 i32",
    "proxy_get_header_map_pairs": "i32 i32 i32", "proxy_set_header_map_pairs": "i32 i32 i32",
    "proxy_get_header_map_value": "i32 i32 i32 i32 i32", "proxy_add_header_map_value": "i32 i32 i32 i32 i32",
    "proxy_replace_header_map_value": "i32 i32 i32 i32 i32", "proxy_remove_header_map_value": "i32 i32 i32",
    "proxy_get_header_map_size": "i32 i32", "proxy_get_property": "i32 i32 i32 i32",
    "proxy_set_property": "i32 i32 i32 i32", "proxy_send_local_response": " ".join(["i32"] * 8),
    "proxy_continue_stream": "i32", "proxy_close_stream": "i32", "proxy_continue_request": "",
    "proxy_continue_response": "", "proxy_http_call": " ".join(["i32"] * 10),
    "proxy_dispatch_http_call": " ".join(["i32"] * 10), "proxy_define_metric": "i32 i32 i32 i32",
    "proxy_increment_metric": "i32 i64", "proxy_record_metric": "i32 i64", "proxy_get_metric": "i32 i32",
    "proxy_get_shared_data": "i32 i32 i32 i32 i32", "proxy_set_shared_data": "i32 i32 i32 i32 i32",
    "proxy_register_shared_queue": "i32 i32 i32", "proxy_resolve_shared_queue": "i32 i32 i32 i32 i32",
    "proxy_enqueue_shared_queue": "i32 i32 i32", "proxy_dequeue_shared_queue": "i32 i32 i32",
}


def plugin(body: str, *, marker: str | None = "proxy_abi_version_0_2_1", allocator: str = "proxy_on_memory_allocate",
           start: str | None = "_initialize", pages: int = 2, max_pages: str = "") -> bytes:
    """A module: ``body``'s imports, memory, a bump allocator, the marker, a start-up entry, ``body``."""
    imports = "\n".join(line for line in body.splitlines() if line.strip().startswith("(import"))
    rest = "\n".join(line for line in body.splitlines() if not line.strip().startswith("(import"))
    text = f"""(module
  {imports}
  (memory (export "memory") {pages} {max_pages})
  (global $heap (mut i32) (i32.const {HEAP}))
  (global $started (export "started") (mut i32) (i32.const 0))
  (func $alloc (export "{allocator}") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (i32.and (i32.add (local.get $size) (i32.const 7))
                                                           (i32.const -8))))
    (local.get $p))
  {f'(func (export "{marker}"))' if marker else ""}
  {f'(func (export "{start}") (global.set $started (i32.const 1)))' if start else ""}
  {rest}
)"""
    return bytes(wasmtime.wat2wasm(text))


def probe(extra: str = "") -> bytes:
    """A plugin exporting ``t_<name>`` for every host function, forwarding its arguments."""
    lines = []
    for name, params in HOST_FUNCTIONS.items():
        kinds = params.split()
        lines.append(f'(import "env" "{name}" (func ${name} (param {params}) (result i32)))')
        gets = " ".join(f"(local.get {i})" for i in range(len(kinds)))
        lines.append(f'(func (export "t_{name}") (param {params}) (result i32) (call ${name} {gets}))')
    return plugin("\n".join(lines) + "\n" + extra)


def config(module: bytes, **kwargs: object) -> PluginConfig:
    fields: dict[str, object] = {"name": "ns/test", "root_id": "root", "vm_id": "vm", "module": module,
                                 "sha256": hashlib.sha256(module).hexdigest()}
    fields.update(kwargs)
    return PluginConfig(**fields)  # type: ignore[arg-type]


def strings(*values: bytes) -> str:
    """WAT data segments placing ``values`` one after another from SCRATCH; returns the text."""
    out, at = [], SCRATCH
    for value in values:
        escaped = "".join(f"\\{b:02x}" for b in value)
        out.append(f'(data (i32.const {at}) "{escaped}")')
        at += len(value)
    return "\n".join(out)
