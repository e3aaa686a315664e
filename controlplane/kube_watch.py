"""The list+watch protocol of one Kubernetes kind, as a sans-IO state machine (no sockets, no clock).

A ``KindWatch`` holds, for one kind, the objects it has handed out (their keys and resourceVersions)
and the resourceVersion to resume from; the driver (``controlplane.kube_source``) asks it what to do
next (``next_step``: list or watch, after how long) and tells it what happened. Each input returns
the ``Changes`` to apply to the registry, so the whole decision logic is here and tested as a table:

    LIST ──listed(items, rv)──► WATCH(rv) ──event──► WATCH(rv') (ADDED/MODIFIED/DELETED/BOOKMARK)
      ▲  ◄──410 (ERROR event or HTTP 410): re-list, replacing the kind's whole set──┘
      └── list failed: 404 → the CRD is absent, retried every ABSENT_RETRY (reported once);
                       any other failure → retried with backoff (``mesh.backoff``)
    WATCH ──stream ended by the server (its timeoutSeconds)──► WATCH(rv) at once
          ──connection dropped, malformed event, other ERROR──► WATCH(rv) after backoff

As client-go's reflector does: a BOOKMARK only advances the resourceVersion; a re-list replaces the
set, so objects deleted while no watch ran disappear; an object whose resourceVersion has not changed
is not handed out again (a re-list of 10,000 unchanged pods changes nothing).

``LineDecoder`` splits a watch stream into its newline-delimited JSON events, refusing one longer
than MAX_EVENT_BYTES; ``decode_event`` checks an event's shape.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from mesh.backoff import Backoff

ObjectKey = tuple[str, str]  # (namespace, name); namespace "" for a cluster-scoped kind

# What the API server (or whatever answers in its place) can make the control plane spend.
MAX_EVENT_BYTES = 4 * 1024 * 1024
"""One watch event (one line of the stream). etcd refuses objects over 1.5 MiB (its default
--max-request-bytes); their JSON, with the event around it, can be larger than what etcd stores in
protobuf, hence the headroom. A longer line ends the stream as malformed (re-watched after backoff)."""
MAX_OBJECTS_PER_KIND = 150_000
"""Objects held per kind: Kubernetes' tested limit of pods in one cluster, the largest kind the
control plane reads. Objects past it are refused (and reported), never held."""
LIST_PAGE_SIZE = 500
"""Objects per list request (``limit``), then ``continue``: client-go's pager uses the same."""
MAX_LIST_PAGE_BYTES = 64 * 1024 * 1024
"""One page of a list response. 500 pods of ~10 KiB are ~5 MiB; a page past this is refused and
the list is retried with backoff, since holding it would cost more than the whole mesh."""
WATCH_TIMEOUT_SECONDS = 300
"""``timeoutSeconds`` of a watch request: the API server ends the stream then, and it is resumed
from the last resourceVersion at once (client-go: 5 minutes, scaled by up to 2 with jitter)."""
ABSENT_RETRY = 60.0
"""Seconds between lists of a kind the API server does not serve (404: its CRD is not installed)."""

GONE = 410  # HTTP status (and Status.code) of a resourceVersion the API server no longer has
NOT_FOUND = 404


class Phase(enum.Enum):
    LIST = "list"  # the next request lists the kind (first, after 410, after a failed list)
    WATCH = "watch"  # the next request watches from ``resource_version``


@dataclass(frozen=True)
class Step:
    """What the driver does next: ``action`` after waiting ``delay`` seconds."""

    action: Phase
    delay: float
    resource_version: str = ""  # for WATCH


@dataclass(frozen=True)
class Changes:
    """What an input changed in the held set: objects to (re)apply, keys to withdraw. ``end_stream``:
    the watch stream must be closed (an ERROR event); ``refused``: objects past MAX_OBJECTS_PER_KIND."""

    upserted: tuple[dict, ...] = ()
    deleted: tuple[ObjectKey, ...] = ()
    end_stream: bool = False
    refused: int = 0

    def __bool__(self) -> bool:
        return bool(self.upserted or self.deleted)


NO_CHANGES = Changes()


class MalformedEvent(ValueError):
    """An event the API server would never send: the stream is treated as broken."""


