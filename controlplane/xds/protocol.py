"""The server side of one delta xDS stream, without I/O: requests and snapshots in, responses out.

A ``DeltaStream`` keeps, for each type URL the client asked for, its subscription (wildcard and/or
explicit names), what the client holds (name → version: what we sent it, or what it said it had in
``initial_resource_versions`` when it reconnected) and the nonces of responses not yet (N)ACKed.
``on_request`` applies a ``DeltaDiscoveryRequest``: subscription changes, an ACK or a NACK; it
returns the responses to send and ``Event``s for the driver to log. ``on_snapshot`` diffs a new
snapshot against what the client holds and returns one response per type that changed: updated
resources in ``resources``, names the client holds that are gone in ``removed_resources``; nothing
at all when nothing it sees changed. Because the diff is against the client's holdings, not against
the previous snapshot, a stream that skipped intermediate snapshots still sends exactly what moves
the client to the newest one.

Protocol points (Envoy's "xDS REST and gRPC protocol", sections "Incremental xDS" and "How the
client specifies what resources to return"):

- The first request for a type is a wildcard subscription if it names nothing (the legacy form) or
  subscribes to ``"*"``; later, ``"*"`` can be subscribed and unsubscribed like any name.
- The first request for a type is always answered, even with an empty response, so the client
  knows it holds the server's current state. Later requests that change nothing visible (ACKs, an
  unsubscribe) get no response.
- A newly subscribed name is sent even if the client seems to hold it; one that does not exist is
  answered in ``removed_resources``, so the client need not wait for a timeout to learn that.
- A NACK leaves the client's holdings as sent: the server does not resend the version the client
  rejected, and sends that resource again only once it changes.
- Unknown type URLs are flagged (``UnknownType``) and otherwise ignored; a request without a type
  URL is the peer's fault (``ProtocolError``, answered with INVALID_ARGUMENT) and ends the stream.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from envoy.service.discovery.v3 import discovery_pb2

from controlplane.xds.snapshot import Snapshot, VersionedResource
from mesh.api.types import (
    ADDRESS_TYPE_URL,
    AUTHORIZATION_TYPE_URL,
    L7_POLICY_TYPE_URL,
    ROUTE_TYPE_URL,
    WASM_PLUGIN_TYPE_URL,
    WILDCARD,
)

# Every type the control plane publishes (controlplane.view.DataplaneView.resources): ztunnels ask for
# the first two, waypoints for all of them.
DEFAULT_TYPE_URLS = frozenset({ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, L7_POLICY_TYPE_URL, ROUTE_TYPE_URL,
                               WASM_PLUGIN_TYPE_URL})
# Responses a client may leave un-(N)ACKed before the oldest nonce is forgotten; a late (N)ACK of a
# forgotten nonce is reported as UnknownNonce. Bounds the memory of a client that never ACKs.
MAX_NONCES_IN_FLIGHT = 64


class ProtocolError(Exception):
    """The client broke the protocol; the stream must end with ``status`` (a gRPC code name)."""

    status = "INVALID_ARGUMENT"


# Events: what a request meant, for the driver's logs and metrics. Frozen, no behaviour.


@dataclass(frozen=True)
class Subscribed:
    """The subscription for ``type_url`` is now ``wildcard`` plus ``names``; ``first`` on the
    first request for the type, where ``client_holds`` counts its ``initial_resource_versions``."""

    type_url: str
    wildcard: bool
    names: frozenset[str]
    first: bool
    client_holds: int = 0


@dataclass(frozen=True)
class Acked:
    type_url: str
    nonce: str


@dataclass(frozen=True)
class Nacked:
    """The client rejected the response ``nonce`` and keeps its previous resources."""

    type_url: str
    nonce: str
    code: int  # google.rpc.Code the client put in error_detail
    message: str


@dataclass(frozen=True)
class UnknownNonce:
    """An ACK/NACK of a nonce this stream has no response in flight for (forgotten or foreign);
    ``error`` is the NACK's message, None for an ACK."""

    type_url: str
    nonce: str
    error: str | None


@dataclass(frozen=True)
class UnknownType:
    type_url: str


Event = Subscribed | Acked | Nacked | UnknownNonce | UnknownType


@dataclass(frozen=True)
class Outcome:
    events: tuple[Event, ...] = ()
    responses: tuple[discovery_pb2.DeltaDiscoveryResponse, ...] = ()


@dataclass
class _TypeState:
    """One type URL on one stream. ``holds`` is the client's view as far as we know it."""

    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    holds: dict[str, str] = field(default_factory=dict)
    # Names the client must hear about in the next response: their holdings were dropped, so the
    # ones that exist are sent again; the ones that do not are listed as removed.
    owed: set[str] = field(default_factory=set)
    in_flight: dict[str, None] = field(default_factory=dict)  # nonces, oldest first
    # The snapshot version that ``holds`` matches for every wanted name (None: not known, e.g. after
    # a subscription change): from there, only the next snapshot's delta needs looking at.
    in_step_with: int | None = None

    def wants(self, name: str) -> bool:
        return self.wildcard or name in self.names


