"""The sans-IO delta xDS stream, driven directly: a transcript of requests, snapshots and responses."""

from __future__ import annotations

import pytest
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2
from hypothesis import given, settings, strategies as st

from controlplane.xds.protocol import (
    MAX_NONCES_IN_FLIGHT,
    Acked,
    DeltaStream,
    Nacked,
    ProtocolError,
    Subscribed,
    UnknownNonce,
    UnknownType,
)
from controlplane.xds.snapshot import Snapshot
from tests.controlplane.xds.helpers import ADDRESS, AUTHZ, policy, resources, workload

W1, W2, W3 = "cluster/default/w1", "cluster/default/w2", "cluster/default/w3"


def snap(version: int, **by_type) -> Snapshot:
    return Snapshot(version, resources(**by_type))


def test_successor_carries_the_delta_and_an_in_step_stream_sends_only_it():
    changed = BASE.successor(resources(address={W1: workload(W1, "10.0.0.9"), W3: workload(W3, "10.0.0.3")},
                                       authz={"default/allow": policy("allow")}))
    assert changed.delta[ADDRESS] == ({W1, W3}, {W2}) and changed.delta[AUTHZ] == (frozenset(), frozenset())
    stream = DeltaStream()
    stream.on_request(req(ADDRESS), BASE)
    [response] = stream.on_snapshot(changed)
    assert [r.name for r in response.resources] == [W1, W3] and list(response.removed_resources) == [W2]


BASE = snap(1, address={W1: workload(W1, "10.0.0.1"), W2: workload(W2, "10.0.0.2")},
            authz={"default/allow": policy("allow")})


def req(type_url: str = ADDRESS, subscribe=(), unsubscribe=(), initial=None, nonce: str = "",
        error: str | None = None) -> discovery_pb2.DeltaDiscoveryRequest:
    request = discovery_pb2.DeltaDiscoveryRequest(
        type_url=type_url, resource_names_subscribe=list(subscribe), resource_names_unsubscribe=list(unsubscribe),
        initial_resource_versions=initial or {}, response_nonce=nonce,
    )
    if error is not None:
        request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return request


def names(response) -> list[str]:
    return [r.name for r in response.resources]


def only(responses) -> discovery_pb2.DeltaDiscoveryResponse:
    assert len(responses) == 1, responses
    return responses[0]


def subscribed(subscribe=(), snapshot: Snapshot = BASE, type_url: str = ADDRESS):
    """A stream whose client subscribed and ACKed the first response."""
    stream = DeltaStream()
    first = only(stream.on_request(req(type_url, subscribe), snapshot).responses)
    assert stream.on_request(req(type_url, nonce=first.nonce), snapshot).events == (Acked(type_url, first.nonce),)
    return stream, first


@pytest.mark.parametrize(
    "subscribe, expected_names, expected_removed, wildcard",
    [
        pytest.param((), [W1, W2], [], True, id="legacy-wildcard-names-nothing"),
        pytest.param(("*",), [W1, W2], [], True, id="explicit-wildcard"),
        pytest.param(("*", W3), [W1, W2], [W3], True, id="wildcard-plus-missing-name"),
        pytest.param((W2,), [W2], [], False, id="one-name"),
        pytest.param((W1, W3), [W1], [W3], False, id="missing-name-is-answered-as-removed"),
        pytest.param((W3,), [], [W3], False, id="only-missing-names"),
    ],
)
def test_first_request_sends_what_is_subscribed(subscribe, expected_names, expected_removed, wildcard):
    stream = DeltaStream()
    outcome = stream.on_request(req(ADDRESS, subscribe), BASE)
    response = only(outcome.responses)
    assert names(response) == expected_names
    assert list(response.removed_resources) == expected_removed
    assert response.type_url == ADDRESS and response.system_version_info == "1" and response.nonce
    assert all(r.version == BASE.of_type(ADDRESS)[r.name].version for r in response.resources)
    assert all(r.resource == BASE.of_type(ADDRESS)[r.name].body for r in response.resources)
    assert outcome.events == (Subscribed(ADDRESS, wildcard, frozenset(subscribe) - {"*"}, True),)


def test_first_request_for_an_empty_type_is_answered_empty():
    stream = DeltaStream()
    response = only(stream.on_request(req(AUTHZ), snap(1, address={W1: workload(W1)})).responses)
    assert response.type_url == AUTHZ and not response.resources and not response.removed_resources


