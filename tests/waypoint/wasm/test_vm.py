"""The VM: linking (WASI under both names, stubs for unknown imports), start-up entries, the allocator
the host uses, load-time refusals and the module cache."""

from __future__ import annotations

import logging
import struct

import pytest
import wasmtime

from waypoint.wasm import raw, vm as vm_module
from waypoint.wasm.abi import Status
from waypoint.wasm.plugin import LoadedPlugin
from waypoint.wasm.types import PluginLoadError, PluginTrap, RequestInfo

from . import wat
from .plugins import ROOT, imports


async def no_calls(*args: object) -> None:
    raise AssertionError


def load(module: bytes, **config: object) -> LoadedPlugin:
    return LoadedPlugin.load(wat.config(module, **config), no_calls, wat.LOG)


def wasi(module_name: str) -> bytes:
    """Exports w_* calling WASI functions imported from ``module_name``."""
    sigs = {"fd_write": "i32 i32 i32 i32", "environ_sizes_get": "i32 i32", "environ_get": "i32 i32",
            "clock_time_get": "i32 i64 i32", "random_get": "i32 i32", "proc_exit": "i32", "fd_close": "i32",
            "fd_seek": "i32 i64 i32 i32", "fd_fdstat_get": "i32 i32", "args_sizes_get": "i32 i32",
            "args_get": "i32 i32", "sched_yield": ""}
    lines = []
    for name, params in sigs.items():
        result = "" if name == "proc_exit" else "(result i32)"
        gets = " ".join(f"(local.get {i})" for i in range(len(params.split())))
        lines.append(f'(import "{module_name}" "{name}" (func ${name} (param {params}) {result}))')
        lines.append(f'(func (export "w_{name}") (param {params}) {result} (call ${name} {gets}))')
    return wat.plugin("\n".join(lines) + ROOT)


@pytest.mark.parametrize("module_name", ["wasi_snapshot_preview1", "wasi_unstable"])
def test_wasi_under_both_names(module_name: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=wat.LOG.name)
    plugin = load(wasi(module_name), vm_env={"MODE": "test", "EMPTY": ""})
    vm = plugin.vm
    assert vm.unimplemented == []
    memory = vm.memory
    memory.write(1024, b"hello ")
    memory.write(1030, b"world\npartial")
    memory.write(2000, struct.pack("<IIII", 1024, 6, 1030, 13))        # two iovecs
    assert vm.call("w_fd_write", 1, 2000, 2, 2100) == 0
    assert memory.read_u32(2100) == 19
    assert [r.getMessage() for r in caplog.records] == ["hello world"]   # the unfinished line waits
    assert vm.call("w_fd_write", 7, 2000, 2, 2100) == 8                 # EBADF
    assert vm.call("w_fd_write", 1, wat.BAD, 2, 2100) == 21             # EFAULT
    memory.write(2000, struct.pack("<II", wat.BAD, 4))
    assert vm.call("w_fd_write", 2, 2000, 1, 2100) == 21

    assert vm.call("w_environ_sizes_get", 2200, 2204) == 0
    assert (memory.read_u32(2200), memory.read_u32(2204)) == (2, len(b"MODE=test\0EMPTY=\0"))
    assert vm.call("w_environ_get", 2300, 2400) == 0
    assert memory.read(memory.read_u32(2300), 10) == b"MODE=test\0"
    assert memory.read(memory.read_u32(2304), 7) == b"EMPTY=\0"
    assert vm.call("w_environ_get", wat.BAD, 2400) == 21
    assert vm.call("w_args_sizes_get", 2200, 2204) == 0 and memory.read_u32(2200) == 0
    assert vm.call("w_args_get", 2200, 2204) == 0

    assert vm.call("w_clock_time_get", 0, 1, 2500) == 0
    assert struct.unpack("<Q", memory.read(2500, 8))[0] > 1_600_000_000 * 10**9
    assert vm.call("w_clock_time_get", 99, 1, 2500) == 28
    assert vm.call("w_clock_time_get", 1, 1, wat.BAD) == 21
    memory.write(2600, bytes(32))
    assert vm.call("w_random_get", 2600, 32) == 0 and memory.read(2600, 32) != bytes(32)
    assert vm.call("w_random_get", wat.BAD, 32) == 21
    assert vm.call("w_fd_fdstat_get", 1, 2700) == 0 and memory.read(2700, 1) == b"\x02"
    assert vm.call("w_fd_fdstat_get", 5, 2700) == 8
    assert vm.call("w_fd_close", 1) == 0
    assert vm.call("w_fd_seek", 1, 0, 0, 2800) == 70
    assert vm.call("w_sched_yield") == 0
    with pytest.raises(PluginTrap, match=r"proc_exit\(3\)"):
        vm.call("w_proc_exit", 3)
    assert vm.tainted is not None