class DeltaStream:
    """One DeltaAggregatedResources stream's state; see the module docstring."""

    def __init__(self, type_urls: Iterable[str] = DEFAULT_TYPE_URLS) -> None:
        self._known = frozenset(type_urls)
        self._types: dict[str, _TypeState] = {}
        self._nonces = itertools.count(1)
        self._failed = False

    def subscriptions(self) -> Mapping[str, tuple[bool, frozenset[str]]]:
        """type URL → (wildcard, explicit names), for logs and tests."""
        return {t: (s.wildcard, frozenset(s.names)) for t, s in self._types.items()}

    def holdings(self, type_url: str) -> Mapping[str, str]:
        """What we believe the client holds of ``type_url``: name → version."""
        state = self._types.get(type_url)
        return dict(state.holds) if state else {}

    def on_request(self, request: discovery_pb2.DeltaDiscoveryRequest, snapshot: Snapshot) -> Outcome:
        """Apply one request; ``snapshot`` is the newest one, which any response is built from.

        Raises ``ProtocolError`` for a request the stream cannot go on after."""
        self._check_open()
        type_url = request.type_url
        if not type_url:
            self._failed = True
            raise ProtocolError("DeltaDiscoveryRequest has no type_url")
        if type_url not in self._known:
            return Outcome(events=(UnknownType(type_url),))

        events: list[Event] = []
        state = self._types.get(type_url)
        first = state is None
        if state is None:
            state = self._types[type_url] = self._first_subscription(request)
            events.append(Subscribed(type_url, state.wildcard, frozenset(state.names), True,
                                     len(request.initial_resource_versions)))
        elif request.resource_names_subscribe or request.resource_names_unsubscribe:
            self._change_subscription(state, request)
            events.append(Subscribed(type_url, state.wildcard, frozenset(state.names), False))

        if request.response_nonce:
            events.append(self._ack_or_nack(type_url, state, request))

        response = self._diff(type_url, state, snapshot, always=first)
        return Outcome(tuple(events), (response,) if response is not None else ())

    def on_snapshot(self, snapshot: Snapshot) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        """The responses that bring the client from what it holds to ``snapshot``; [] if none."""
        self._check_open()
        responses = (self._diff(t, s, snapshot, always=False) for t, s in self._types.items())
        return [r for r in responses if r is not None]

    def _check_open(self) -> None:
        if self._failed:
            raise RuntimeError("DeltaStream used after a ProtocolError ended it")

    @staticmethod
    def _first_subscription(request: discovery_pb2.DeltaDiscoveryRequest) -> _TypeState:
        subscribe = set(request.resource_names_subscribe)
        legacy_wildcard = not subscribe and not request.resource_names_unsubscribe
        state = _TypeState(wildcard=legacy_wildcard or WILDCARD in subscribe, names=subscribe - {WILDCARD})
        # A reconnecting client holds these already: do not resend what is unchanged. Names it does
        # not want any more are its business, not ours.
        state.holds = {n: v for n, v in request.initial_resource_versions.items() if state.wants(n)}
        state.owed = state.names - state.holds.keys()  # explicit names it lacks: send or deny them
        return state

    @staticmethod
    def _change_subscription(state: _TypeState, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        state.in_step_with = None  # newly wanted names are not in any delta: diff everything once
        for name in request.resource_names_unsubscribe:
            if name == WILDCARD:
                state.wildcard = False
                # Names held only through the wildcard are dropped by the client itself.
                state.holds = {n: v for n, v in state.holds.items() if n in state.names}
                continue
            state.names.discard(name)
            state.holds.pop(name, None)
            if state.wildcard:
                # Still covered by the wildcard: the client cannot tell whether to keep its copy,
                # so it must be told either way (sent again, or removed).
                state.owed.add(name)
        for name in request.resource_names_subscribe:
            if name == WILDCARD:
                state.wildcard = True
                continue
            state.names.add(name)
            # Sent again even if we believe the client has it: it may have forgotten it.
            state.holds.pop(name, None)
            state.owed.add(name)

    @staticmethod
    def _ack_or_nack(type_url: str, state: _TypeState, request: discovery_pb2.DeltaDiscoveryRequest) -> Event:
        nonce = request.response_nonce
        nack = request.HasField("error_detail")
        if nonce not in state.in_flight:
            return UnknownNonce(type_url, nonce, request.error_detail.message if nack else None)
        del state.in_flight[nonce]
        if nack:
            # Holdings stay as sent: the server does not resend what the client rejected.
            return Nacked(type_url, nonce, request.error_detail.code, request.error_detail.message)
        return Acked(type_url, nonce)

    def _diff(self, type_url: str, state: _TypeState, snapshot: Snapshot, *,
              always: bool) -> discovery_pb2.DeltaDiscoveryResponse | None:
        available = snapshot.of_type(type_url)
        candidates: Iterable[tuple[str, VersionedResource]]
        if snapshot.delta is not None and state.in_step_with == snapshot.version - 1 and not state.owed:
            # The common case: one small change, many streams. Look only at what changed.
            changed, gone = snapshot.delta.get(type_url, (frozenset(), frozenset()))
            candidates = ((name, available[name]) for name in sorted(changed))
            removed = {name for name in gone if name in state.holds}
        else:
            candidates = sorted(available.items())
            removed = {name for name in state.holds if name not in available}
        state.in_step_with = snapshot.version
        updated = [
            resource for name, resource in candidates
            if state.wants(name) and state.holds.get(name) != resource.version
        ]
        removed |= {name for name in state.owed if name not in available}
        state.owed.clear()
        if not updated and not removed and not always:
            return None

        nonce = str(next(self._nonces))
        response = discovery_pb2.DeltaDiscoveryResponse(
            type_url=type_url,
            system_version_info=str(snapshot.version),
            nonce=nonce,
            resources=[r.message for r in updated],
            removed_resources=sorted(removed),
        )
        for resource in updated:
            state.holds[resource.name] = resource.version
        for name in removed:
            state.holds.pop(name, None)
        state.in_flight[nonce] = None
        if len(state.in_flight) > MAX_NONCES_IN_FLIGHT:
            del state.in_flight[next(iter(state.in_flight))]
        return response
