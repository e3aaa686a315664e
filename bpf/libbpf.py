"""A thin ctypes binding over the system's libbpf.so.1: what the node agent needs, nothing more.

How it works: `BpfObject.open(path)` opens and loads a compiled object (the kernel verifies it);
`program(name)` and `map(name)` find its parts by name. `Map` reads and writes elements as raw
bytes (callers pack their own structs), `Program.attach_netns(fd)` makes a `Link`, and links,
maps and programs are pinned to and adopted from bpffs by path. `Program.test_run` runs the program
on a given context with BPF_PROG_TEST_RUN. libbpf's own messages go to the "ambient.libbpf"
logger (warnings as WARNING, info as DEBUG), formatted by libc's vsnprintf.

Errors: libbpf 1.x returns negative error codes (or NULL with errno); every call here turns them
into `BpfError`, an OSError naming the call and the object. File descriptors a call returns are
owned by the Python object that holds them and closed by its `close()`.
"""

from __future__ import annotations

import ctypes
import errno as errno_codes
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("ambient.libbpf")

LIBBPF_NAME = "libbpf.so.1"
BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2
_PRINT_LEVEL_WARN, _PRINT_LEVEL_INFO, _PRINT_LEVEL_DEBUG = 0, 1, 2


class BpfError(OSError):
    """A libbpf call failed; errno and a message naming the call."""


class LibbpfUnavailableError(RuntimeError):
    """The system has no libbpf.so.1."""


class _TestRunOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_lib: ctypes.CDLL | None = None
_libc = ctypes.CDLL(None, use_errno=True)
_libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]


def _print(level: int, fmt: bytes, args: int) -> int:
    buffer = ctypes.create_string_buffer(1024)
    _libc.vsnprintf(buffer, len(buffer), fmt, args)
    message = buffer.value.decode(errors="replace").rstrip()
    if message:
        log.log(logging.WARNING if level == _PRINT_LEVEL_WARN else logging.DEBUG, "%s", message)
    return 0


_print_callback = _PRINT_FN(_print)  # kept referenced for as long as libbpf may call it


def lib() -> ctypes.CDLL:
    """libbpf, loaded once, with its prototypes declared and its log routed to Python logging."""
    global _lib
    if _lib is not None:
        return _lib
    try:
        handle = ctypes.CDLL(LIBBPF_NAME, use_errno=True)
    except OSError as exc:
        raise LibbpfUnavailableError(
            f"cannot load {LIBBPF_NAME} ({exc}): install libbpf (Debian: apt-get install libbpf1)") from None
    vp, i, cp, u64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint64
    prototypes = {
        "bpf_object__open_file": (vp, [cp, vp]),
        "bpf_object__load": (i, [vp]),
        "bpf_object__close": (None, [vp]),
        "bpf_object__find_program_by_name": (vp, [vp, cp]),
        "bpf_object__find_map_by_name": (vp, [vp, cp]),
        "bpf_program__fd": (i, [vp]),
        "bpf_program__attach_netns": (vp, [vp, i]),
        "bpf_map__fd": (i, [vp]),
        "bpf_link__pin": (i, [vp, cp]),
        "bpf_link__fd": (i, [vp]),
        "bpf_link__disconnect": (None, [vp]),
        "bpf_link__destroy": (i, [vp]),
        "bpf_map_update_elem": (i, [i, vp, vp, u64]),
        "bpf_map_lookup_elem": (i, [i, vp, vp]),
        "bpf_map_delete_elem": (i, [i, vp]),
        "bpf_obj_pin": (i, [i, cp]),
        "bpf_obj_get": (i, [cp]),
        "bpf_link_detach": (i, [i]),
        "bpf_obj_get_info_by_fd": (i, [i, vp, ctypes.POINTER(ctypes.c_uint32)]),
        "bpf_prog_test_run_opts": (i, [i, ctypes.POINTER(_TestRunOpts)]),
        "libbpf_num_possible_cpus": (i, []),
        "libbpf_set_print": (vp, [_PRINT_FN]),
    }
    for name, (restype, argtypes) in prototypes.items():
        function = getattr(handle, name)
        function.restype, function.argtypes = restype, argtypes
    handle.libbpf_set_print(_print_callback)
    _lib = handle
    return handle


