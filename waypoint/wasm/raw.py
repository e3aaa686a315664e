"""The one place that talks to wasmtime's C API through ctypes, below its Python wrappers.

Why it exists: wasmtime's Python ``Func.__call__`` costs ~16 µs per guest call and a Python host
function built with ``wasmtime.Func`` ~8 µs per call (value boxing, a slab lookup, a Caller object);
a Proxy-Wasm request crosses the boundary 5-10 times, so the wrappers alone would cost 100 µs. The
"unchecked" entry points move raw 64-bit slots instead: ~1 µs per guest call, ~0.4 µs per host call.

The invariants this module keeps, so that nothing else has to think about them:

- Every ctypes callback object (CFUNCTYPE) handed to wasmtime stays referenced by its ``Linker``
  wrapper (``RawLinker._keep``) for as long as the linker, and every store instantiated from it, lives:
  the owner keeps the linker on the VM. A collected callback is a jump into freed memory.
- No Python exception ever unwinds into wasmtime: a host function's exception becomes a trap whose
  message names it (``HostTrap`` for a deliberate one, anything else is recorded as a host bug), and the
  guest call that caused it raises ``GuestTrap`` here.
- Guest memory is addressed through ``Memory`` only, which checks ``ptr + len <= size`` before any byte is
  touched: an out-of-bounds pointer raises ``OutOfBounds`` (the host functions turn it into
  INVALID_MEMORY_ACCESS), never a read of the waypoint's own memory. ``Memory`` keeps the base pointer
  and the size it last read rather than asking wasmtime twice per access: the engine is configured with
  ``memory_may_move = False`` (``vm.engine``), so the base never moves, and a wasm memory never shrinks, so
  the size read last is a lower bound of the true one; an access past it reads the size again before it
  is refused.
- A guest call reuses its export's argument array and trap slot, unless the export is re-entered (a
  host function that calls the same export again, e.g. the allocator): the nested call gets its own.
- The store context used for memory access and for nested guest calls is the one wasmtime handed the
  current host call (``caller`` context) while a host call runs, the store's own otherwise.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from typing import Any

import wasmtime
from wasmtime import _bindings as ffi

_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
_ALL = -1                 # ``x & -1 == x``: the mask of a signed i64 argument

# Value kinds as wasmtime names them; only i32 and i64 appear in Proxy-Wasm and WASI signatures (an f32 or
# f64 would arrive as its raw bits: only the stubs of unknown imports may have them, and they ignore them).
I32, I64, F32, F64 = "i32", "i64", "f32", "f64"


def _prototype(name: str, restype: Any, *argtypes: Any) -> Any:
    """A C entry point with plain ``void*`` arguments and an int result.

    ``dll[name]`` makes a new function object, so the bindings' own (typed) one is left as it was; with
    ``c_void_p`` everywhere a call converts nothing but ints, which is most of the saving.
    """
    function = ffi.dll[name]
    function.restype = restype
    function.argtypes = argtypes
    return function


_P, _SIZE = ctypes.c_void_p, ctypes.c_size_t
# One 64-bit view of wasmtime_val_raw's slots: the union is 16 bytes (v128), i32 and i64 live in its first 8.
_SLOT_WORDS = ctypes.sizeof(ffi.wasmtime_val_raw) // 8
_Callback = ctypes.CFUNCTYPE(_SIZE, _P, _P, ctypes.POINTER(ctypes.c_int64), _SIZE)
_call_unchecked = _prototype("wasmtime_func_call_unchecked", _P, _P, _P, _P, _SIZE, _P)
_caller_context = _prototype("wasmtime_caller_context", _P, _P)
_memory_data = _prototype("wasmtime_memory_data", _P, _P, _P)
_memory_data_size = _prototype("wasmtime_memory_data_size", _SIZE, _P, _P)
_set_fuel = _prototype("wasmtime_context_set_fuel", _P, _P, ctypes.c_uint64)
_define_unchecked = _prototype("wasmtime_linker_define_func_unchecked", _P, _P, ctypes.c_char_p, _SIZE,
                               ctypes.c_char_p, _SIZE, _P, _Callback, _P, _P)


class GuestTrap(Exception):
    """A call into the guest ended in a trap (unreachable, out of fuel, a host function's trap...)."""

    def __init__(self, reason: str, *, out_of_fuel: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.out_of_fuel = out_of_fuel


class HostTrap(Exception):
    """Raised by a host function to trap the guest on purpose (proc_exit, an unimplemented import)."""


class OutOfBounds(Exception):
    """A guest pointer and length that do not lie inside the guest's linear memory."""


def func_signature(functype: wasmtime.FuncType) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A function type as (param kinds, result kinds), e.g. (("i32", "i32"), ("i32",))."""
    return tuple(str(p) for p in functype.params), tuple(str(r) for r in functype.results)


def _functype(params: Sequence[str], results: Sequence[str]) -> wasmtime.FuncType:
    by_name = {I32: wasmtime.ValType.i32(), I64: wasmtime.ValType.i64(),
               F32: wasmtime.ValType.f32(), F64: wasmtime.ValType.f64()}
    return wasmtime.FuncType([by_name[p] for p in params], [by_name[r] for r in results])


def _trap_pointer(message: str) -> int:
    data = message.encode("utf-8", "replace")
    trap = ffi.wasmtime_trap_new(ctypes.create_string_buffer(data), len(data))
    return ctypes.cast(trap, ctypes.c_void_p).value or 0


def _error(address: int) -> wasmtime.WasmtimeError:
    return wasmtime.WasmtimeError._from_ptr(ctypes.cast(address, ctypes.POINTER(ffi.wasmtime_error_t)))


def _raise_for(name: str, error: int | None, trap: ctypes.c_void_p) -> None:
    if error:
        raise GuestTrap(f"{name}: {_cause(str(_error(error)))}")
    if trap.value:
        address, trap.value = trap.value, None    # the slot is reused by the next call: leave it NULL
        wrapped = wasmtime.Trap._from_ptr(ctypes.cast(address, ctypes.POINTER(ffi.wasm_trap_t)))
        raise GuestTrap(f"{name}: {_cause(wrapped.message)}",
                        out_of_fuel=wrapped.trap_code == wasmtime.TrapCode.OUT_OF_FUEL)


def _cause(message: str) -> str:
    """A trap's cause without wasmtime's backtrace (it reaches access logs and replies' details)."""
    _, found, cause = message.partition("Caused by:")
    return " ".join(cause.split()) if found else message.strip().splitlines()[0]


class Context:
    """Which store context is current (an address): the store's own, or a host call's caller's while it runs."""

    __slots__ = ("store", "outer", "current")

    def __init__(self, store: wasmtime.Store) -> None:
        self.store = store
        self.outer: int = ctypes.cast(store._context(), ctypes.c_void_p).value or 0
        self.current: int = self.outer


HostFn = Callable[..., Any]


def _decoder(params: Sequence[str]) -> Callable[[Any], Sequence[int]]:
    """How a host call's arguments come out of its slots: i32 masked to unsigned, i64 as it is (signed).

    Proxy-Wasm's host functions take up to five i32 for all but a few: those get a lambda without a loop
    (cheaper than a comprehension, which is a call of its own before Python 3.12).
    """
    w = _SLOT_WORDS
    if all(kind == I32 for kind in params):
        fixed: dict[int, Callable[[Any], Sequence[int]]] = {
            0: lambda vals: (),
            1: lambda vals: (vals[0] & _U32,),
            2: lambda vals: (vals[0] & _U32, vals[w] & _U32),
            3: lambda vals: (vals[0] & _U32, vals[w] & _U32, vals[2 * w] & _U32),
            4: lambda vals: (vals[0] & _U32, vals[w] & _U32, vals[2 * w] & _U32, vals[3 * w] & _U32),
            5: lambda vals: (vals[0] & _U32, vals[w] & _U32, vals[2 * w] & _U32, vals[3 * w] & _U32,
                             vals[4 * w] & _U32),
        }
        if len(params) in fixed:
            return fixed[len(params)]
    spec = tuple((i * w, _U32 if kind == I32 else _ALL) for i, kind in enumerate(params))
    return lambda vals: [vals[at] & mask for at, mask in spec]


class RawLinker:
    """A wasmtime Linker whose functions are defined through the unchecked (raw slot) interface."""

    def __init__(self, engine: wasmtime.Engine, context: Context) -> None:
        self.linker = wasmtime.Linker(engine)
        self.context = context
        self._keep: list[Any] = []   # every CFUNCTYPE and FuncType given to wasmtime (see the docstring)
        self.host_error: BaseException | None = None  # a host function's unexpected exception, if any

    def define(self, module: str, name: str, params: Sequence[str], results: Sequence[str], fn: HostFn,
               answers: Sequence[tuple[type[Exception], int]] = ()) -> None:
        """Define ``module.name`` as ``fn(*args)``: i32 arguments arrive as unsigned ints, i64 as signed.

        ``fn`` returns the single result (an int) or None when there is none; raising ``HostTrap``
        traps the guest with its message. ``answers`` maps the exceptions ``fn`` may raise on a bad
        argument to the result the guest gets instead (the first that matches), so that the common
        guard needs no wrapper of its own (one Python call less per host call).
        """
        decode = _decoder(params)
        has_result = bool(results)
        context = self.context
        raw_linker = self
        kinds = tuple(kind for kind, _ in answers)

        def callback(env: Any, caller: int, vals: Any, n: int) -> int:
            saved = context.current
            context.current = _caller_context(caller)
            try:
                result = fn(*decode(vals))
                if has_result:
                    vals[0] = result
                return 0
            except HostTrap as trap:
                return _trap_pointer(str(trap))
            except kinds as error:
                vals[0] = next(answer for kind, answer in answers if isinstance(error, kind))
                return 0
            except BaseException as error:  # never let it unwind into wasmtime's frames
                raw_linker.host_error = error
                return _trap_pointer(f"host function {module}.{name} failed: {error!r}")
            finally:
                context.current = saved

        c_callback = _Callback(callback)
        functype = _functype(params, results)
        self._keep.extend((c_callback, functype, callback))
        module_b, name_b = module.encode(), name.encode()
        error = _define_unchecked(self.linker.ptr(), module_b, len(module_b), name_b, len(name_b), functype.ptr(),
                                  c_callback, None, None)
        if error:
            raise _error(error)

    def instantiate(self, module: wasmtime.Module) -> wasmtime.Instance:
        """Instantiate ``module`` in the context's store (the module's start function runs here)."""
        try:
            return self.linker.instantiate(self.context.store, module)
        except wasmtime.Trap as trap:
            raise GuestTrap(f"instantiation trapped: {trap.message}") from None
        except wasmtime.WasmtimeError as error:
            raise GuestTrap(f"instantiation failed: {error}") from None


class GuestFunc:
    """One exported guest function, called through the raw interface."""

    __slots__ = ("name", "params", "results", "_func", "_address", "_array", "_slots", "_context", "_mask",
                 "_arity", "_span", "_vals", "_vals_at", "_trap", "_trap_ref", "_busy")

    def __init__(self, context: Context, name: str, func: wasmtime.Func) -> None:
        self.name = name
        self.params, self.results = func_signature(func.type(context.store))
        self._func = func._func            # the wasmtime_func_t, kept: its address is passed on each call
        self._address = ctypes.addressof(self._func)
        self._slots = max(len(self.params), len(self.results), 1)
        self._array = ctypes.c_int64 * (self._slots * _SLOT_WORDS)
        self._context = context
        self._mask = None if not self.results else (_U32 if self.results[0] == I32 else _ALL)
        self._arity = len(self.params)
        self._span = slice(0, self._arity * _SLOT_WORDS, _SLOT_WORDS)   # each argument's first word
        # Reused by every call that does not re-enter this export (see the module docstring).
        self._vals = self._array()
        self._vals_at = ctypes.addressof(self._vals)
        self._trap = ctypes.c_void_p()
        self._trap_ref = ctypes.addressof(self._trap)   # addresses as ints: ctypes converts those cheapest
        self._busy = False

    def __call__(self, *args: int) -> int | None:
        """Call with ints (i32 or i64 as the signature says); the first result, or None."""
        return self.call(args)

    def call(self, args: Sequence[int], fuel: int | None = None) -> int | None:
        """Call with ``args``, the store's fuel first set to ``fuel`` (unless None): one frame for both."""
        if len(args) != self._arity:
            raise TypeError(f"{self.name} takes {len(self.params)} arguments, not {len(args)}")
        context = self._context
        if fuel is not None:
            error = _set_fuel(context.current, fuel)
            if error:
                raise _error(error)
        reentered = self._busy
        if reentered:
            vals = self._array()
            vals_at = ctypes.addressof(vals)
            trap = ctypes.c_void_p()
            trap_ref = ctypes.addressof(trap)
        else:   # the trap slot is NULL: wasmtime writes it only on a trap, and _raise_for clears it then
            vals, vals_at, trap, trap_ref = self._vals, self._vals_at, self._trap, self._trap_ref
            self._busy = True
        try:
            vals[self._span] = args  # type: ignore[call-overload]  # ints into c_int64 slots; 2-3x cheaper than a loop
            error = _call_unchecked(context.current, self._address, vals_at, self._slots, trap_ref)
        finally:
            if not reentered:
                self._busy = False
        if error or trap.value:
            _raise_for(self.name, error, trap)
        if self._mask is None:
            return None
        return vals[0] & self._mask


class Memory:
    """The guest's linear memory, bounds-checked on every access (see the module docstring)."""

    __slots__ = ("_memory", "_address", "_context", "_data", "_length")

    def __init__(self, context: Context, memory: wasmtime.Memory) -> None:
        self._memory = memory._memory      # the wasmtime_memory_t, kept: its address is passed on each access
        self._address = ctypes.addressof(self._memory)
        self._context = context
        self._data = 0
        self._length = 0
        self._layout()

    def _layout(self) -> int:
        """Read the base pointer and the size again (the size only grows; the base stays where it is)."""
        ctx = self._context.current
        self._length = _memory_data_size(ctx, self._address)
        self._data = int(_memory_data(ctx, self._address) or 0)
        return self._length

    def _base(self, ptr: int, size: int) -> int:
        if ptr < 0 or size < 0:
            raise OutOfBounds(f"{size} bytes at {ptr}: a negative pointer or length")
        if ptr + size > self._length and ptr + size > self._layout():   # it may have grown since
            raise OutOfBounds(f"{size} bytes at {ptr} outside {self._length} bytes of guest memory")
        return self._data + ptr

    def check(self, ptr: int, size: int) -> None:
        """Raise ``OutOfBounds`` unless ``size`` bytes at ``ptr`` lie inside the memory."""
        self._base(ptr, size)

    def size(self) -> int:
        return self._layout()

    def read(self, ptr: int, size: int) -> bytes:
        if size == 0:
            return b""
        return ctypes.string_at(self._base(ptr, size), size)

    def write(self, ptr: int, data: bytes) -> None:
        if not data:
            self._base(ptr, 0)
            return
        ctypes.memmove(self._base(ptr, len(data)), data, len(data))

    def read_u32(self, ptr: int) -> int:
        return int.from_bytes(self.read(ptr, 4), "little")

    def write_u32(self, ptr: int, value: int) -> None:
        self.write(ptr, (value & _U32).to_bytes(4, "little"))

    def write_u64(self, ptr: int, value: int) -> None:
        self.write(ptr, (value & _U64).to_bytes(8, "little"))


def set_fuel(context: Context, fuel: int) -> None:
    error = _set_fuel(context.current, fuel)
    if error:
        raise _error(error)
