"""One Proxy-Wasm VM: a module instantiated in its own wasmtime store, with its imports linked and a sandbox.

How it works: ``compile_module`` compiles a module once per process (one ``Engine`` with fuel metering,
modules cached by the sha256 of their bytes). ``Vm`` instantiates it in a new store with a memory limit,
linking every import the module declares: the host functions it is given (``env.proxy_*``, WASI under
``wasi_snapshot_preview1`` and ``wasi_unstable``) where the import's type is the one we implement, and a
stub of the import's own type otherwise (UNIMPLEMENTED when its result is one i32, a trap when called
otherwise), so that a module importing more than it calls still loads. It then (``start``) runs ``_initialize`` (or
``_start``) and finds the allocator (``proxy_on_memory_allocate``, else ``malloc``).

``call`` refills the fuel before every callback from the host (not before the guest's own nested calls
from a host function, which spend the callback's fuel); a trap or an exhausted fuel raises ``PluginTrap``
and taints the VM, which refuses every later call: its state may be half-written, so the owner builds a
new one. All ctypes work is in ``raw``.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import wasmtime

from waypoint.limits import WASM_CALLBACK_FUEL, WASM_MEMORY_LIMIT_BYTES, WASM_MODULE_CACHE_ENTRIES, WASM_START_FUEL
from waypoint.wasm import raw
from waypoint.wasm.abi import AbiVersion, Status, detect_version, expected_arity
from waypoint.wasm.types import PluginLoadError, PluginTrap

WASI_MODULES = ("wasi_snapshot_preview1", "wasi_unstable")


@dataclass(frozen=True)
class HostImport:
    """A host function: its wasm signature and the Python function (ints in, an int or None out)."""

    params: tuple[str, ...]
    results: tuple[str, ...]
    fn: Callable[..., int | None]
    # What the guest gets instead of a result when ``fn`` raises one of these (see raw.RawLinker.define).
    answers: tuple[tuple[type[Exception], int], ...] = ()


_engine: wasmtime.Engine | None = None
_engine_lock = threading.Lock()
_modules: OrderedDict[str, wasmtime.Module] = OrderedDict()


def engine() -> wasmtime.Engine:
    """The process's one engine (fuel metering on, memories that never move): its modules run in any of its stores."""
    global _engine
    with _engine_lock:
        if _engine is None:
            config = wasmtime.Config()
            config.consume_fuel = True
            # A linear memory never moves when it grows (it is reserved whole up front, virtual memory
            # only): raw.Memory relies on it to keep the base pointer between accesses.
            config.memory_may_move = False
            _engine = wasmtime.Engine(config)
        return _engine


def compile_module(code: bytes) -> wasmtime.Module:
    """Compile ``code`` (binary wasm), or find it compiled: cached by sha256, least recently used evicted."""
    digest = hashlib.sha256(code).hexdigest()
    with _engine_lock:
        cached = _modules.get(digest)
        if cached is not None:
            _modules.move_to_end(digest)
            return cached
    try:
        module = wasmtime.Module(engine(), code)
    except wasmtime.WasmtimeError as error:
        raise PluginLoadError(f"the module does not compile: {error}") from None
    with _engine_lock:
        _modules[digest] = module
        while len(_modules) > WASM_MODULE_CACHE_ENTRIES:
            _modules.popitem(last=False)
    return module


def cached_modules() -> int:
    return len(_modules)


def _stub(module: str, name: str, results: Sequence[str]) -> Callable[..., int | None]:
    if tuple(results) == (raw.I32,):
        return lambda *args: int(Status.UNIMPLEMENTED)

    def trap(*args: int) -> None:
        raise raw.HostTrap(f"{module}.{name} is not implemented by this host")
    return trap


