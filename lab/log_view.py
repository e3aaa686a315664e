"""What ``ambient lab logs`` shows of a log file: ``--since``, ``--tail``, ``-f``, and which pod a name means.

The lab's logs are plain files the processes append to (``lab.processes``), so the options work on
lines, as kubectl's do on the runtime's: ``select_lines`` keeps the lines newer than ``--since`` and
then the last ``--tail`` of them, with no I/O. A line's time is the timestamp it starts with, in the
forms the lab writes: the supervisor's ``2026-01-02T03:04:05Z`` (UTC), logging's
``2026-01-02 03:04:05,678`` (local time, as ``asctime`` writes it), an access log's ``[...]``. A line
without one (a traceback's, or an application that writes none) has the time of the last line that
had one; lines before any timestamp have none, and ``--since`` leaves them out, as it cannot say
they are recent. ``follow`` then reads what is appended, polling the file every
``FOLLOW_POLL_INTERVAL`` (a log is a regular file: no inotify needed for a human's terminal), until
interrupted, or until the file is removed (``lab down``).

``pick_pod`` resolves a name as kubectl does: ``NAMESPACE/POD``, ``POD``, or a Deployment
(``deploy/NAME``, ``deployment/NAME``, or a plain ``NAME`` no pod has), whose first ready pod it picks.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

FOLLOW_POLL_INTERVAL = 0.5  # seconds between reads of a followed log: quick for a person, no load
READ_BLOCK = 64 * 1024  # bytes read at a time (a tail reads blocks back from the end)

# Go's time.ParseDuration units, as kubectl's --since takes them.
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_STAMP = re.compile(
    rb"^\[?(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:[.,](\d{1,9}))?(Z|[+-]\d{2}:?\d{2})?")
DEPLOYMENT_PREFIXES = ("deploy/", "deployment/", "deployments/", "deployment.apps/")
# A Deployment's pods are named as a ReplicaSet's: its name, the template's hash, the replica index
# (``mesh.parse``).
_REPLICA_SUFFIX = re.compile(r"-[0-9a-f]{10}-\d+$")


class LogOptionError(ValueError):
    """A ``lab logs`` option or name that cannot be used; the message says which and why."""


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration (``10s``, ``5m``, ``1h30m``, ``250ms``), as ``--since`` takes it."""
    position, total = 0, 0.0
    while position < len(text):
        match = _DURATION_PART.match(text, position)
        if match is None:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if not text or position != len(text):
        raise LogOptionError(f"{text!r} is not a duration such as 10s, 5m or 1h30m")
    return total


def line_time(line: bytes) -> float | None:
    """The POSIX time a log line starts with, or None."""
    match = _STAMP.match(line)
    if match is None:
        return None
    date, clock, fraction, zone = (g.decode() if g else None for g in match.groups())
    try:
        when = dt.datetime.fromisoformat(f"{date}T{clock}")
    except ValueError:
        return None
    if zone is not None:
        when = when.replace(tzinfo=dt.UTC if zone == "Z" else dt.datetime.strptime(zone.replace(":", ""), "%z").tzinfo)
    seconds = when.timestamp()  # naive: local time, as logging's asctime
    return seconds + (float(f"0.{fraction}") if fraction else 0.0)


def select_lines(lines: Iterable[bytes], *, since: float | None = None, tail: int | None = None) -> list[bytes]:
    """The lines at or after POSIX time ``since`` (each dated as the module says), then the last ``tail``."""
    kept: list[bytes] = []
    current: float | None = None
    for line in lines:
        stamp = line_time(line)
        current = stamp if stamp is not None else current
        if since is None or (current is not None and current >= since):
            kept.append(line)
    if tail is not None:
        kept = kept[len(kept) - tail:] if tail else []
    return kept


def last_lines(log: BinaryIO, count: int) -> list[bytes]:
    """The last ``count`` lines of a file, read in blocks back from its end (a lab's log may be large)."""
    end = log.seek(0, os.SEEK_END)
    data, position = b"", end
    while position > 0 and data.count(b"\n") <= count:
        step = min(READ_BLOCK, position)
        position -= step
        log.seek(position)
        data = log.read(step) + data
    lines = data.splitlines(keepends=True)
    log.seek(end)
    return lines[-count:] if count else []


def read_selected(log: BinaryIO, *, since: float | None, tail: int | None) -> list[bytes]:
    """What ``lab logs`` prints of ``log`` before following it; leaves the file at its end."""
    if since is None and tail is not None:
        return last_lines(log, tail)
    return select_lines(log.read().splitlines(keepends=True), since=since, tail=tail)


def follow(path: Path, log: BinaryIO, write: Callable[[bytes], None], *,
           interval: float = FOLLOW_POLL_INTERVAL, sleep: Callable[[float], None] = time.sleep) -> None:
    """Write what is appended to ``log`` (open on ``path``, at the position already shown) until the
    file is removed. A file that shrank was truncated: it is read again from its start."""
    while True:
        chunk = log.read(READ_BLOCK)
        if chunk:
            write(chunk)
            continue
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            return  # the lab removed its logs: it is down
        if size < log.tell():
            log.seek(0)
            continue
        sleep(interval)


def deployment_name(target: str) -> tuple[str, str] | None:
    """``(namespace, name)`` if ``target`` names a Deployment by kind (``[NS/]deploy/NAME``), else None."""
    for prefix in DEPLOYMENT_PREFIXES:
        namespace, found, name = target.partition(prefix)
        if found and (not namespace or namespace.endswith("/")) and name and "/" not in name:
            return namespace.rstrip("/"), name
    return None


def pods_of_deployment(pods: list[dict], namespace: str, name: str) -> list[dict]:
    """The Deployment's pods: by their owner if the status says it, else by the ReplicaSet naming."""
    def owned(pod: dict) -> bool:
        if "owner" in pod:
            return pod["owner"] == f"Deployment/{name}"
        suffix = pod["name"][len(name):]
        return pod["name"].startswith(name) and _REPLICA_SUFFIX.fullmatch(suffix) is not None

    return [p for p in pods if owned(p) and (not namespace or p["namespace"] == namespace)]


def pick_pod(pods: list[dict], target: str, lab: str, namespace: str | None = None) -> dict:
    """The pod ``target`` means (see the module), or ``LogOptionError`` saying why there is none."""
    deployment = deployment_name(target)
    if deployment is None:
        pod_namespace, _, name = target.rpartition("/")
        pod_namespace = pod_namespace or namespace or ""
        matches = [p for p in pods if p["name"] == name and (not pod_namespace or p["namespace"] == pod_namespace)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise LogOptionError(f"{len(matches)} pods are named {name}: say NAMESPACE/{name}")
        deployment = pod_namespace, name
        plain = True
    else:
        plain = False
        deployment = deployment[0] or namespace or "", deployment[1]
    dep_namespace, name = deployment
    owned = pods_of_deployment(pods, dep_namespace, name)
    if not owned:
        what = f"no pod or Deployment {target}" if plain else f"no pods of Deployment {target}"
        raise LogOptionError(f"{what} in lab {lab!r}; `ambient lab status` lists them")
    if len({p["namespace"] for p in owned}) > 1:
        raise LogOptionError(f"Deployments named {name} in several namespaces: say NAMESPACE/deploy/{name} or -n")
    owned.sort(key=lambda p: p["name"])
    return next((p for p in owned if p.get("all_ready")), owned[0])
