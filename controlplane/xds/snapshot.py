"""What discovery serves: a versioned snapshot of resources, and the publisher that hands it out.

The control plane computes the dataplane view (``controlplane.view``), turns it into a ``Snapshot``: for each
type URL, resource name → ``VersionedResource`` (the packed ``Any`` and a version that is a digest
of its bytes, so the same content has the same version across restarts and a reconnecting client
that sends ``initial_resource_versions`` is not sent what it already has). ``Publisher`` holds the
current snapshot; discovery streams (one gRPC thread each) wait on it for a newer one and work out
per stream what changed. Snapshots are immutable, so a stream can diff two of them without locks.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.any_pb2 import Any


@dataclass(frozen=True)
class VersionedResource:
    name: str
    version: str
    body: Any  # packed resource; treat as read-only

    _message: discovery_pb2.Resource | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def message(self) -> discovery_pb2.Resource:
        """The wire form, built once and shared by every stream that sends it (copying a built
        message is C code; building one per stream was most of the cost of a full push). Not
        functools.cached_property: on Python 3.11 it serialises every instance on one lock. Two
        streams racing here build two equal messages, which is harmless."""
        message = self._message
        if message is None:
            message = discovery_pb2.Resource(name=self.name, version=self.version, resource=self.body)
            object.__setattr__(self, "_message", message)
        return message

    @classmethod
    def of(cls, name: str, body: Any) -> VersionedResource:
        digest = hashlib.blake2b(body.value, digest_size=8)
        digest.update(body.type_url.encode())
        return cls(name, digest.hexdigest(), body)


def _frozen(resources: Mapping[str, Mapping[str, VersionedResource]]):
    return MappingProxyType({t: MappingProxyType(dict(r)) for t, r in resources.items()})


@dataclass(frozen=True)
class Snapshot:
    """``resources[type_url][name]``; ``version`` increases with every publish.

    ``delta[type_url]`` is ``(changed, removed)``: the names that are new or have another version
    than in snapshot ``version - 1``, and the names that were there and are gone. A stream whose
    client was in step with the previous snapshot needs to look only at those, not at every name.
    None for the first snapshot (or one built without its predecessor)."""

    version: int
    resources: Mapping[str, Mapping[str, VersionedResource]] = field(default_factory=dict)
    delta: Mapping[str, tuple[frozenset[str], frozenset[str]]] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "resources", _frozen(self.resources))

    def successor(self, resources: Mapping[str, Mapping[str, VersionedResource]]) -> Snapshot:
        """The next snapshot, with its delta from this one."""
        delta = {}
        for type_url in set(resources) | set(self.resources):
            new, old = resources.get(type_url, {}), self.of_type(type_url)
            changed = frozenset(n for n, r in new.items() if (o := old.get(n)) is None or o.version != r.version)
            delta[type_url] = (changed, frozenset(n for n in old if n not in new))
        return Snapshot(self.version + 1, resources, MappingProxyType(delta))

    def of_type(self, type_url: str) -> Mapping[str, VersionedResource]:
        return self.resources.get(type_url, MappingProxyType({}))


class Publisher:
    """The current snapshot, shared between the control plane (writer) and discovery streams.

    Thread-safe: gRPC serves each stream on its own thread. A stream, which also waits for its
    client's requests, ``subscribe``s a wake-up callback, so that it blocks on one queue of its own
    rather than polling two sources.
    """

    def __init__(self) -> None:
        self._snapshot = Snapshot(0, {})
        self._lock = threading.Lock()
        self._closed = False
        self._wakers: list[Callable[[], None]] = []

    def current(self) -> Snapshot:
        return self._snapshot

    def publish(self, resources: Mapping[str, Mapping[str, VersionedResource]]) -> Snapshot:
        with self._lock:
            self._snapshot = snapshot = self._snapshot.successor(resources)
            wakers = list(self._wakers)
        self._wake(wakers)
        return snapshot

    def close(self) -> None:
        """Wake every subscriber for good (server shutdown)."""
        with self._lock:
            self._closed = True
            wakers = list(self._wakers)
        self._wake(wakers)

    def subscribe(self, wake: Callable[[], None]) -> None:
        """Call ``wake()`` after every publish and on close, on the publishing thread: it must be
        quick and must not block (put a token on a queue). It is not told which version; read
        ``current()`` and ``closed``."""
        with self._lock:
            self._wakers.append(wake)

    def unsubscribe(self, wake: Callable[[], None]) -> None:
        """Stop calling ``wake``; a callback that is not subscribed is ignored."""
        with self._lock:
            if wake in self._wakers:
                self._wakers.remove(wake)

    @staticmethod
    def _wake(wakers: list[Callable[[], None]]) -> None:
        # Outside the lock: a callback may take locks of its own (queue.Queue does).
        for wake in wakers:
            wake()

    @property
    def closed(self) -> bool:
        return self._closed
