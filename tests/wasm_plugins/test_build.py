"""The test plugins build (`make wasm-plugins`), load in wasmtime, and have the shape the host relies on.

A broken SDK install, a compiler flag gone wrong or an edited source that no longer exports a callback fails
here rather than as a puzzling host failure in the lab. wasmtime runs in a subprocess (inspect_modules.py),
so this interpreter never imports it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.wasm_plugins import BEHAVIOURS, BUILD_DIR, PLUGINS, REPO, SDKS, WAT_MODULES, plugin_path
from tests.wasm_plugins.inspect_modules import has_start_section

ABI_OF_SDK = {"gcore": "proxy_abi_version_0_2_1", "solo": "proxy_abi_version_0_2_0"}
ABI_OF_WAT = {
    "tinygo-shape": "proxy_abi_version_0_2_1",
    "emscripten-shape": "proxy_abi_version_0_2_0",
    "abi-0-1-0": "proxy_abi_version_0_1_0",
}
# The host's lifecycle calls these on every plugin (ABI 0.1.0 and 0.2.x alike).
LIFECYCLE = ("proxy_on_context_create", "proxy_on_vm_start", "proxy_on_configure", "proxy_on_done",
             "proxy_on_log", "proxy_on_delete")
# Where ABI 0.1.0 and 0.2.x differ: the header callbacks gained end_of_stream in 0.2.0.
HEADER_CALLBACK_PARAMS = {"proxy_abi_version_0_1_0": 2, "proxy_abi_version_0_2_0": 3, "proxy_abi_version_0_2_1": 3}
# The host functions each behaviour needs, beyond what every SDK build imports.
BEHAVIOUR_IMPORTS = {
    "add-header": {"proxy_add_header_map_value", "proxy_get_property", "proxy_get_buffer_bytes"},
    "deny-without-header": {"proxy_get_header_map_value", "proxy_send_local_response", "proxy_get_buffer_bytes"},
    "properties-metric": {"proxy_get_property", "proxy_define_metric", "proxy_increment_metric",
                          "proxy_add_header_map_value"},
    "http-call": {"proxy_http_call", "proxy_get_header_map_value", "proxy_continue_stream",
                  "proxy_send_local_response", "proxy_get_buffer_bytes"},
    "endless-loop": set(),
    "unbounded-alloc": set(),
    "trap": set(),
}
KNOWN_IMPORT_MODULES = {"env", "wasi_snapshot_preview1", "wasi_unstable"}


@pytest.fixture(scope="module")
def modules() -> dict[str, dict[str, Any]]:
    for name in PLUGINS:
        plugin_path(name)
    done = subprocess.run(
        [sys.executable, "-m", "tests.wasm_plugins.inspect_modules"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, dict[str, Any]] = json.loads(done.stdout)
    return report


def _exports(info: dict[str, Any]) -> dict[str, list[Any]]:
    return {name: rest for name, *rest in info["exports"]}


def _abi(info: dict[str, Any]) -> str:
    markers = [name for name in _exports(info) if name.startswith("proxy_abi_version_")]
    assert len(markers) == 1, markers
    return markers[0]


def test_every_plugin_is_built() -> None:
    assert len(PLUGINS) == len(BEHAVIOURS) * len(SDKS) + len(WAT_MODULES) == len(set(PLUGINS))
    for name in PLUGINS:
        assert plugin_path(name) == BUILD_DIR / f"{name}.wasm"
        assert plugin_path(name).stat().st_size > 0


def test_an_unknown_plugin_is_refused() -> None:
    with pytest.raises(KeyError, match="no test plugin"):
        plugin_path("add-header-rust")


@pytest.mark.parametrize("name", PLUGINS)
def test_the_abi_marker_and_callbacks_the_host_needs(modules: dict[str, dict[str, Any]], name: str) -> None:
    info = modules[name]
    exports = _exports(info)
    sdk = name.rsplit("-", 1)[1]
    abi = _abi(info)
    assert abi == (ABI_OF_SDK[sdk] if sdk in ABI_OF_SDK else ABI_OF_WAT[name])
    assert exports["memory"] == ["memory"]
    for callback in (*LIFECYCLE, "proxy_on_request_headers", "proxy_on_response_headers"):
        assert exports.get(callback, [None])[0] == "func", f"{name} does not export {callback}"
    for callback in ("proxy_on_request_headers", "proxy_on_response_headers"):
        kind, params, results = exports[callback]
        assert (len(params), results) == (HEADER_CALLBACK_PARAMS[abi], ["i32"]), (callback, params, results)
    # The host's answers need memory from the plugin: 0.2.x SDKs export malloc, 0.1.0 the ABI's own name.
    allocator = "proxy_on_memory_allocate" if abi == "proxy_abi_version_0_1_0" else "malloc"
    assert exports[allocator] == ["func", ["i32"], ["i32"]]


@pytest.mark.parametrize("name", PLUGINS)
def test_the_start_up_entry(modules: dict[str, dict[str, Any]], name: str) -> None:
    exports = _exports(modules[name])
    entries = {e for e in ("_start", "_initialize") if e in exports}
    if name.endswith("-solo"):
        # AssemblyScript 0.14 runs its top-level code (registerRootContext) from the module's start
        # section, at instantiation: there is nothing to call.
        assert not entries and modules[name]["start_section"]
    elif name.endswith("-gcore") or name == "tinygo-shape":
        # The WASI shim exports the top level as `_start` (a command); calling it registers the root context.
        assert entries == {"_start"} and not modules[name]["start_section"]
    else:
        assert entries == {"_initialize"}
    for entry in entries:
        assert exports[entry] == ["func", [], []]


@pytest.mark.parametrize("name", PLUGINS)
def test_imports_come_from_the_modules_a_host_provides(modules: dict[str, dict[str, Any]], name: str) -> None:
    imports = modules[name]["imports"]
    assert {module for module, *_ in imports} <= KNOWN_IMPORT_MODULES
    assert all(kind == "func" for _, _, kind, *_ in imports)
    env = {field for module, field, *_ in imports if module == "env"}
    behaviour, _, sdk = name.rpartition("-")
    if sdk in SDKS:
        assert BEHAVIOUR_IMPORTS[behaviour] <= env, BEHAVIOUR_IMPORTS[behaviour] - env
        # Each SDK reaches WASI its own way: the gcore SDK logs through fd_write (not proxy_log), the solo SDK
        # exits through wasi_unstable.proc_exit on abort.
        wasi = {(module, field) for module, field, *_ in imports if module != "env"}
        expected = {("wasi_snapshot_preview1", "fd_write")} if sdk == "gcore" else {("wasi_unstable", "proc_exit")}
        assert wasi == expected


def test_the_wat_shapes_import_what_their_sdks_do(modules: dict[str, dict[str, Any]]) -> None:
    def modules_of(name: str) -> set[str]:
        return {module for module, *_ in modules[name]["imports"]}

    assert modules_of("tinygo-shape") == {"wasi_unstable", "wasi_snapshot_preview1", "env"}
    emscripten = {(module, field) for module, field, *_ in modules["emscripten-shape"]["imports"]}
    assert ("env", "emscripten_notify_memory_growth") in emscripten
    assert ("wasi_snapshot_preview1", "fd_seek") in emscripten
    abi_010 = {field for _, field, *_ in modules["abi-0-1-0"]["imports"]}
    assert "proxy_get_configuration" in abi_010


def test_the_http_call_plugins_take_the_response_callback(modules: dict[str, dict[str, Any]]) -> None:
    for sdk in SDKS:
        kind, params, results = _exports(modules[f"http-call-{sdk}"])["proxy_on_http_call_response"]
        assert (len(params), results) == (5, [])


def test_make_is_a_no_op_when_up_to_date() -> None:
    plugin_path("add-header-gcore")
    done = subprocess.run(["make", "-q", "wasm-plugin-files"], cwd=REPO, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, "make -q says a plugin is out of date right after a build"


def test_the_start_section_reader() -> None:
    header = b"\0asm\x01\0\0\0"
    assert has_start_section(header + bytes([8, 1, 0]))
    assert not has_start_section(header + bytes([1, 2, 0x60, 0]))
    with pytest.raises(ValueError):
        has_start_section(b"not wasm")