def test_types_are_independent():
    stream, _ = subscribed()
    other = only(stream.on_request(req(AUTHZ), BASE).responses)
    assert other.type_url == AUTHZ and names(other) == ["default/allow"]
    changed = snap(2, address={W1: workload(W1, "10.0.0.9"), W2: workload(W2, "10.0.0.2")},
                   authz={"default/allow": policy("allow"), "default/more": policy("more")})
    responses = {r.type_url: names(r) for r in stream.on_snapshot(changed)}
    assert responses == {ADDRESS: [W1], AUTHZ: ["default/more"]}


@pytest.mark.parametrize(
    "change, expected_names, expected_removed",
    [
        pytest.param({W1: workload(W1, "10.0.0.9"), W2: workload(W2, "10.0.0.2")}, [W1], [], id="update-one"),
        pytest.param({W1: workload(W1, "10.0.0.1"), W2: workload(W2, "10.0.0.2"), W3: workload(W3)}, [W3], [],
                     id="add-one"),
        pytest.param({W2: workload(W2, "10.0.0.2")}, [], [W1], id="delete-one"),
        pytest.param({W2: workload(W2, "10.0.0.7"), W3: workload(W3)}, [W2, W3], [W1], id="all-at-once"),
    ],
)
def test_snapshot_sends_only_what_changed(change, expected_names, expected_removed):
    stream, _ = subscribed()
    response = only(stream.on_snapshot(snap(2, address=change, authz={})))
    assert names(response) == expected_names
    assert list(response.removed_resources) == expected_removed
    assert response.system_version_info == "2"
    assert stream.on_snapshot(snap(3, address=change)) == []  # a new version with the same content


def test_unchanged_snapshot_sends_nothing():
    stream, _ = subscribed()
    assert stream.on_snapshot(BASE) == []
    assert stream.on_snapshot(snap(7, address={W1: workload(W1, "10.0.0.1"), W2: workload(W2, "10.0.0.2")})) == []


def test_skipped_snapshots_leave_no_trace():
    """A stream that was busy while two snapshots came and went sends only the net difference."""
    stream, _ = subscribed()
    # Snapshot 2 (W3 added, W1 changed) is never seen; snapshot 3 undid both changes and deleted W2.
    assert [names(r) for r in stream.on_snapshot(snap(3, address={W1: workload(W1, "10.0.0.1")}))] == [[]]
    assert list(stream.on_snapshot(snap(3, address={W1: workload(W1, "10.0.0.1")}))) == []


def test_explicit_subscription_ignores_other_names():
    stream, _ = subscribed((W1,))
    unrelated = snap(2, address={W1: workload(W1, "10.0.0.1"), W2: workload(W2, "10.0.0.99"), W3: workload(W3)})
    assert stream.on_snapshot(unrelated) == []
    assert stream.holdings(ADDRESS).keys() == {W1}


def test_subscribe_later_sends_the_new_name_even_if_unchanged():
    stream, _ = subscribed((W1,))
    outcome = stream.on_request(req(ADDRESS, subscribe=(W2, W1)), BASE)
    assert outcome.events == (Subscribed(ADDRESS, False, frozenset({W1, W2}), False),)
    # W1 is held already and unchanged, but a client that subscribes again may have forgotten it.
    assert names(only(outcome.responses)) == [W1, W2]


def test_subscribing_to_a_missing_name_then_it_appears():
    stream, _ = subscribed((W1,))
    response = only(stream.on_request(req(ADDRESS, subscribe=(W3,)), BASE).responses)
    assert names(response) == [] and list(response.removed_resources) == [W3]
    appeared = snap(2, address={W1: workload(W1, "10.0.0.1"), W3: workload(W3)})
    assert names(only(stream.on_snapshot(appeared))) == [W3]


def test_unsubscribe_sends_nothing_and_stops_updates():
    stream, _ = subscribed((W1, W2))
    outcome = stream.on_request(req(ADDRESS, unsubscribe=(W2, "never-subscribed")), BASE)
    assert outcome.responses == () and outcome.events == (Subscribed(ADDRESS, False, frozenset({W1}), False),)
    assert stream.on_snapshot(snap(2, address={W1: workload(W1, "10.0.0.1"), W2: workload(W2, "10.9.9.9")})) == []
    assert stream.on_snapshot(snap(3, address={W1: workload(W1, "10.0.0.1")})) == []  # W2 deleted: not ours


def test_unsubscribing_a_name_still_covered_by_the_wildcard_resends_it():
    stream, _ = subscribed(("*", W1, W3))
    outcome = stream.on_request(req(ADDRESS, unsubscribe=(W1, W3)), BASE)
    response = only(outcome.responses)
    assert names(response) == [W1] and list(response.removed_resources) == [W3]


