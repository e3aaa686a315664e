"""Files only this process's user may read: a restarted proxy's last good state (discovery view,
certificates and keys).

The directory is made ``0700`` and each file ``0600``, written to a temporary name in the same
directory and renamed over the old one, so a reader never sees half a file and a crash leaves the
previous version. A directory that exists with wider permissions is refused rather than "fixed":
someone else made it, and may be reading it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

DIRECTORY_MODE = 0o700
FILE_MODE = 0o600


class UnsafeDirectory(OSError):
    """The directory is readable or writable by others, or not ours."""


def private_directory(path: Path) -> Path:
    """Create ``path`` (and parents) as ``0700`` if missing; refuse one that others can reach."""
    path.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise UnsafeDirectory(f"{path} must be a directory of uid {os.geteuid()} with mode 0700 "
                              f"(it is uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):04o})")
    return path


def write_private(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``, mode ``0600``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_private(path: Path, max_bytes: int) -> bytes | None:
    """``path``'s bytes, or None if it does not exist. Refuses (``OSError``) a file larger than
    ``max_bytes``, a symlink, or one others may write."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if stat.S_IMODE(info.st_mode) & 0o022 or info.st_uid != os.geteuid():
            raise OSError(f"{path}: others may write it (mode {stat.S_IMODE(info.st_mode):04o}); not read")
        if info.st_size > max_bytes:
            raise OSError(f"{path}: {info.st_size} bytes, over the {max_bytes} this reader accepts")
        return f.read(max_bytes + 1)[:max_bytes]
