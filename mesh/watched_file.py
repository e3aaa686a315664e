"""Files that a running server re-reads when they change on disk.

The token store and the pod-placement relation are edited by other processes (``ambient ca token
create``, the lab) while the CA serves; the registry watches YAML and ``pods.json`` the same way
(``file_signature``). Each lookup stats the file (cheap) and re-parses it only when
its identity (inode, size, mtime) changed. A file that fails to parse or validate keeps the last good
contents in force and logs why, so a bad edit never locks every caller out. Writers replace the file
atomically (``write_json_atomic``), so a reader never sees half a file.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

log = logging.getLogger("ambient.files")
T = TypeVar("T")


def file_signature(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime): changes when the file is replaced or rewritten; None if it is missing."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class WatchedJsonFile(Generic[T]):
    """``parse`` turns the decoded JSON into T (raising ValueError on bad content); ``empty`` is
    what a missing file means. ``get()`` returns the same object until the file changes."""

    def __init__(self, path: Path, parse: Callable[[object], T], empty: T, what: str = "contents") -> None:
        self._path = path
        self._what = what  # for the log line when a bad edit is ignored
        self._parse = parse
        self._value = empty
        self._empty = empty
        self._signature: tuple[int, int, int] | None = None
        self._lock = threading.Lock()  # gRPC serves from a thread pool

    def get(self) -> T:
        signature = file_signature(self._path)
        if signature == self._signature:
            return self._value
        with self._lock:
            if signature != self._signature:
                self._reload(signature)
            return self._value

    def _reload(self, signature: tuple[int, int, int] | None) -> None:
        # The value first, the signature last: readers check the signature without the lock, and
        # must not see the new signature with the old value.
        if signature is None:
            self._value = self._empty
        else:
            try:
                self._value = self._parse(json.loads(self._path.read_text()))
            except (OSError, ValueError) as exc:
                log.error("%s: %s; keeping the previous %s in force", self._path, exc, self._what)
        self._signature = signature


def write_json_atomic(path: Path, data: object, mode: int = 0o600) -> None:
    """Write ``data`` as JSON to ``path`` via a temporary file and rename, with ``mode``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed or the file pre-existed
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
