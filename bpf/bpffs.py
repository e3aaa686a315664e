"""The node's own bpffs: a private mount of the BPF filesystem where the agent pins each pod's capture.

Each ``mount -t bpf`` is a new, empty instance, so the node's pins live apart from the host's
``/sys/fs/bpf`` and from other nodes'. The agent mounts it on first start and leaves it mounted when
it exits (the pins are what keep capture alive without it); whoever removes the node (``lab down``)
unmounts it, which drops every pin in it at once.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

MS_PRIVATE = 1 << 18
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \\ooo.
    return field.encode().decode("unicode_escape").encode("latin-1").decode(errors="surrogateescape")


def mounts(mountinfo: str | None = None) -> list[tuple[Path, str]]:
    """(mount point, filesystem type) of every mount this process sees, in mount order."""
    if mountinfo is None:
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        separator = fields.index("-")
        found.append((Path(_unescape(fields[4])), fields[separator + 1]))
    return found


def is_bpffs(path: Path) -> bool:
    path = Path(os.path.realpath(path))
    types = [fstype for point, fstype in mounts() if point == path]
    return bool(types) and types[-1] == "bpf"  # the last mount on a point is the one in view


def _call(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def ensure_mounted(path: Path) -> bool:
    """Mount a private bpffs at ``path`` unless one is there already; True if it mounted one."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if is_bpffs(path):
        return False
    target = os.fsencode(os.path.realpath(path))
    _call(_libc.mount(b"bpf", target, b"bpf", 0, b"mode=0700"), f"mount -t bpf bpf {path}")
    _call(_libc.mount(None, target, None, MS_PRIVATE, None), f"making the bpffs at {path} private")
    return True


def unmount_under(root: Path) -> list[Path]:
    """Unmount every bpffs at or below ``root`` (deepest first); returns the mount points."""
    root = Path(os.path.realpath(root))
    points = sorted({point for point, fstype in mounts() if fstype == "bpf" and point.is_relative_to(root)},
                    key=lambda p: len(p.parts), reverse=True)
    for point in points:
        _call(_libc.umount2(os.fsencode(point), MNT_DETACH), f"umount {point}")
    return points