def test_unknown_imports_load_and_answer_unimplemented_or_trap() -> None:
    module = wat.plugin("""
(import "env" "proxy_call_foreign_function" (func $foreign (param i32 i32 i32 i32 i32 i32) (result i32)))
(import "env" "proxy_something_new" (func $void (param i32)))
(import "env" "proxy_log" (func $bad_log (param i32) (result i32)))
(func (export "call_foreign") (result i32)
  (call $foreign (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)))
(func (export "call_log") (result i32) (call $bad_log (i32.const 0)))
(func (export "call_void") (call $void (i32.const 1)))
""" + ROOT)
    vm = load(module).vm
    assert sorted(vm.unimplemented) == ["env.proxy_call_foreign_function", "env.proxy_log",
                                        "env.proxy_something_new"]   # proxy_log: not the type we implement
    assert vm.call("call_foreign") == Status.UNIMPLEMENTED
    assert vm.call("call_log") == Status.UNIMPLEMENTED
    with pytest.raises(PluginTrap, match="proxy_something_new is not implemented"):
        vm.call("call_void")


def test_initialize_is_preferred_and_start_is_used_without_it() -> None:
    for start in ("_initialize", "_start"):
        module = wat.plugin(ROOT + '(func (export "get_started") (result i32) (global.get $started))', start=start)
        assert load(module).vm.call("get_started") == 1
    both = wat.plugin(ROOT + """
(func (export "_start") (global.set $started (i32.const 2)))
(func (export "get_started") (result i32) (global.get $started))""", start="_initialize")
    assert load(both).vm.call("get_started") == 1


def test_a_command_exiting_zero_loads_and_a_failing_start_does_not() -> None:
    exits = """(import "wasi_unstable" "proc_exit" (func $exit (param i32)))
(func (export "_start") (call $exit (i32.const {code})))""" + ROOT
    assert load(wat.plugin(exits.format(code=0), start=None)).vm.tainted is None
    with pytest.raises(PluginLoadError, match=r"proc_exit\(1\)"):
        load(wat.plugin(exits.format(code=1), start=None))


@pytest.mark.parametrize("allocator", ["proxy_on_memory_allocate", "malloc"])
def test_host_answers_go_to_the_module_s_allocator(allocator: str) -> None:
    plugin = load(wat.plugin(imports("proxy_get_property") + ROOT + wat.strings(b"plugin_vm_id") + """
(func (export "get") (result i32)
  (call $proxy_get_property (i32.const 1024) (i32.const 12) (i32.const 2000) (i32.const 2004)))""",
        allocator=allocator))
    assert plugin.vm.call("get") == Status.OK
    memory = plugin.vm.memory
    assert memory.read_u32(2000) == wat.HEAP and memory.read(wat.HEAP, memory.read_u32(2004)) == b"vm"


def test_no_allocator_answers_invalid_memory_access() -> None:
    module = wat.plugin(imports("proxy_get_property") + ROOT + wat.strings(b"plugin_vm_id") + """
(func (export "get") (result i32)
  (call $proxy_get_property (i32.const 1024) (i32.const 12) (i32.const 2000) (i32.const 2004)))""",
                        allocator="not_an_allocator")
    assert load(module).vm.call("get") == Status.INVALID_MEMORY_ACCESS


