"""The WASI calls Proxy-Wasm SDKs import (TinyGo, Rust's std, emscripten, AssemblyScript's wasi shim).

A plugin is not a program: it has no files, no arguments and no exit. So stdout and stderr go to the
waypoint's log (line by line, bounded per call), the clock and the random source are the host's, the
environment is the WasmPlugin's ``vmConfig.env``, ``proc_exit`` traps and every other descriptor is EBADF.
The same functions are linked under ``wasi_snapshot_preview1`` and its older name ``wasi_unstable``
(TinyGo); the errno values are WASI's. A bad pointer answers EFAULT, never an exception.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from waypoint.limits import WASM_LOG_BYTES, WASM_RANDOM_BYTES
from waypoint.wasm import raw
from waypoint.wasm.vm import WASI_MODULES, HostImport, Vm

ESUCCESS, EBADF, EFAULT, EINVAL, ESPIPE = 0, 8, 21, 28, 70
_FILETYPE_CHARACTER_DEVICE = 2
_CLOCK_REALTIME, _CLOCK_MONOTONIC, _CLOCK_PROCESS, _CLOCK_THREAD = 0, 1, 2, 3
_MAX_IOVECS = 1024     # iovecs in one fd_write (Linux's IOV_MAX)
_I, _L = raw.I32, raw.I64


def wasi_imports(vm_ref: Callable[[], Vm], env: Mapping[str, str], log: logging.Logger
                 ) -> dict[tuple[str, str], HostImport]:
    """The WASI functions for a VM (found through ``vm_ref`` when called), under both module names."""
    environ = [f"{k}={v}".encode() + b"\0" for k, v in env.items()]
    pending: dict[int, bytes] = {1: b"", 2: b""}     # a line written in pieces is logged once whole

    def efault(fn: Callable[..., int]) -> Callable[..., int]:
        def guarded(*args: int) -> int:
            try:
                return fn(*args)
            except raw.OutOfBounds:
                return EFAULT
        return guarded

    def fd_write(fd: int, iovs: int, iovs_len: int, nwritten_ptr: int) -> int:
        if fd not in pending:
            return EBADF
        if iovs_len > _MAX_IOVECS:
            return EINVAL
        memory = vm_ref().memory
        vector = memory.read(iovs, 8 * iovs_len)
        memory.check(nwritten_ptr, 4)
        total, kept = 0, list[bytes]()
        for i in range(iovs_len):
            ptr = int.from_bytes(vector[8 * i:8 * i + 4], "little")
            size = int.from_bytes(vector[8 * i + 4:8 * i + 8], "little")
            memory.check(ptr, size)
            room = WASM_LOG_BYTES - sum(len(k) for k in kept)
            if room > 0:
                kept.append(memory.read(ptr, min(size, room)))
            total += size
        text = pending[fd] + b"".join(kept)
        *lines, rest = text.split(b"\n")
        for line in lines:
            log.log(logging.INFO if fd == 1 else logging.WARNING, "%s", line.decode("utf-8", "replace"))
        pending[fd] = rest[:WASM_LOG_BYTES]
        memory.write_u32(nwritten_ptr, total)
        return ESUCCESS

    def fd_close(fd: int) -> int:
        return ESUCCESS if fd in (0, 1, 2) else EBADF

    def fd_seek(fd: int, offset: int, whence: int, newoffset_ptr: int) -> int:
        return ESPIPE if fd in (0, 1, 2) else EBADF

    def fd_fdstat_get(fd: int, stat_ptr: int) -> int:
        if fd not in (0, 1, 2):
            return EBADF
        # fdstat: filetype u8, (pad), flags u16 at 2, rights_base u64 at 8, rights_inheriting u64 at 16.
        vm_ref().memory.write(stat_ptr, bytes([_FILETYPE_CHARACTER_DEVICE]) + bytes(23))
        return ESUCCESS

    def clock_time_get(clock_id: int, precision: int, time_ptr: int) -> int:
        if clock_id == _CLOCK_REALTIME:
            now = time.time_ns()
        elif clock_id == _CLOCK_MONOTONIC:
            now = time.monotonic_ns()
        elif clock_id in (_CLOCK_PROCESS, _CLOCK_THREAD):
            now = time.process_time_ns()
        else:
            return EINVAL
        vm_ref().memory.write_u64(time_ptr, now)
        return ESUCCESS

    def random_get(buf: int, size: int) -> int:
        if size > WASM_RANDOM_BYTES:
            return EINVAL
        memory = vm_ref().memory
        memory.check(buf, size)
        memory.write(buf, os.urandom(size))
        return ESUCCESS

    def environ_sizes_get(count_ptr: int, size_ptr: int) -> int:
        memory = vm_ref().memory
        memory.check(count_ptr, 4)
        memory.check(size_ptr, 4)
        memory.write_u32(count_ptr, len(environ))
        memory.write_u32(size_ptr, sum(map(len, environ)))
        return ESUCCESS

    def environ_get(pointers: int, buffer: int) -> int:
        memory = vm_ref().memory
        memory.check(pointers, 4 * len(environ))
        memory.check(buffer, sum(map(len, environ)))
        offset = buffer
        for i, entry in enumerate(environ):
            memory.write_u32(pointers + 4 * i, offset)
            memory.write(offset, entry)
            offset += len(entry)
        return ESUCCESS

    def args_sizes_get(count_ptr: int, size_ptr: int) -> int:
        memory = vm_ref().memory
        memory.check(count_ptr, 4)
        memory.check(size_ptr, 4)
        memory.write_u32(count_ptr, 0)
        memory.write_u32(size_ptr, 0)
        return ESUCCESS

    def args_get(pointers: int, buffer: int) -> int:
        return ESUCCESS

    def proc_exit(code: int) -> None:
        raise raw.HostTrap(f"proc_exit({code})")

    def sched_yield() -> int:
        return ESUCCESS

    table: dict[str, tuple[tuple[str, ...], tuple[str, ...], Callable[..., Any]]] = {
        "fd_write": ((_I, _I, _I, _I), (_I,), fd_write),
        "fd_close": ((_I,), (_I,), fd_close),
        "fd_seek": ((_I, _L, _I, _I), (_I,), fd_seek),
        "fd_fdstat_get": ((_I, _I), (_I,), fd_fdstat_get),
        "clock_time_get": ((_I, _L, _I), (_I,), clock_time_get),
        "random_get": ((_I, _I), (_I,), random_get),
        "environ_sizes_get": ((_I, _I), (_I,), environ_sizes_get),
        "environ_get": ((_I, _I), (_I,), environ_get),
        "args_sizes_get": ((_I, _I), (_I,), args_sizes_get),
        "args_get": ((_I, _I), (_I,), args_get),
        "proc_exit": ((_I,), (), proc_exit),
        "sched_yield": ((), (_I,), sched_yield),
    }
    imports: dict[tuple[str, str], HostImport] = {}
    for name, (params, results, fn) in table.items():
        wrapped: Callable[..., int | None] = fn if name == "proc_exit" else efault(fn)
        for module in WASI_MODULES:
            imports[(module, name)] = HostImport(params, results, wrapped)
    return imports
