"""The client's sans-IO half: what it asks for, and how it applies, ACKs or NACKs a response."""

from __future__ import annotations

import grpc
import pytest
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.any_pb2 import Any

from mesh.api.types import pack
from mesh.backoff import Backoff
from mesh.xds.client import MAX_NACK_MESSAGE, OTHER_TYPE_URL, ClientConfig, ClientState, termination_reason
from tests.controlplane.xds.helpers import ADDRESS, AUTHZ, policy, workload

W1, W2, W3 = "cluster/default/w1", "cluster/default/w2", "cluster/default/w3"
PEM = b"-----BEGIN CERTIFICATE-----\n(a mesh root)\n-----END CERTIFICATE-----\n"


def response(type_url=ADDRESS, nonce="1", removed=(), **named) -> discovery_pb2.DeltaDiscoveryResponse:
    """``response(w1=("v1", message_or_any), ...)``; keys are looked up in NAMES."""
    return discovery_pb2.DeltaDiscoveryResponse(
        type_url=type_url, nonce=nonce, removed_resources=list(removed),
        resources=[discovery_pb2.Resource(name=NAMES[key], version=version,
                                          resource=body if isinstance(body, Any) else pack(body))
                   for key, (version, body) in named.items()],
    )


NAMES = {"w1": W1, "w2": W2, "w3": W3, "allow": "default/allow"}


def test_initial_requests_carry_subscriptions_node_and_holdings():
    state = ClientState({ADDRESS: None, AUTHZ: frozenset({"default/allow"})}, node_id="node-a")
    address, authz = state.initial_requests()
    assert list(address.resource_names_subscribe) == ["*"] and address.node.id == "node-a"
    assert list(authz.resource_names_subscribe) == ["default/allow"] and not authz.HasField("node")
    state.on_response(response(w1=("v1", workload(W1))))
    assert dict(state.initial_requests()[0].initial_resource_versions) == {W1: "v1"}


def test_applied_response_is_acked_and_reported():
    state = ClientState({ADDRESS: None})
    reply, applied, error = state.on_response(response(nonce="7", w1=("v1", workload(W1)), w2=("v1", workload(W2))))
    assert error is None and not reply.HasField("error_detail")
    assert reply.type_url == ADDRESS and reply.response_nonce == "7"
    assert applied == (frozenset({W1, W2}), frozenset())
    reply, applied, _ = state.on_response(response(nonce="8", removed=[W2, W3]))
    assert applied == (frozenset(), frozenset({W2}))  # W3 was never held: not a change
    assert dict(state.view(ADDRESS)) == {W1: workload(W1)}
    assert dict(state.versions(ADDRESS)) == {W1: "v1"}


@pytest.mark.parametrize(
    "bad, expected",
    [
        pytest.param(response(w1=("v2", workload(W1, "10.9.9.9")), w2=("v1", policy("wrong-type"))),
                     "w2: expected a resource of type", id="wrong-type-inside"),
        pytest.param(response(w1=("v2", Any(type_url=ADDRESS, value=b"\xff\xff"))), "does not decode",
                     id="undecodable"),
        pytest.param(discovery_pb2.DeltaDiscoveryResponse(type_url=ADDRESS, nonce="1", resources=[
            discovery_pb2.Resource(name=W1, version="a", resource=pack(workload(W1))),
            discovery_pb2.Resource(name=W1, version="b", resource=pack(workload(W1)))]),
            "more than once: cluster/default/w1", id="duplicate-name"),
        pytest.param(response(type_url=AUTHZ, allow=("v1", policy("allow"))), "not subscribed to type URL",
                     id="type-not-subscribed"),
    ],
)
def test_a_bad_response_is_nacked_whole_and_the_view_kept(bad, expected):
    state = ClientState({ADDRESS: None})
    state.on_response(response(w1=("v1", workload(W1))))
    reply, applied, error = state.on_response(bad)
    assert applied is None and expected in error
    assert reply.error_detail.code == 3 and reply.error_detail.message == error
    assert reply.response_nonce == bad.nonce
    assert dict(state.view(ADDRESS)) == {W1: workload(W1)} and dict(state.versions(ADDRESS)) == {W1: "v1"}


def test_every_response_received_is_counted_by_type_url_as_istio_does():
    """ztunnel's istio_message_types_total{url} and istio_total_messages_size_total: per response
    received, applied or NACKed, whatever it carries; the size is that of the resources' payloads."""
    state = ClientState({ADDRESS: None})
    first = response(nonce="1", w1=("v1", workload(W1)), w2=("v1", workload(W2)))
    state.on_response(first)
    state.on_response(response(nonce="2", removed=[W2]))
    state.on_response(response(nonce="3", w1=("v2", Any(type_url=ADDRESS, value=b"\xff\xff"))))  # NACKed
    state.on_response(response(type_url=AUTHZ, nonce="4", allow=("v1", policy("allow"))))  # not subscribed
    assert dict(state.messages) == {ADDRESS: 3, AUTHZ: 1}
    assert state.received_bytes == (sum(len(r.resource.value) for r in first.resources) + 2
                                     + len(pack(policy("allow")).value))