def test_unsubscribing_the_wildcard_keeps_explicit_names():
    stream, _ = subscribed(("*", W1))
    assert stream.on_request(req(ADDRESS, unsubscribe=("*",)), BASE).responses == ()
    assert stream.subscriptions()[ADDRESS] == (False, frozenset({W1}))
    changed = snap(2, address={W1: workload(W1, "10.0.0.5"), W2: workload(W2, "10.0.0.6")})
    assert names(only(stream.on_snapshot(changed))) == [W1]


def test_legacy_wildcard_ends_once_names_were_subscribed():
    """After an explicit subscription, an empty subscription set means nothing, not everything."""
    stream, _ = subscribed((W1,))
    stream.on_request(req(ADDRESS, unsubscribe=(W1,)), BASE)
    assert stream.subscriptions()[ADDRESS] == (False, frozenset())
    assert stream.on_request(req(ADDRESS), BASE).responses == ()
    assert stream.on_snapshot(snap(2, address={W3: workload(W3)})) == []


def test_ack_and_nack_are_reported_and_nothing_is_resent():
    stream, _ = subscribed()
    bad = snap(2, address={W1: workload(W1, "10.0.0.9"), W2: workload(W2, "10.0.0.2")})
    rejected = only(stream.on_snapshot(bad))
    outcome = stream.on_request(req(ADDRESS, nonce=rejected.nonce, error="W1: no such network"), bad)
    assert outcome.events == (Nacked(ADDRESS, rejected.nonce, 3, "W1: no such network"),)
    assert outcome.responses == ()
    # The client keeps its previous W1; the rejected version is not pushed again...
    assert stream.on_snapshot(bad) == []
    assert stream.on_snapshot(snap(3, address={W1: workload(W1, "10.0.0.9"), W2: workload(W2, "10.0.0.3")})) != []
    # ...until W1 itself changes.
    fixed = snap(4, address={W1: workload(W1, "10.0.0.4"), W2: workload(W2, "10.0.0.3")})
    assert names(only(stream.on_snapshot(fixed))) == [W1]


def test_nonces_are_unique_and_checked():
    stream, first = subscribed()
    second = only(stream.on_request(req(AUTHZ), BASE).responses)
    third = only(stream.on_snapshot(snap(2, address={W1: workload(W1)}, authz={"default/allow": policy("allow")})))
    assert len({first.nonce, second.nonce, third.nonce}) == 3
    # A nonce of another type, one already ACKed, or one never sent is not an ACK of anything in flight.
    def events(**request):
        return stream.on_request(req(ADDRESS, **request), BASE).events

    assert events(nonce=second.nonce) == (UnknownNonce(ADDRESS, second.nonce, None),)
    assert events(nonce=first.nonce) == (UnknownNonce(ADDRESS, first.nonce, None),)
    assert events(nonce="zz", error="bad") == (UnknownNonce(ADDRESS, "zz", "bad"),)
    assert events(nonce=third.nonce)[0] == Acked(ADDRESS, third.nonce)


def test_unacked_nonces_are_bounded():
    stream, _ = subscribed()
    sent = [only(stream.on_snapshot(snap(v, address={W1: workload(W1, f"10.0.1.{v}")}))).nonce
            for v in range(2, MAX_NONCES_IN_FLIGHT + 3)]
    assert stream.on_request(req(ADDRESS, nonce=sent[0]), BASE).events == (UnknownNonce(ADDRESS, sent[0], None),)
    assert stream.on_request(req(ADDRESS, nonce=sent[-1]), BASE).events == (Acked(ADDRESS, sent[-1]),)


@pytest.mark.parametrize("subscribe", [(), (W1, W2, W3)], ids=["wildcard", "explicit"])
def test_reconnect_with_initial_versions_sends_only_the_difference(subscribe):
    held = {W1: BASE.of_type(ADDRESS)[W1].version, W2: "stale-version", W3: "deleted-meanwhile"}
    stream = DeltaStream()
    outcome = stream.on_request(req(ADDRESS, subscribe, initial=held), BASE)
    response = only(outcome.responses)
    assert names(response) == [W2]  # W1 is current: not resent
    assert list(response.removed_resources) == [W3]
    assert outcome.events[0].client_holds == 3
    assert stream.holdings(ADDRESS) == {W1: held[W1], W2: BASE.of_type(ADDRESS)[W2].version}


