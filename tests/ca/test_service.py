"""Who gets which certificate: the authorisation table, without I/O."""

from ipaddress import IPv4Address

import pytest

from ca.authority import CaRefusal, Status
from ca.client import new_key_and_csr
from ca.placement import StaticPodPlacement
from ca.service import CertificateRequest, CertificateService
from ca.tokens import NodeCaller, TokenStore, WorkloadCaller
from mesh.identity import SpiffeId

CLIENT = SpiffeId("cluster.local", "default", "client")
SERVER = SpiffeId("cluster.local", "default", "server")
FOREIGN = SpiffeId("example.org", "default", "client")


@pytest.fixture
def setup(tmp_path, authority):
    tokens = TokenStore(tmp_path / "tokens.json")
    placement = StaticPodPlacement({"node-1": {CLIENT}, "node-2": {SERVER}})
    service = CertificateService(authority, tokens, placement)
    return service, {
        "client": tokens.create(WorkloadCaller(CLIENT)),
        "node-1": tokens.create(NodeCaller("node-1")),
        "foreign": tokens.create(WorkloadCaller(FOREIGN)),
    }


CASES = [
    # (token, authorization prefix, ImpersonatedIdentity, expected identity or (status, reason))
    ("client", "Bearer ", None, CLIENT),
    ("client", "bearer ", str(CLIENT), CLIENT),
    ("client", "Bearer ", str(SERVER), (Status.PERMISSION_DENIED, "forbidden_identity")),
    ("node-1", "Bearer ", str(CLIENT), CLIENT),
    ("node-1", "Bearer ", str(SERVER), (Status.PERMISSION_DENIED, "forbidden_identity")),
    ("node-1", "Bearer ", None, (Status.PERMISSION_DENIED, "forbidden_identity")),
    ("node-1", "Bearer ", "spiffe://cluster.local/oops", (Status.INVALID_ARGUMENT, "bad_metadata")),
    ("node-1", "Bearer ", 42.0, (Status.INVALID_ARGUMENT, "bad_metadata")),
    ("foreign", "Bearer ", None, (Status.PERMISSION_DENIED, "foreign_trust_domain")),
    ("client", "Basic ", None, (Status.UNAUTHENTICATED, "missing_token")),
    (None, "", None, (Status.UNAUTHENTICATED, "missing_token")),
    ("unknown", "Bearer ", None, (Status.UNAUTHENTICATED, "unknown_token")),
]


@pytest.mark.parametrize("token, scheme, impersonated, expected", CASES)
def test_authorisation(setup, token, scheme, impersonated, expected):
    service, tokens = setup
    authorization = None if token is None else scheme + tokens.get(token, "amt_unknown")
    wanted = expected if isinstance(expected, SpiffeId) else CLIENT
    request = CertificateRequest(authorization, new_key_and_csr(wanted)[1], 0, impersonated)
    if isinstance(expected, SpiffeId):
        issued = service.create_certificate(request)
        assert issued.identity == expected
        assert len(issued.cert_chain) == 2
    else:
        with pytest.raises(CaRefusal) as refusal:
            service.create_certificate(request)
        assert (refusal.value.status, refusal.value.reason) == expected


def test_unauthenticated_callers_learn_nothing_about_their_csr(setup):
    service, _ = setup
    with pytest.raises(CaRefusal) as refusal:
        service.create_certificate(CertificateRequest("Bearer amt_nope", "garbage", -1, None))
    assert refusal.value.status is Status.UNAUTHENTICATED


def test_refusal_after_authentication_names_the_caller(setup):
    service, tokens = setup
    with pytest.raises(CaRefusal) as refusal:
        service.create_certificate(CertificateRequest("Bearer " + tokens["node-1"], "garbage", 0, str(CLIENT)))
    assert refusal.value.status is Status.INVALID_ARGUMENT
    assert refusal.value.caller == NodeCaller("node-1")


@pytest.mark.parametrize("peer, refused", [("10.255.0.10", False), ("10.255.0.11", True), (None, True)])
def test_a_bound_node_token_works_only_from_its_addresses(tmp_path, authority, peer, refused):
    tokens = TokenStore(tmp_path / "tokens.json")
    service = CertificateService(authority, tokens, StaticPodPlacement({"node-1": {CLIENT}}))
    token = tokens.create(NodeCaller("node-1", frozenset({IPv4Address("10.255.0.10")})))
    request = CertificateRequest(f"Bearer {token}", new_key_and_csr(CLIENT)[1], 0, str(CLIENT),
                                 peer_address=IPv4Address(peer) if peer else None)
    if not refused:
        assert service.create_certificate(request).identity == CLIENT
        return
    with pytest.raises(CaRefusal) as refusal:
        service.create_certificate(request)
    assert (refusal.value.status, refusal.value.reason) == (Status.UNAUTHENTICATED, "token_address")
    assert str(refusal.value) == f"the token of node node-1 is not valid from {peer or 'an unknown address'}"