class Vm:
    """A module instance in its own store, its imports linked, its callbacks called under fuel."""

    def __init__(self, module: wasmtime.Module, imports: Mapping[tuple[str, str], HostImport], *,
                 memory_limit: int = WASM_MEMORY_LIMIT_BYTES, start_fuel: int = WASM_START_FUEL) -> None:
        self.tainted: str | None = None
        self.store = wasmtime.Store(engine())
        self.store.set_limits(memory_size=memory_limit)
        self.context = raw.Context(self.store)
        self.linker = raw.RawLinker(engine(), self.context)
        self.unimplemented: list[str] = []      # imports linked to a stub, for the load log
        self._link(module, imports)
        raw.set_fuel(self.context, start_fuel)
        try:
            instance = self.linker.instantiate(module)
        except raw.GuestTrap as trap:
            raise PluginLoadError(trap.reason) from None
        exports = instance.exports(self.store)
        self.funcs: dict[str, raw.GuestFunc] = {}
        arities: dict[str, int] = {}
        self._memory: raw.Memory | None = None
        for name, item in exports.items():
            if isinstance(item, wasmtime.Func):
                guest = raw.GuestFunc(self.context, name, item)
                self.funcs[name] = guest
                arities[name] = len(guest.params)
            elif isinstance(item, wasmtime.Memory) and name == "memory":
                self._memory = raw.Memory(self.context, item)
        try:
            self.version = detect_version(arities)
        except ValueError as error:
            raise PluginLoadError(str(error)) from None
        for name, arity in arities.items():
            expected = expected_arity(name, self.version)
            if expected is not None and expected != arity:
                raise PluginLoadError(f"{name} takes {arity} parameters; ABI {self.version.value} says {expected}")
        self._allocator = self.funcs.get("proxy_on_memory_allocate") or self.funcs.get("malloc")

    def start(self, fuel: int = WASM_START_FUEL) -> None:
        """Run the module's start-up entry: ``_initialize`` (a reactor), else ``_start`` (a command)."""
        start = self.funcs.get("_initialize") or self.funcs.get("_start")
        if start is None:
            return
        try:
            self.call(start.name, fuel=fuel)
        except PluginTrap as trap:
            if "proc_exit(0)" not in trap.reason:   # a command's _start may exit 0 when its main returns
                raise PluginLoadError(f"{start.name} failed: {trap.reason}") from None
            self.tainted = None

    def _link(self, module: wasmtime.Module, imports: Mapping[tuple[str, str], HostImport]) -> None:
        for item in module.imports:
            kind = item.type
            name = item.name or ""
            if not isinstance(kind, wasmtime.FuncType):
                raise PluginLoadError(f"the module imports {item.module}.{name}, which is not a function")
            params, results = raw.func_signature(kind)
            host = imports.get((item.module, name))
            if host is not None and (host.params, host.results) == (params, results):
                self.linker.define(item.module, name, params, results, host.fn, host.answers)
            else:
                self.unimplemented.append(f"{item.module}.{name}")
                self.linker.define(item.module, name, params, results, _stub(item.module, name, results))

    @property
    def abi(self) -> AbiVersion:
        return self.version

    @property
    def memory(self) -> raw.Memory:
        if self._memory is None:
            raise raw.OutOfBounds("the module exports no memory")
        return self._memory

    def has(self, name: str) -> bool:
        return name in self.funcs

    def call(self, name: str, *args: int, fuel: int = WASM_CALLBACK_FUEL) -> int | None:
        """Call the guest's ``name`` with fresh fuel; None when it has no such export (or no result).

        Raises ``PluginTrap`` (and taints the VM) on a trap, fuel exhaustion or a host function's bug.
        """
        if self.tainted is not None:
            raise PluginTrap(f"the VM is tainted: {self.tainted}")
        func = self.funcs.get(name)
        if func is None:
            return None
        try:
            return func.call(args, fuel)     # the fuel refill and the call in one frame: it runs per callback
        except raw.GuestTrap as trap:
            reason = "out of fuel (endless loop?)" if trap.out_of_fuel else trap.reason
            if self.linker.host_error is not None:
                reason = f"host function error: {self.linker.host_error!r}"
            self.tainted = reason
            raise PluginTrap(reason) from None

    def allocate(self, size: int) -> int:
        """Memory in the guest for an answer of ``size`` bytes, from its own allocator (within a host call).

        Raises ``OutOfBounds`` when the guest has no allocator or answers a pointer that cannot hold it,
        and ``raw.HostTrap`` when the allocator itself traps (the guest is then tainted anyway).
        """
        if self._allocator is None:
            raise raw.OutOfBounds("the module exports neither proxy_on_memory_allocate nor malloc")
        try:
            ptr = self._allocator(size)
        except raw.GuestTrap as trap:
            raise raw.HostTrap(f"the guest's allocator trapped: {trap.reason}") from None
        if ptr is None or (ptr == 0 and size > 0):
            raise raw.OutOfBounds(f"the guest's allocator could not give {size} bytes")
        ptr &= 0xFFFFFFFF
        self.memory.check(ptr, size)
        return ptr

    def give(self, data: bytes, ptr_ptr: int, size_ptr: int) -> None:
        """Copy ``data`` into guest memory it allocates and write the pointer and size where it asked."""
        memory = self.memory
        memory.check(ptr_ptr, 4)     # both checked before anything is allocated
        memory.check(size_ptr, 4)
        if data:
            ptr = self.allocate(len(data))
            memory.write(ptr, data)
        else:
            ptr = 0
        memory.write_u32(ptr_ptr, ptr)
        memory.write_u32(size_ptr, len(data))
