"""The trio side of discovery: a delta xDS client that keeps the last good view of each type.

Two layers. ``ClientState`` is sans-IO: it holds the subscriptions, the decoded resources and
their versions, turns a ``DeltaDiscoveryResponse`` into an ACK (applied) or a NACK (rejected as a
whole, view untouched) and produces the requests that open a stream, with
``initial_resource_versions`` so that a reconnect does not download again what is unchanged.

``DiscoveryClient.run`` drives it over gRPC and TLS, trusting only the mesh root it is given.
grpcio is blocking, so each stream uses two helper threads: grpcio's own, which pulls requests
from a ``queue.Queue`` we feed, and a trio worker thread that waits in ``next(call)``. Leaving a
stream (error or cancellation) ends both: a sentinel ends the request queue, and a sibling task
cancels the call as soon as the stream's scope is cancelled, which makes the blocked ``next``
raise at once. So the worker need not be abandoned (``abandon_on_cancel``): it is waited for, and
no thread outlives ``run``. A broken stream is retried with exponential backoff and jitter (reset
once a stream delivers a response); meanwhile ``view`` keeps returning the last good resources
and ``connected`` is False.

For ztunnel's ``/metrics`` (Istio's ``src/xds/metrics.rs``) the client counts what it received and why
its streams ended: ``ClientState.messages`` (type URL → responses received, applied or not; unknown type URLs
all under ``OTHER_TYPE_URL``) and
``received_bytes`` (the resources' payload bytes), ``DiscoveryClient.terminations`` (reason →
streams ended, ``termination_reason``).

A caller learns about updates through ``changes()`` (each applied response as a ``Change``: which
names it updated or removed) or ``wait_until(predicate)``, woken whenever anything changed.
"""

from __future__ import annotations

import logging
import queue
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

import grpc
import trio
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2

from mesh.api.types import (
    ADDRESS_TYPE_URL,
    AUTHORIZATION_TYPE_URL,
    L7_POLICY_TYPE_URL,
    METHOD_PATH,
    ROUTE_TYPE_URL,
    WASM_PLUGIN_TYPE_URL,
    WILDCARD,
    unpack,
)
from mesh.backoff import Backoff
from mesh.certs import CertificateError
from mesh.private_files import private_directory, read_private, write_private
from mesh.xds import cache

log = logging.getLogger("ambient.xds.client")

KNOWN_TYPE_URLS = frozenset({ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, L7_POLICY_TYPE_URL, ROUTE_TYPE_URL,
                             WASM_PLUGIN_TYPE_URL})
MAX_NACK_MESSAGE = 4096  # error_detail is for humans and logs; do not echo megabytes back
CHANGE_HISTORY = 4096
# Responses of a type URL the mesh does not know are counted under this one label, so a server that
# sends made-up type URLs cannot grow ``messages`` (and /metrics' label series) without bound.
OTHER_TYPE_URL = "other"
VIEW_FILE = "discovery.view"  # in ClientConfig.cache_dir
# A saved view larger than this is not read: the server's own responses are bounded the same way.
MAX_SAVED_VIEW_BYTES = 256 * 1024 * 1024

Validate = Callable[[str, str, Message], None]  # (type URL, name, message); raises ValueError to reject
Applied = tuple[frozenset[str], frozenset[str]]  # the names a response updated, and those it removed

# Why a stream ended, with the label values of Istio's ztunnel (``ConnectionTerminationReason``).
CONNECTION_ERROR = "ConnectionError"  # no stream could be established (the server unreachable)
ERROR = "Error"  # the stream failed with a gRPC status
RECONNECT = "Reconnect"  # the server let go of the stream in the ordinary way (restart, GOAWAY, max age)
COMPLETE = "Complete"  # the server ended the stream with OK
TERMINATION_REASONS = (CONNECTION_ERROR, ERROR, RECONNECT, COMPLETE)
_RECONNECT_CODES = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED})
# gRPC-Go's words for a server going away, and grpcio's (a stopping server cancels its calls so).
_RECONNECT_DETAILS = ("transport is closing", "received prior goaway", "cancelling all calls")