@pytest.mark.parametrize(("text", "error"), [
    (ROOT + '(func (export "proxy_on_request_headers") (param i32 i32 i32 i32) (result i32) (i32.const 0))',
     "takes 4 parameters"),
    ('(func (export "hello"))', "not a Proxy-Wasm module"),
    ('(import "env" "table" (table 1 funcref))' + ROOT, "not a function"),
])
def test_modules_refused_at_load(text: str, error: str) -> None:
    marker = None if "hello" in text else "proxy_abi_version_0_2_1"
    with pytest.raises(PluginLoadError, match=error):
        load(wat.plugin(text, marker=marker))


def test_garbage_is_a_load_error_and_modules_are_compiled_once() -> None:
    with pytest.raises(PluginLoadError, match="does not compile"):
        load(b"\0asm garbage")
    module = wat.plugin(ROOT + '(func (export "unique_to_the_cache_test"))')
    assert vm_module.compile_module(module) is vm_module.compile_module(module)


async def test_a_stream_on_a_vm_without_context_create_still_works() -> None:
    stream = load(wat.plugin('(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) '
                             '(i32.const 0))')).stream(RequestInfo())
    assert stream.failure is None


def test_memory_grown_by_the_guest_is_seen_and_still_bounded(caplog: pytest.LogCaptureFixture) -> None:
    # raw.Memory keeps the size it read last: an access past it must read the size again, both between
    # calls and inside one host call made right after the guest grew its memory, and still refuse what lies
    # past the new end.
    plugin = load(wat.plugin(imports("proxy_log") + ROOT + """
(func (export "grow") (result i32) (memory.grow (i32.const 1)))
(func (export "grow_and_log") (param $at i32) (result i32)
  (drop (memory.grow (i32.const 1)))
  (i32.store8 (local.get $at) (i32.const 65))
  (call $proxy_log (i32.const 2) (local.get $at) (i32.const 1)))
(func (export "log") (param $at i32) (param $size i32) (result i32)
  (call $proxy_log (i32.const 2) (local.get $at) (local.get $size)))""", pages=2))
    vm = plugin.vm
    memory = vm.memory
    old_end = 2 * 65536
    assert memory.size() == old_end
    with pytest.raises(raw.OutOfBounds):
        memory.write(old_end, b"x")
    assert vm.call("grow") == 2
    memory.write(old_end, b"x")                      # the new page, with no size() asked in between
    assert memory.read(old_end, 1) == b"x"
    with pytest.raises(raw.OutOfBounds):
        memory.read(old_end + 65536 - 1, 2)          # one byte past the new end
    caplog.set_level(logging.INFO, logger=wat.LOG.name)
    assert vm.call("grow_and_log", old_end + 65536 + 10) == Status.OK   # in the page grown in this call
    assert [r.getMessage() for r in caplog.records][-1].endswith(": A")
    end = memory.size()
    assert end == old_end + 2 * 65536
    assert vm.call("log", end - 1, 1) == Status.OK
    assert vm.call("log", end - 1, 2) == Status.INVALID_MEMORY_ACCESS
    assert vm.call("log", wat.BAD, 1) == Status.INVALID_MEMORY_ACCESS


def test_an_export_re_entered_from_a_host_function_answers_each_call_its_own() -> None:
    # GuestFunc reuses one argument array per export: a call of the same export from inside a host
    # function (as the allocator may be) must get its own, or the inner answer would overwrite the outer's.
    module = vm_module.compile_module(bytes(wasmtime.wat2wasm("""(module
  (import "env" "again" (func $again (param i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "sum") (param $n i32) (result i32)
    (if (result i32) (i32.eqz (local.get $n)) (then (i32.const 0))
      (else (i32.add (local.get $n) (call $again (local.get $n)))))))""")))
    answers: list[int] = []

    def again(n: int) -> int:
        answer = vm.funcs["sum"](n - 1)
        assert answer is not None
        answers.append(answer)
        return answer

    vm = vm_module.Vm(module, {("env", "again"): vm_module.HostImport(("i32",), ("i32",), again)})
    assert vm.call("sum", 10) == 55
    assert answers == [n * (n + 1) // 2 for n in range(10)]
    assert vm.call("sum", 3) == 6       # and the export's own array is usable again afterwards