def object_key(obj: object) -> ObjectKey:
    """``(namespace, name)`` of an API object; raises MalformedEvent when it has no name."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        raise MalformedEvent("object without metadata.name")
    namespace = meta.get("namespace", "")
    if not isinstance(namespace, str):
        raise MalformedEvent(f"object {meta['name']}: metadata.namespace is not a string")
    return (namespace, meta["name"])


def resource_version_of(obj: dict) -> str:
    version = obj.get("metadata", {}).get("resourceVersion", "")
    return version if isinstance(version, str) else ""


@dataclass
class KindWatch:
    """The state of one kind's list+watch. ``kind`` names it in messages."""

    kind: str
    backoff: Backoff = field(default_factory=Backoff)
    absent_retry: float = ABSENT_RETRY
    max_objects: int = MAX_OBJECTS_PER_KIND
    phase: Phase = Phase.LIST
    resource_version: str = ""
    absent: bool = False  # the last list got 404 (reported once, until it is served)
    synced: bool = False  # listed at least once
    _held: dict[ObjectKey, str] = field(default_factory=dict)  # key → resourceVersion handed out
    _attempt: int = 0
    _delay: float = 0.0

    @property
    def held(self) -> frozenset[ObjectKey]:
        return frozenset(self._held)

    def next_step(self) -> Step:
        return Step(self.phase, self._delay, self.resource_version if self.phase is Phase.WATCH else "")

    # -- list

    def listed(self, items: Iterable[dict], resource_version: str) -> Changes:
        """A complete list (every page) at ``resource_version``: the held set becomes exactly these."""
        fresh: dict[ObjectKey, dict] = {}
        refused = 0
        for obj in items:
            try:
                key = object_key(obj)
            except MalformedEvent:
                refused += 1
                continue
            if key not in fresh and len(fresh) >= self.max_objects:
                refused += 1
                continue
            fresh[key] = obj
        deleted = tuple(sorted(set(self._held) - set(fresh)))
        upserted = tuple(obj for key, obj in fresh.items() if self._held.get(key) != resource_version_of(obj)
                         or not resource_version_of(obj))
        self._held = {key: resource_version_of(obj) for key, obj in fresh.items()}
        self.resource_version = resource_version
        self.phase, self._attempt, self._delay = Phase.WATCH, 0, 0.0
        self.absent, self.synced = False, True
        return Changes(upserted, deleted, refused=refused)

    def list_failed(self, status: int, reason: str) -> str | None:
        """A list request failed (``status`` 0: no HTTP answer). Returns the message to log, or None
        when it was already reported (an absent CRD is reported once, not every ABSENT_RETRY)."""
        self.phase = Phase.LIST
        if status == NOT_FOUND:
            self._delay = self.absent_retry
            if self.absent:
                return None
            self.absent = True
            return (f"{self.kind}: not served by the API server (is its CRD installed?); "
                    f"trying again every {self.absent_retry:.0f} s")
        self._delay = self.backoff.delay(self._attempt)
        self._attempt += 1
        return f"{self.kind}: list failed ({_describe(status, reason)}); retrying in {self._delay:.1f} s"

    # -- watch

    def event(self, event: dict) -> Changes:
        """One event of the watch stream (already checked by ``decode_event``)."""
        kind, obj = event["type"], event["object"]
        if kind == "ERROR":
            code = obj.get("code") if isinstance(obj, dict) else None
            if code == GONE:
                return self._relist()
            self._retry_watch()
            return Changes(end_stream=True)
        version = resource_version_of(obj)
        if kind == "BOOKMARK":
            if version:
                self.resource_version = version
            return NO_CHANGES
        key = object_key(obj)
        if version:
            self.resource_version = version
        self._attempt, self._delay = 0, 0.0  # the stream works: the next failure starts the backoff over
        if kind == "DELETED":
            return Changes(deleted=(key,)) if self._held.pop(key, None) is not None else NO_CHANGES
        if key not in self._held and len(self._held) >= self.max_objects:
            return Changes(refused=1)
        if self._held.get(key) == version and version:
            return NO_CHANGES
        self._held[key] = version
        return Changes(upserted=(obj,))

    def watch_ended(self) -> None:
        """The server ended the stream cleanly (its timeoutSeconds): watch again from where it was."""
        self.phase, self._delay = Phase.WATCH, 0.0

    def watch_failed(self, status: int, reason: str) -> str:
        """The watch request failed or its stream broke (``status`` 0: connection, malformed event).
        Returns the message to log."""
        if status == GONE:
            self._relist()
            return f"{self.kind}: resourceVersion {self.resource_version or '?'} expired; listing again"
        if status == NOT_FOUND:
            self.phase, self._delay = Phase.LIST, self.absent_retry
            return f"{self.kind}: no longer served (CRD removed?); listing again in {self._delay:.0f} s"
        self._retry_watch()
        return f"{self.kind}: watch failed ({_describe(status, reason)}); resuming in {self._delay:.1f} s"

    def _relist(self) -> Changes:
        self.phase, self._delay = Phase.LIST, 0.0
        return Changes(end_stream=True)

    def _retry_watch(self) -> None:
        self.phase = Phase.WATCH
        self._delay = self.backoff.delay(self._attempt)
        self._attempt += 1


def _describe(status: int, reason: str) -> str:
    return f"HTTP {status}: {reason}" if status else reason


# ---------------------------------------------------------------- the stream's framing


class LineDecoder:
    """Newline-delimited events from the chunks of a watch stream."""

    def __init__(self, max_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buffer = bytearray()
        self._max = max_bytes

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buffer += chunk
        if b"\n" not in chunk:  # a long event arriving in pieces: no need to split the whole buffer again
            if len(self._buffer) > self._max:
                raise MalformedEvent(f"an event longer than {self._max} bytes")
            return []
        *lines, rest = self._buffer.split(b"\n")
        if len(rest) > self._max:
            raise MalformedEvent(f"an event longer than {self._max} bytes")
        self._buffer = bytearray(rest)
        for line in lines:
            if len(line) > self._max:
                raise MalformedEvent(f"an event longer than {self._max} bytes")
        return [bytes(line) for line in lines if line.strip()]

    @property
    def pending(self) -> int:
        return len(self._buffer)


WATCH_EVENT_TYPES = ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR")


def decode_event(line: bytes) -> dict:
    """``{"type": ..., "object": {...}}``, checked; raises MalformedEvent."""
    try:
        event = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise MalformedEvent(f"an event that is not JSON ({exc})") from None
    if not isinstance(event, dict) or event.get("type") not in WATCH_EVENT_TYPES:
        raise MalformedEvent("an event without a known type")
    if not isinstance(event.get("object"), dict):
        raise MalformedEvent(f"a {event['type']} event without an object")
    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
        object_key(event["object"])
    return event