def termination_reason(code: grpc.StatusCode | None, details: str, established: bool) -> str:
    """The reason (``TERMINATION_REASONS``) a stream ended, as Istio's ztunnel classifies it: ``code``
    None is an end with OK; ``established`` tells whether any response came on the stream.

    grpcio connects lazily, so a stream that never delivered anything and ended UNAVAILABLE is
    taken as one that could not be established. Istio's ztunnel reconnects at once after
    UNKNOWN, CANCELLED, DEADLINE_EXCEEDED or an UNAVAILABLE that says the server is going away
    (``_RECONNECT_DETAILS``): those are ``Reconnect``, any other status ``Error``."""
    if code is None:
        return COMPLETE
    if code == grpc.StatusCode.UNAVAILABLE and not established:
        return CONNECTION_ERROR
    if code in _RECONNECT_CODES or (code == grpc.StatusCode.UNAVAILABLE
                                    and any(d in details.lower() for d in _RECONNECT_DETAILS)):
        return RECONNECT
    return ERROR


@dataclass(frozen=True)
class ClientConfig:
    """``subscriptions``: type URL → resource names, or None for every resource of the type."""

    target: str
    root_pem: bytes = field(repr=False)
    # The bearer token, or a function that gives it (read again for every stream: Kubernetes rotates a
    # projected token by replacing its file; an error from it fails that stream only: ``mesh.token_file``).
    token: str | Callable[[], str] = field(repr=False)
    subscriptions: Mapping[str, frozenset[str] | None]
    server_name: str | None = None  # TLS name to check instead of the target's host
    node_id: str = ""
    # Reconnects: 0.5 s doubling to 30 s, each up to half shorter at random.
    backoff: Backoff = Backoff(initial=0.5, cap=30.0, multiplier=2.0, jitter=0.5)
    max_response_bytes: int = 64 * 1024 * 1024
    # Where the last good view is kept across restarts (``mesh.xds.cache``); None: not kept.
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.backoff.initial <= 0:
            raise ValueError(f"the reconnect backoff must start above 0 s, or a down server is called in a busy "
                             f"loop: {self.backoff}")
        if b"-----BEGIN CERTIFICATE-----" not in self.root_pem:
            # grpc would fall back to the system's roots: never trust anything but the mesh root.
            raise ValueError("root_pem must hold the mesh root certificate in PEM")
        if not callable(self.token) and not self.token:
            raise ValueError("a bearer token is required")
        if not self.subscriptions:
            raise ValueError("subscribe to at least one type URL")
        normalized: dict[str, frozenset[str] | None] = {}
        for type_url, names in self.subscriptions.items():
            if type_url not in KNOWN_TYPE_URLS:
                raise ValueError(f"unknown type URL {type_url!r} (known: {', '.join(sorted(KNOWN_TYPE_URLS))})")
            if isinstance(names, str):
                raise ValueError(f"{type_url}: names must be a collection of names, not one string")
            if names is not None and (WILDCARD in names or "" in names or not names):
                raise ValueError(f"{type_url}: use None, not {WILDCARD!r}, for every resource; otherwise name "
                                 "at least one resource, each a non-empty name")
            normalized[type_url] = None if names is None else frozenset(names)
        object.__setattr__(self, "subscriptions", MappingProxyType(normalized))


@dataclass(frozen=True)
class Change:
    """One applied response: ``updated`` are the names it carried (new or changed), ``removed``
    the names it deleted from the view. ``seq`` counts changes of this client from 1."""

    seq: int
    type_url: str
    updated: frozenset[str]
    removed: frozenset[str]


class ChangesLost(Exception):
    """A ``changes()`` consumer fell more than ``CHANGE_HISTORY`` changes behind: re-read ``view``
    and resume with ``changes(after=client.change_seq)``."""


def _status(message: str) -> status_pb2.Status:
    if len(message) > MAX_NACK_MESSAGE:
        message = message[: MAX_NACK_MESSAGE - 3] + "..."
    return status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message)