def test_reconnect_holding_everything_current_gets_an_empty_answer():
    held = {name: r.version for name, r in BASE.of_type(ADDRESS).items()}
    response = only(DeltaStream().on_request(req(ADDRESS, initial=held), BASE).responses)
    assert not response.resources and not response.removed_resources


def test_initial_versions_after_the_first_request_are_ignored():
    stream, _ = subscribed((W1,))
    outcome = stream.on_request(req(ADDRESS, initial={W1: "whatever"}), BASE)
    assert outcome.responses == ()


def test_unknown_type_url_is_flagged_and_ignored():
    stream = DeltaStream()
    outcome = stream.on_request(req("type.googleapis.com/envoy.config.cluster.v3.Cluster"), BASE)
    assert outcome == type(outcome)(events=(UnknownType("type.googleapis.com/envoy.config.cluster.v3.Cluster"),))
    assert stream.on_snapshot(snap(2)) == []


def test_request_without_type_url_ends_the_stream():
    stream = DeltaStream()
    with pytest.raises(ProtocolError, match="no type_url") as failure:
        stream.on_request(req(""), BASE)
    assert failure.value.status == "INVALID_ARGUMENT"
    with pytest.raises(RuntimeError):
        stream.on_snapshot(BASE)


# Property: whatever the order of publishes, subscription changes, skipped snapshots and reconnects,
# a client that applies every response holds exactly the wanted part of the newest snapshot.

NAMES = [f"w{i}" for i in range(6)]
snapshot_contents = st.dictionaries(st.sampled_from(NAMES), st.integers(1, 3), max_size=6)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), snapshot_contents),
        st.tuples(st.just("publish-unseen"), snapshot_contents),
        st.tuples(st.just("subscribe"), st.sets(st.sampled_from(NAMES + ["*"]), max_size=3)),
        st.tuples(st.just("unsubscribe"), st.sets(st.sampled_from(NAMES + ["*"]), max_size=3)),
        st.tuples(st.just("reconnect"), st.none()),
    ),
    max_size=25,
)


class ModelClient:
    def __init__(self, subscribe: set[str]) -> None:
        self.wildcard = not subscribe or "*" in subscribe
        self.names = set(subscribe) - {"*"}
        self.holds: dict[str, str] = {}

    def wants(self, name: str) -> bool:
        return self.wildcard or name in self.names

    def apply(self, responses) -> None:
        for response in responses:
            for resource in response.resources:
                if self.wants(resource.name):
                    self.holds[resource.name] = resource.version
            for name in response.removed_resources:
                self.holds.pop(name, None)

    def change(self, kind: str, names: set[str]) -> None:
        for name in names:
            if name == "*":
                self.wildcard = kind == "subscribe"
            elif kind == "subscribe":
                self.names.add(name)
            else:
                self.names.discard(name)
                self.holds.pop(name, None)
        if kind == "unsubscribe" and "*" in names:
            self.holds = {n: v for n, v in self.holds.items() if n in self.names}

    def first_requests(self) -> list:
        """As ``ClientState`` does: nothing for a type it wants nothing of (an empty first request
        would be the legacy wildcard)."""
        if not self.wildcard and not self.names:
            return []
        return [req(ADDRESS, (["*"] if self.wildcard else []) + sorted(self.names), initial=dict(self.holds))]


@settings(max_examples=300, deadline=None)
@given(st.sets(st.sampled_from(NAMES + ["*"]), max_size=3), operations)
def test_client_converges_to_the_newest_snapshot(first_subscription, ops):
    client = ModelClient(first_subscription)
    current = Snapshot(1, resources(address={n: workload(n, f"10.0.0.{v}") for n, v in {"w0": 1}.items()}))
    stream = DeltaStream()
    client.apply(stream.on_request(req(ADDRESS, sorted(first_subscription)), current).responses)
    for kind, arg in ops:
        if kind.startswith("publish"):
            # successor(): with its delta, so the stream's in-step shortcut is exercised too
            current = current.successor(resources(address={n: workload(n, f"10.0.0.{v}") for n, v in arg.items()}))
            if kind == "publish":
                client.apply(stream.on_snapshot(current))
        elif kind == "reconnect":
            stream = DeltaStream()
            for request in client.first_requests():
                client.apply(stream.on_request(request, current).responses)
        elif arg:  # ClientState sends no empty (un)subscription
            client.change(kind, arg)
            client.apply(stream.on_request(req(ADDRESS, **{kind: sorted(arg)}), current).responses)
    client.apply(stream.on_snapshot(current))
    expected = {n: r.version for n, r in current.of_type(ADDRESS).items() if client.wants(n)}
    assert client.holds == expected