def test_made_up_type_urls_are_counted_under_one_label():
    """A server cannot grow the counts (and /metrics' label series) by inventing type URLs."""
    state = ClientState({ADDRESS: None})
    for n in range(100):
        state.on_response(response(type_url=f"type.googleapis.com/made.up.T{n}", nonce=str(n)))
    assert dict(state.messages) == {OTHER_TYPE_URL: 100}


@pytest.mark.parametrize(
    "code, details, established, reason",
    [
        (None, "", True, "Complete"),  # the server ended the stream with OK
        (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses", False, "ConnectionError"),
        (grpc.StatusCode.UNAVAILABLE, "Cancelling all calls", True, "Reconnect"),  # a server stopping
        (grpc.StatusCode.UNAVAILABLE, "transport is closing", True, "Reconnect"),
        (grpc.StatusCode.UNAVAILABLE, "Socket closed", True, "Error"),
        (grpc.StatusCode.CANCELLED, "", True, "Reconnect"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "", False, "Reconnect"),
        (grpc.StatusCode.UNAUTHENTICATED, "bad token", False, "Error"),
        (grpc.StatusCode.INVALID_ARGUMENT, "bad request", True, "Error"),
    ],
)
def test_termination_reasons_are_istios(code, details, established, reason):
    assert termination_reason(code, details, established) == reason


def test_validate_rejects_with_its_message_and_long_messages_are_cut():
    def validate(type_url, name, message):
        raise ValueError("x" * 10_000)

    state = ClientState({ADDRESS: None}, validate)
    reply, applied, error = state.on_response(response(w1=("v1", workload(W1))))
    assert applied is None and error.startswith(f"rejected 1 of 1 {ADDRESS} resources (nonce 1)")
    assert len(reply.error_detail.message) == MAX_NACK_MESSAGE and reply.error_detail.message.endswith("...")


def test_explicit_subscription_ignores_names_not_asked_for():
    state = ClientState({ADDRESS: frozenset({W1})})
    _, applied, _ = state.on_response(response(w1=("v1", workload(W1)), w2=("v1", workload(W2))))
    assert applied == (frozenset({W1}), frozenset()) and set(state.view(ADDRESS)) == {W1}


def test_subscribe_and_unsubscribe():
    state = ClientState({ADDRESS: frozenset({W1})})
    state.on_response(response(w1=("v1", workload(W1))))
    assert state.subscribe(ADDRESS, frozenset({W1})) is None  # nothing new
    assert list(state.subscribe(ADDRESS, frozenset({W1, W2})).resource_names_subscribe) == [W2]
    request, dropped = state.unsubscribe(ADDRESS, frozenset({W1, W3}))
    assert list(request.resource_names_unsubscribe) == [W1] and dropped == {W1}
    assert dict(state.view(ADDRESS)) == {}
    # Down to nothing, the type is left out of a reconnect: an empty first request means everything.
    state.unsubscribe(ADDRESS, frozenset({W2}))
    assert state.initial_requests() == []
    with pytest.raises(ValueError, match="wildcard"):
        ClientState({ADDRESS: None}).subscribe(ADDRESS, frozenset({W1}))
    with pytest.raises(ValueError, match="not subscribed"):
        state.subscribe(AUTHZ, frozenset({"default/allow"}))
    with pytest.raises(ValueError, match="non-empty"):
        state.subscribe(ADDRESS, frozenset({"*"}))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"root_pem": b""}, "mesh root certificate"),
        ({"token": ""}, "bearer token"),
        ({"subscriptions": {}}, "at least one type URL"),
        ({"subscriptions": {"type.googleapis.com/envoy.config.cluster.v3.Cluster": None}}, "unknown type URL"),
        ({"subscriptions": {ADDRESS: frozenset({"*"})}}, "use None"),
        ({"subscriptions": {ADDRESS: frozenset()}}, "at least one resource"),
        ({"subscriptions": {ADDRESS: "cluster/default/w1"}}, "not one string"),
        ({"backoff": Backoff(initial=0, cap=1)}, "must start above 0"),
    ],
)
def test_config_is_validated(overrides, message):
    settings = dict(target="127.0.0.1:1", root_pem=PEM, token="t", subscriptions={ADDRESS: None})
    with pytest.raises(ValueError, match=message):
        ClientConfig(**(settings | overrides))


def test_config_hides_secrets_and_backoff_is_bounded():
    config = ClientConfig(target="x:1", root_pem=PEM, token="amt_secret", subscriptions={ADDRESS: [W1]})
    assert "amt_secret" not in repr(config) and config.subscriptions[ADDRESS] == frozenset({W1})
    # Reconnects spread out (up to half shorter at random) and never wait more than 30 s.
    backoff = config.backoff
    assert all(min(30, 0.5 * 2 ** n) / 2 <= backoff.delay(n) <= min(30, 0.5 * 2 ** n) for n in range(12))
    assert backoff.delay(10_000) <= 30