class ClientState:
    """Subscriptions and the last good view, without I/O; see the module docstring."""

    def __init__(self, subscriptions: Mapping[str, frozenset[str] | None], validate: Validate | None = None,
                 node_id: str = "") -> None:
        self._subscriptions = {t: (None if n is None else set(n)) for t, n in subscriptions.items()}
        self._validate = validate
        self._node = base_pb2.Node(id=node_id) if node_id else None
        self._views: dict[str, dict[str, Message]] = {t: {} for t in subscriptions}
        self._versions: dict[str, dict[str, str]] = {t: {} for t in subscriptions}
        self._messages: dict[str, int] = {}
        self.received_bytes = 0  # the payload bytes of every resource received

    @property
    def messages(self) -> Mapping[str, int]:
        """type URL → responses received (applied, NACKed or of a type not subscribed to)."""
        return MappingProxyType(self._messages)

    def view(self, type_url: str) -> Mapping[str, Message]:
        return MappingProxyType(self._views[type_url])

    def versions(self, type_url: str) -> Mapping[str, str]:
        return MappingProxyType(self._versions[type_url])

    def initial_requests(self) -> list[discovery_pb2.DeltaDiscoveryRequest]:
        """The first request of each type on a new stream: everything we want, and what we hold.

        A type whose explicit names were all unsubscribed is left out: a first request naming
        nothing would be read as the legacy wildcard, i.e. everything."""
        requests: list[discovery_pb2.DeltaDiscoveryRequest] = []
        for type_url, names in self._subscriptions.items():
            if names is not None and not names:
                continue
            request = discovery_pb2.DeltaDiscoveryRequest(
                type_url=type_url,
                resource_names_subscribe=[WILDCARD] if names is None else sorted(names),
                initial_resource_versions=self._versions[type_url],
            )
            if self._node is not None and not requests:  # the node goes in the first request only
                request.node.CopyFrom(self._node)
            requests.append(request)
        return requests

    def on_response(
        self, response: discovery_pb2.DeltaDiscoveryResponse,
    ) -> tuple[discovery_pb2.DeltaDiscoveryRequest, Applied | None, str | None]:
        """Apply ``response`` or reject it whole. Returns (ACK or NACK request, (updated, removed)
        names or None if rejected, the rejection message or None)."""
        type_url = response.type_url
        counted = type_url if type_url in KNOWN_TYPE_URLS else OTHER_TYPE_URL
        self._messages[counted] = self._messages.get(counted, 0) + 1
        self.received_bytes += sum(len(r.resource.value) for r in response.resources)
        reply = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=response.nonce)
        error = self._check(response)
        if error is not None:
            reply.error_detail.CopyFrom(_status(error))
            return reply, None, error
        decoded, problems = self._decode(response)
        if problems:
            error = (f"rejected {len(problems)} of {len(response.resources)} {type_url} resources "
                     f"(nonce {response.nonce}); keeping the previous ones: " + "; ".join(problems))
            reply.error_detail.CopyFrom(_status(error))
            return reply, None, error

        view, versions = self._views[type_url], self._versions[type_url]
        for name, (version, message) in decoded.items():
            view[name], versions[name] = message, version
        removed = {name for name in response.removed_resources if name in view}
        for name in removed:
            del view[name], versions[name]
        return reply, (frozenset(decoded), frozenset(removed)), None

    def _decode(self, response: discovery_pb2.DeltaDiscoveryResponse) -> tuple[dict[str, tuple[str, Message]],
                                                                               list[str]]:
        """Each wanted resource decoded and validated: (name → (version, message), problems)."""
        type_url = response.type_url
        decoded: dict[str, tuple[str, Message]] = {}
        problems: list[str] = []
        wanted = self._subscriptions[type_url]
        for resource in response.resources:
            if wanted is not None and resource.name not in wanted:
                continue  # not asked for: ignored, as the protocol says clients do
            try:
                message = unpack(resource.resource, type_url)
                if self._validate is not None:
                    self._validate(type_url, resource.name, message)
            except ValueError as exc:
                problems.append(f"{resource.name}: {exc}")
                continue
            decoded[resource.name] = (resource.version, message)
        return decoded, problems

    def saved(self) -> bytes:
        """What ``restore`` reads back: every resource held, with its version (``mesh.xds.cache``)."""
        return cache.encode({t: [(name, self._versions[t][name], message) for name, message in view.items()]
                             for t, view in self._views.items()})

    def restore(self, data: bytes) -> int:
        """Load a view ``saved`` earlier, checked as a server's response is; the number of resources.
        ``ValueError`` (nothing loaded) if any part of it would be rejected."""
        loaded: dict[str, dict[str, tuple[str, Message]]] = {}
        for response in cache.decode(data):
            error = self._check(response)
            decoded, problems = self._decode(response) if error is None else ({}, [error])
            if problems:
                raise ValueError(f"saved {response.type_url} view refused: " + "; ".join(problems[:5]))
            loaded[response.type_url] = decoded
        for type_url, decoded in loaded.items():
            self._views[type_url] = {name: message for name, (_, message) in decoded.items()}
            self._versions[type_url] = {name: version for name, (version, _) in decoded.items()}
        return sum(map(len, loaded.values()))

    def _check(self, response: discovery_pb2.DeltaDiscoveryResponse) -> str | None:
        if response.type_url not in self._subscriptions:
            return f"not subscribed to type URL {response.type_url!r}"
        names = [r.name for r in response.resources]
        if len(set(names)) != len(names):
            duplicates = sorted({n for n in names if names.count(n) > 1})
            return f"response names a resource more than once: {', '.join(duplicates)}"
        return None

    def subscribe(self, type_url: str, names: frozenset[str]) -> discovery_pb2.DeltaDiscoveryRequest | None:
        """Add ``names`` to an explicit subscription; the request to send, or None if nothing new."""
        wanted = self._explicit(type_url)
        _check_names(names)
        new = set(names) - wanted
        if not new:
            return None
        wanted |= new
        return discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, resource_names_subscribe=sorted(new))

    def unsubscribe(self, type_url: str,
                    names: frozenset[str]) -> tuple[discovery_pb2.DeltaDiscoveryRequest | None, frozenset[str]]:
        """Drop ``names`` (and their resources). Returns (request or None, names removed from the view)."""
        wanted = self._explicit(type_url)
        gone = set(names) & wanted
        if not gone:
            return None, frozenset()
        wanted -= gone
        dropped = frozenset(n for n in gone if n in self._views[type_url])
        for name in dropped:
            del self._views[type_url][name], self._versions[type_url][name]
        request = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, resource_names_unsubscribe=sorted(gone))
        return request, dropped

    def _explicit(self, type_url: str) -> set[str]:
        if type_url not in self._subscriptions:
            raise ValueError(f"not subscribed to {type_url!r}; the types are fixed when the client is made")
        wanted = self._subscriptions[type_url]
        if wanted is None:
            raise ValueError(f"{type_url} is a wildcard subscription: it already gets every name")
        return wanted


