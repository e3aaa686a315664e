"""Files that a running server re-reads when they change on disk.

The token store and the pod-placement relation are edited by other processes (``ambient ca token
create``, the lab) while the CA serves; the registry watches YAML and ``pods.json`` the same way
(``file_signature``). Each lookup stats the file (cheap) and re-parses it only when
its identity (inode, size, mtime) changed. A file that fails to parse or validate keeps the last good
contents in force and logs why, so a bad edit never locks every caller out. Writers replace the file
atomically (``write_json_atomic``), so a reader never sees half a file.

Files that people edit (the registry's YAML) are written by tools that do not rename: an editor,
``cat >``, a copy. ``SettleGate`` holds such a change back until the file has stayed the same for
``SETTLE_INTERVAL``, so that a file caught half-written is never applied.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

log = logging.getLogger("ambient.files")
T = TypeVar("T")
Signature = tuple[int, int, int]


def file_signature(path: Path) -> Signature | None:
    """(inode, size, mtime): changes when the file is replaced or rewritten; None if it is missing."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


SETTLE_INTERVAL = 0.4
"""Seconds a changed file must keep its signature and content before it is applied. A writer that
saves in several steps (an editor that truncates then writes, `cat a >f; cat b >>f`) finishes within
milliseconds; 0.4 s is well past that and adds little to what a change takes to reach the dataplane
(the control plane's poll of 0.25 s and its debounce). A writer that pauses longer than this between
steps is not protected: replace the file by rename (``kubectl``, ``write_json_atomic``, `mv`)."""


@dataclass(frozen=True)
class _Look:
    signature: Signature | None
    digest: bytes | None  # of the content; None when the file is missing or was not read
    since: float


class SettleGate:
    """When a changed file may be applied: once two looks at least ``interval`` apart found the same
    signature (inode, size, mtime) and the same content. Sans-IO: the caller stats and reads the
    file and says what time it is, and applies the content of the look that answered True, so what
    is applied is exactly what was seen to settle. A missing file settles like any other state."""

    def __init__(self, interval: float = SETTLE_INTERVAL) -> None:
        self.interval = interval
        self._looks: dict[Hashable, _Look] = {}

    def settled(self, key: Hashable, signature: Signature | None, content: bytes | None, now: float) -> bool:
        digest = None if content is None else hashlib.blake2b(content, digest_size=16).digest()
        look = self._looks.get(key)
        if look is None or (look.signature, look.digest) != (signature, digest):
            self._looks[key] = _Look(signature, digest, now)  # changed since the last look: wait again
            return False
        if now - look.since < self.interval:
            return False
        del self._looks[key]
        return True

    def forget(self, key: Hashable) -> None:
        """The file is back as it was applied (or no longer of interest): nothing is waiting."""
        self._looks.pop(key, None)

    def waiting(self) -> set[Hashable]:
        return set(self._looks)


MAX_JSON_BYTES = 64 * 1024 * 1024
"""A watched JSON file larger than this is not read. The largest is pods.json: ~100 bytes a pod, so
this is room for half a million pods while still bounding what one bad write costs every reader."""


def read_at_most(path: Path, limit: int) -> bytes | None:
    """The file's bytes, or None if it holds more than ``limit`` (only ``limit + 1`` are read)."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    return None if len(data) > limit else data


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
                data = read_at_most(self._path, MAX_JSON_BYTES)
                if data is None:
                    raise ValueError(f"larger than {MAX_JSON_BYTES} bytes")
                self._value = self._parse(json.loads(data))
            except RecursionError:  # json nests by recursion: `[[[[...` 100,000 deep
                log.error("%s: nested too deeply; keeping the previous %s in force", self._path, self._what)
            except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
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