def _check(result: int, what: str) -> int:
    if result < 0:
        code = -result
        raise BpfError(code, f"{what}: {os.strerror(code)}")
    return result


def _check_pointer(pointer: int | None, what: str) -> int:
    if not pointer:
        code = ctypes.get_errno() or errno_codes.EINVAL
        raise BpfError(code, f"{what}: {os.strerror(code)}")
    return pointer


def possible_cpus() -> int:
    return _check(lib().libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


class Map:
    """A BPF map by file descriptor; keys and values are bytes of the map's exact sizes."""

    def __init__(self, fd: int, name: str, owned: bool = False) -> None:
        self.fd, self.name, self._owned = fd, name, owned

    @classmethod
    def from_pin(cls, path: Path | str, name: str | None = None) -> Map:
        fd = _check(lib().bpf_obj_get(str(path).encode()), f"bpf_obj_get({path})")
        return cls(fd, name or Path(path).name, owned=True)

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        _check(lib().bpf_map_update_elem(self.fd, key, value, flags), f"update of map {self.name}")

    def lookup(self, key: bytes, value_size: int) -> bytes | None:
        value = ctypes.create_string_buffer(value_size)
        result = lib().bpf_map_lookup_elem(self.fd, key, value)
        if result == -errno_codes.ENOENT:
            return None
        _check(result, f"lookup in map {self.name}")
        return value.raw

    def delete(self, key: bytes) -> bool:
        """False if the key was absent."""
        result = lib().bpf_map_delete_elem(self.fd, key)
        if result == -errno_codes.ENOENT:
            return False
        _check(result, f"delete from map {self.name}")
        return True

    def pin(self, path: Path | str) -> None:
        _check(lib().bpf_obj_pin(self.fd, str(path).encode()), f"pinning map {self.name} at {path}")

    def close(self) -> None:
        if self._owned and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1


# struct bpf_link_info up to its netns member: type, id, prog_id, 4 bytes of padding (the union is
# 8-aligned), netns.netns_ino, netns.attach_type; 48 bytes in all.
_LINK_INFO = struct.Struct("=III4xII24x")


@dataclass(frozen=True)
class LinkInfo:
    type: int
    id: int
    prog_id: int
    netns_inode: int  # for a netns link: the inode of its netns, 0 once that netns is gone
    attach_type: int


class Link:
    """A BPF link (here: a program attached to a network namespace)."""

    def __init__(self, pointer: int | None, fd: int, owned_fd: bool = False) -> None:
        self._pointer, self.fd, self._owned_fd = pointer, fd, owned_fd

    @classmethod
    def from_pin(cls, path: Path | str) -> Link:
        fd = _check(lib().bpf_obj_get(str(path).encode()), f"bpf_obj_get({path})")
        return cls(None, fd, owned_fd=True)

    def pin(self, path: Path | str) -> None:
        if self._pointer is not None:
            _check(lib().bpf_link__pin(self._pointer, str(path).encode()), f"pinning link at {path}")
        else:
            _check(lib().bpf_obj_pin(self.fd, str(path).encode()), f"pinning link at {path}")

    def info(self) -> LinkInfo:
        """What the kernel says of this link (`struct bpf_link_info`)."""
        buffer = ctypes.create_string_buffer(_LINK_INFO.size)
        size = ctypes.c_uint32(_LINK_INFO.size)
        _check(lib().bpf_obj_get_info_by_fd(self.fd, buffer, ctypes.byref(size)), "bpf_obj_get_info_by_fd(link)")
        link_type, link_id, prog_id, netns_inode, attach_type = _LINK_INFO.unpack(buffer.raw)
        return LinkInfo(link_type, link_id, prog_id, netns_inode, attach_type)

    def detach(self) -> None:
        """Detach the program now, even if the link is pinned elsewhere."""
        _check(lib().bpf_link_detach(self.fd), "bpf_link_detach")

    def close(self) -> None:
        """Drop this process's reference; a pinned link stays attached."""
        if self._pointer is not None:
            # Disconnected, destroy frees libbpf's struct without its detach callback (which may
            # detach for some link types); the fd, our reference, is then closed here.
            lib().bpf_link__disconnect(self._pointer)
            lib().bpf_link__destroy(self._pointer)
            self._pointer = None
            os.close(self.fd)
        elif self._owned_fd and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1


class Program:
    def __init__(self, pointer: int, name: str) -> None:
        self._pointer, self.name = pointer, name

    @property
    def fd(self) -> int:
        return _check(lib().bpf_program__fd(self._pointer), f"fd of program {self.name}")

    def attach_netns(self, netns_fd: int) -> Link:
        pointer = _check_pointer(lib().bpf_program__attach_netns(self._pointer, netns_fd),
                                 f"attaching program {self.name} to a netns")
        return Link(pointer, _check(lib().bpf_link__fd(pointer), "bpf_link__fd"))

    def test_run(self, ctx: bytes, ctx_out_size: int | None = None, data: bytes = b"") -> tuple[int, bytes]:
        """BPF_PROG_TEST_RUN with context ``ctx``: (the program's return value, the context after)."""
        ctx_in = ctypes.create_string_buffer(ctx, len(ctx))
        ctx_out = ctypes.create_string_buffer(ctx_out_size or len(ctx))
        data_in = ctypes.create_string_buffer(data, len(data)) if data else None
        opts = _TestRunOpts(
            sz=ctypes.sizeof(_TestRunOpts),
            data_in=ctypes.cast(data_in, ctypes.c_void_p) if data_in else None, data_size_in=len(data),
            ctx_in=ctypes.cast(ctx_in, ctypes.c_void_p), ctx_size_in=len(ctx),
            ctx_out=ctypes.cast(ctx_out, ctypes.c_void_p), ctx_size_out=len(ctx_out), repeat=1,
        )
        _check(lib().bpf_prog_test_run_opts(self.fd, ctypes.byref(opts)), f"test run of program {self.name}")
        return opts.retval, ctx_out.raw[: opts.ctx_size_out]


class BpfObject:
    """An opened and loaded BPF object file; ``close()`` unloads whatever is not pinned or attached."""

    def __init__(self, pointer: int, path: Path) -> None:
        self._pointer: int | None = pointer  # None once closed
        self.path = path

    @classmethod
    def open(cls, path: Path | str) -> BpfObject:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(errno_codes.ENOENT, f"no BPF object at {path}: build it with `make bpf`", str(path))
        pointer = _check_pointer(lib().bpf_object__open_file(str(path).encode(), None), f"opening {path}")
        obj = cls(pointer, path)
        try:
            _check(lib().bpf_object__load(pointer), f"loading {path} (the libbpf log says why)")
        except BaseException:
            obj.close()
            raise
        return obj

    def program(self, name: str) -> Program:
        pointer = lib().bpf_object__find_program_by_name(self._pointer, name.encode())
        if not pointer:
            raise KeyError(f"{self.path} has no program {name!r}")
        return Program(pointer, name)

    def map(self, name: str) -> Map:
        pointer = lib().bpf_object__find_map_by_name(self._pointer, name.encode())
        if not pointer:
            raise KeyError(f"{self.path} has no map {name!r}")
        return Map(_check(lib().bpf_map__fd(pointer), f"fd of map {name}"), name)

    def close(self) -> None:
        if self._pointer:
            lib().bpf_object__close(self._pointer)
            self._pointer = None

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