def _check_names(names: frozenset[str]) -> None:
    if any(not isinstance(n, str) or not n or n == WILDCARD for n in names):
        raise ValueError(f"resource names are non-empty strings other than {WILDCARD!r}: {sorted(map(repr, names))}")


# A stream's requests, in order; None ends the request generator grpcio is iterating.
Outbox = queue.Queue[discovery_pb2.DeltaDiscoveryRequest | None]


class _ResponseStream(Protocol):
    """What the client uses of grpcio's stream-stream call: its responses, and cancel()."""

    def __next__(self) -> discovery_pb2.DeltaDiscoveryResponse: ...

    def cancel(self) -> bool: ...


def _requests(outbox: Outbox) -> Iterator[discovery_pb2.DeltaDiscoveryRequest]:
    while (request := outbox.get()) is not None:
        yield request


async def _cancel_when_cancelled(call: _ResponseStream) -> None:
    try:
        await trio.sleep_forever()
    finally:
        call.cancel()


def _next_response(call: _ResponseStream) -> discovery_pb2.DeltaDiscoveryResponse | None:
    """Blocking, in a worker thread; None once the server ends the stream with OK."""
    try:
        return next(call)
    except StopIteration:
        return None


class DiscoveryClient:
    """Keeps ``view(type_url)`` in step with the discovery server; see the module docstring.

    ``await nursery.start(client.run)`` returns once the first response of every subscribed type has
    been applied (a type whose first response was NACKed keeps ``start`` waiting: put a bound on it
    with ``trio.fail_after``). ``validate(type_url, name, message)`` may raise ValueError to reject a
    resource; the whole response is then NACKed with that message and the previous view kept.
    """

    def __init__(self, config: ClientConfig, validate: Validate | None = None) -> None:
        self._config = config
        self._state = ClientState(config.subscriptions, validate, config.node_id)
        self._connected = False
        self._outbox: Outbox | None = None  # the live stream's requests, if any
        self._running = False
        self._seq = 0
        self._history: deque[Change] = deque(maxlen=CHANGE_HISTORY)
        self._changed = trio.Event()
        self._stale = False  # serving a view saved before a restart, not yet confirmed by the server
        self._synced = False  # a stream has delivered every subscribed type at least once
        self.responses_applied = 0  # counters, for logs and tests
        self.saves = 0  # views written to ClientConfig.cache_dir
        self.responses_rejected = 0
        self._terminations: dict[str, int] = {}

    # -- reading the view

    def view(self, type_url: str) -> Mapping[str, Message]:
        """name → decoded message (``Address`` or ``Authorization``): the last good state, kept while
        disconnected. A read-only live mapping: copy it to keep a snapshot."""
        return self._state.view(type_url)

    @property
    def connected(self) -> bool:
        """True while a stream is up and has delivered at least one response."""
        return self._connected

    @property
    def stale(self) -> bool:
        """True while the view is the one saved before a restart (``ClientConfig.cache_dir``) and no
        stream has brought it up to date yet."""
        return self._stale

    @property
    def messages(self) -> Mapping[str, int]:
        """type URL → responses received (``ClientState.messages``)."""
        return self._state.messages

    @property
    def received_bytes(self) -> int:
        return self._state.received_bytes

    @property
    def terminations(self) -> Mapping[str, int]:
        """reason (``TERMINATION_REASONS``) → streams that ended so; ``wait_until`` wakes on each."""
        return MappingProxyType(self._terminations)

    @property
    def change_seq(self) -> int:
        return self._seq

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; it is re-checked after every change of the view or of
        ``connected``. Put a bound on it with ``trio.fail_after``."""
        while not predicate():
            await self._changed.wait()

    def changes(self, after: int | None = None) -> AsyncIterator[Change]:
        """Every change applied after ``after`` (default: after this call), in order, forever.

        Raises ``ChangesLost`` if the consumer falls more than ``CHANGE_HISTORY`` changes behind."""
        # Not an async generator itself: "from now on" is fixed at the call, not at the first
        # iteration, so a change between the two is not missed.
        return self._changes_after(self._seq if after is None else after)

    async def _changes_after(self, seq: int) -> AsyncIterator[Change]:
        while True:
            await self.wait_until(partial(self._changed_after, seq))
            if self._history[0].seq > seq + 1:
                raise ChangesLost(f"changes {seq + 1}..{self._history[0].seq - 1} are no longer kept")
            for change in list(self._history):
                if change.seq > seq:
                    seq = change.seq
                    yield change

    def _changed_after(self, seq: int) -> bool:
        return self._seq > seq

    # -- changing the subscription while running

    def subscribe(self, type_url: str, names: Iterable[str]) -> None:
        """Also want ``names`` of ``type_url`` (an explicit subscription)."""
        request = self._state.subscribe(type_url, frozenset(names))
        if request is not None and self._outbox is not None:
            self._outbox.put(request)

    def unsubscribe(self, type_url: str, names: Iterable[str]) -> None:
        """Stop wanting ``names``; they leave the view at once (reported as a ``Change``)."""
        request, dropped = self._state.unsubscribe(type_url, frozenset(names))
        if request is not None and self._outbox is not None:
            self._outbox.put(request)
        if dropped:
            self._record(type_url, frozenset(), dropped)

    # -- the connection

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Stay connected until cancelled, reconnecting with backoff; see the class docstring."""
        if self._running:
            raise RuntimeError("DiscoveryClient.run() is already running")
        self._running = True
        started = False

        def synced() -> None:
            nonlocal started
            self._synced = True
            if self._stale:
                self._stale = False
                log.info("discovery: the view from %s replaces the saved one", self._config.target)
                self._notify()
            if not started:
                started = True
                task_status.started()

        if self._restore_saved():
            started = True
            task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                if self._config.cache_dir is not None:
                    nursery.start_soon(self._keep_saved, self._config.cache_dir / VIEW_FILE)
                await self._keep_connected(synced)
        finally:
            self._running = False
            self._set_connected(False)

    def _restore_saved(self) -> bool:
        """Serve the view saved before a restart, if there is a good one (``mesh.xds.cache``)."""
        if self._config.cache_dir is None:
            return False
        path = self._config.cache_dir / VIEW_FILE
        try:
            private_directory(self._config.cache_dir)
            data = read_private(path, MAX_SAVED_VIEW_BYTES)
            if data is None:
                return False
            count = self._state.restore(data)
        except (OSError, ValueError) as exc:
            log.error("discovery: not using the saved view %s: %s; waiting for %s", path, exc, self._config.target)
            return False
        self._stale = True
        self._notify()
        log.warning("discovery: serving the view saved in %s (%d resources) until %s answers", path, count,
                    self._config.target)
        return True

    async def _keep_saved(self, path: Path) -> None:
        """Save the view after it changes (not while it is the stale one), at most every SAVE_INTERVAL."""
        seen = self._seq
        while True:
            await self.wait_until(partial(self._unsaved, seen))
            seen = self._seq
            data = self._state.saved()
            try:
                await trio.to_thread.run_sync(write_private, path, data)
            except OSError as exc:
                log.warning("discovery: cannot save the view to %s: %s", path, exc)
            else:
                self.saves += 1
                self._notify()
            await trio.sleep(cache.SAVE_INTERVAL)

    def _unsaved(self, saved_seq: int) -> bool:
        # Saved once every type has arrived (a view missing a type would pass for a whole one).
        return self._seq != saved_seq and self._synced and not self._stale

    async def _keep_connected(self, synced: Callable[[], None]) -> None:
        failures = 0
        while True:
            delivered = False

            def delivered_once() -> None:
                nonlocal delivered
                delivered = True

            description, reason = await self._stream(synced, delivered_once)
            self._terminations[reason] = self._terminations.get(reason, 0) + 1
            self._set_connected(False)
            self._notify()
            if delivered:
                failures = 0  # a stream that worked resets the backoff
            delay = self._config.backoff.delay(failures)
            failures += 1
            log.warning("discovery stream to %s ended (%s); serving the last good view, retrying in %.2fs",
                        self._config.target, description, delay)
            await trio.sleep(delay)

    def _channel(self) -> grpc.Channel:
        options: list[tuple[str, int | str]] = [
            ("grpc.max_receive_message_length", self._config.max_response_bytes),
            # A server that vanishes without closing the connection is noticed within ~40 s, and
            # the client reconnects, instead of waiting for TCP's timeout. The server allows this rate.
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
        ]
        if self._config.server_name:
            options.append(("grpc.ssl_target_name_override", self._config.server_name))
        credentials = grpc.ssl_channel_credentials(root_certificates=self._config.root_pem)
        return grpc.secure_channel(self._config.target, credentials, options)

    async def _stream(self, synced: Callable[[], None], delivered: Callable[[], None]) -> tuple[str, str]:
        """One stream, until it fails, the server ends it, or we are cancelled; returns why it ended
        (for the log, and as ``termination_reason``)."""
        established = False
        outbox: Outbox = queue.Queue()
        initial = self._state.initial_requests()
        for request in initial:
            outbox.put(request)
        awaiting_first = {r.type_url for r in initial}
        try:
            token = self._config.token() if callable(self._config.token) else self._config.token
            if not token:
                raise ValueError("the bearer token is empty")
        except (OSError, ValueError, CertificateError) as exc:  # the next try reads it again
            return f"no bearer token: {exc}", CONNECTION_ERROR
        channel = self._channel()
        call = channel.stream_stream(
            METHOD_PATH,
            request_serializer=discovery_pb2.DeltaDiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DeltaDiscoveryResponse.FromString,
        )(_requests(outbox), metadata=(("authorization", f"Bearer {token}"),))
        self._outbox = outbox
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_when_cancelled, call)
                try:
                    while True:
                        # Not abandoned on cancel: the sibling task cancels the call, which ends the
                        # blocked next() at once, so no worker thread outlives this stream.
                        response = await trio.to_thread.run_sync(_next_response, call)
                        if response is None:
                            return "the server ended the stream", termination_reason(None, "", established)
                        established = True
                        delivered()
                        self._apply(response, outbox, awaiting_first)
                        if not awaiting_first:
                            synced()
                except grpc.RpcError as exc:  # caught here: the nursery would wrap it in a group
                    code, details = exc.code(), exc.details() or ""
                    return f"{code.name}: {details}", termination_reason(code, details, established)
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self._outbox = None
            outbox.put(None)  # ends grpcio's request thread, blocked in our generator
            call.cancel()
            channel.close()

    def _apply(self, response: discovery_pb2.DeltaDiscoveryResponse, outbox: Outbox,
               awaiting_first: set[str]) -> None:
        reply, applied, error = self._state.on_response(response)
        outbox.put(reply)
        if applied is None:
            self.responses_rejected += 1
            log.warning("NACK of %s nonce %s: %s", response.type_url, response.nonce, error)
        else:
            self.responses_applied += 1
            awaiting_first.discard(response.type_url)
            self._record(response.type_url, *applied)
            log.debug("applied %s nonce %s: %d updated, %d removed", response.type_url,
                      response.nonce, len(applied[0]), len(applied[1]))
        self._set_connected(True)

    def _record(self, type_url: str, updated: frozenset[str], removed: frozenset[str]) -> None:
        if updated or removed:
            self._seq += 1
            self._history.append(Change(self._seq, type_url, updated, removed))
        self._notify()

    def _set_connected(self, connected: bool) -> None:
        if connected != self._connected:
            self._connected = connected
            log.info("discovery %s %s", "connected to" if connected else "disconnected from", self._config.target)
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
