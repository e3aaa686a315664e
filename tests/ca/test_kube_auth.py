"""Kubernetes service-account tokens at the CA: the TokenReview judged without I/O, then the whole
path through the official ``kubernetes`` client against a stand-in API server (``tests/ca/kube_api``:
no real API server can run here; it listens on 127.0.0.1 and answers in the recorded shape), and
end to end through the gRPC CA server with real CSRs."""

from __future__ import annotations

import logging
import socket
import threading
from concurrent import futures

import grpc
import pytest
from prometheus_client import CollectorRegistry

from ca.authority import CaRefusal, Status
from ca.client import CaClient, CaRequestFailed, new_key_and_csr, token_file
from ca.kube_auth import (
    MAX_TOKEN_BYTES,
    KubeAuthConfig,
    KubeTokenAuthenticator,
    ReviewCache,
    TokenReviewClient,
    _Flight,
    caller_from_review,
    check_token_shape,
    unverified_expiry,
)
from ca.placement import StaticPodPlacement
from ca.server import CaMetrics, CaServer, ServeConfig
from ca.service import CertificateRequest, CertificateService
from ca.tokens import BoundPod, KubeCaller, TokenStore, WorkloadCaller
from mesh.certs import CertificateError
from mesh.identity import SpiffeId
from tests.ca.kube_api import API_SERVER_AUDIENCE, FakeKubeApi, ServiceAccountToken, api_client_for

TD = "cluster.local"
CLIENT = SpiffeId(TD, "default", "client")
SERVER = SpiffeId(TD, "default", "server")
ZTUNNEL = SpiffeId(TD, "istio-system", "ztunnel")
CONFIG = KubeAuthConfig(trust_domain=TD)


def _status(username="system:serviceaccount:default:client", *, audiences=("istio-ca",), extra=None,
            groups=("system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"),
            authenticated=True):
    user = {"username": username, "uid": "8f0c", "groups": list(groups)}
    if extra is not None:
        user["extra"] = extra
    return {"kind": "TokenReview", "status": {"authenticated": authenticated, "user": user,
                                              "audiences": list(audiences)}}


POD_EXTRA = {"authentication.kubernetes.io/pod-name": ["ztunnel-x7k2p"],
             "authentication.kubernetes.io/pod-uid": ["5e1f"],
             "authentication.kubernetes.io/node-name": ["node-1"],
             "authentication.kubernetes.io/credential-id": ["JTI=1"]}


# -- the review, judged without I/O ---------------------------------------------------------------

REVIEWS = [
    ("service account", _status(), KubeCaller(CLIENT)),
    ("bound to a pod on a node", _status("system:serviceaccount:istio-system:ztunnel", extra=POD_EXTRA),
     KubeCaller(ZTUNNEL, BoundPod("istio-system", "ztunnel-x7k2p", "5e1f", "node-1"), node_proxy=True)),
    ("bound, node not said", _status(extra={k: v for k, v in POD_EXTRA.items() if "node" not in k}),
     KubeCaller(CLIENT, BoundPod("default", "ztunnel-x7k2p", "5e1f"))),
    ("one of several audiences", _status(audiences=("other", "istio-ca")), KubeCaller(CLIENT)),
    ("error", {"status": {"user": {}, "error": "[invalid bearer token, token has been invalidated]"}},
     ("token_rejected", "the Kubernetes API refused the token: [invalid bearer token, token has been invalidated]")),
    ("not authenticated", _status(authenticated=False), ("token_rejected", "did not authenticate")),
    ("audience of the API server", _status(audiences=(API_SERVER_AUDIENCE,)),
     ("token_audience", f"not for audience istio-ca (the Kubernetes API accepted it for {API_SERVER_AUDIENCE})")),
    ("no audiences", _status(audiences=()), ("token_audience", "its own audience only")),
    ("a person", _status("alice", groups=("system:authenticated",)),
     ("not_service_account", "user 'alice' is not a Kubernetes service account")),
    ("a node", _status("system:node:node-1", groups=("system:nodes",)), ("not_service_account", "system:node")),
    ("service-account name, not in the group", _status(groups=("system:authenticated",)),
     ("not_service_account", "not a Kubernetes service account")),
    ("bad namespace", _status("system:serviceaccount:Bad_NS:client"), ("not_service_account", "Bad_NS")),
    ("no status", {"kind": "TokenReview"}, ("token_review_failed", "no status")),
    ("not an object", ["x"], ("token_review_failed", "no status")),
    ("bad pod name", _status(extra={**POD_EXTRA, "authentication.kubernetes.io/pod-name": ["../etc"]}),
     ("token_review_failed", "pod '../etc'")),
]


@pytest.mark.parametrize("review, expected", [r[1:] for r in REVIEWS], ids=[r[0] for r in REVIEWS])
def test_caller_from_review(review, expected):
    if isinstance(expected, KubeCaller):
        assert caller_from_review(review, CONFIG) == expected
        return
    with pytest.raises(CaRefusal) as refusal:
        caller_from_review(review, CONFIG)
    assert refusal.value.status is Status.UNAUTHENTICATED
    assert refusal.value.reason == expected[0]
    assert expected[1] in str(refusal.value)


def test_node_service_accounts_and_audiences_are_configurable():
    config = KubeAuthConfig(trust_domain="example.org", audiences=("mesh-ca",),
                            node_service_accounts=frozenset({"kube-system/node-proxy"}))
    caller = caller_from_review(_status("system:serviceaccount:kube-system:node-proxy", audiences=("mesh-ca",),
                                        groups=("system:serviceaccounts",)), config)
    assert caller == KubeCaller(SpiffeId("example.org", "kube-system", "node-proxy"), node_proxy=True)
    with pytest.raises(CaRefusal, match="not for audience mesh-ca"):
        caller_from_review(_status(), config)


@pytest.mark.parametrize("kwargs, message", [
    ({"trust_domain": "Not A Domain"}, "trust domain"),
    ({"trust_domain": TD, "audiences": ()}, "audiences"),
    ({"trust_domain": TD, "audiences": ("",)}, "audiences"),
    ({"trust_domain": TD, "node_service_accounts": frozenset({"ztunnel"})}, "'ztunnel': expected <namespace>/"),
    ({"trust_domain": TD, "node_service_accounts": frozenset({"istio-system/Zt"})}, "service account 'Zt'"),
    ({"trust_domain": TD, "review_timeout": 0}, "review_timeout"),
    ({"trust_domain": TD, "cache_size": 0}, "cache_size"),
    ({"trust_domain": TD, "max_in_flight": 0}, "max_in_flight"),
])
def test_bad_configuration_is_named(kwargs, message):
    with pytest.raises(ValueError, match="kube auth") as error:
        KubeAuthConfig(**kwargs)
    assert message in str(error.value)


def test_token_shape_is_checked_before_any_call():
    jwt = ServiceAccountToken("default", "client").jwt()
    check_token_shape(jwt)
    with pytest.raises(CaRefusal) as too_large:
        check_token_shape("a.b." + "c" * MAX_TOKEN_BYTES)
    assert too_large.value.reason == "token_too_large" and f"limit of {MAX_TOKEN_BYTES}" in str(too_large.value)
    for not_jwt in ("opaque-token", "a.b", "a.b.c.d", "a b.c.d", "amt_x.y.z!"):
        with pytest.raises(CaRefusal) as refusal:
            check_token_shape(not_jwt)
        assert refusal.value.reason == "unknown_token"


def test_unverified_expiry_reads_exp_or_nothing():
    token = ServiceAccountToken("default", "client", expires=1_900_000_000)
    assert unverified_expiry(token.jwt()) == 1_900_000_000
    for bad in ("a.b.c", "a.e30.c", "a.!!!.c", "a.WyJ4Il0.c", "a.eyJleHAiOiB0cnVlfQ.c"):  # {}, ["x"], {"exp": true}
        assert unverified_expiry(bad) is None


def test_review_cache_ttl_token_expiry_and_size():
    a, b = KubeCaller(CLIENT), KubeCaller(SERVER)
    cache = ReviewCache(ttl=60, size=2)
    cache.put("a", a, now=0, seconds_left=None)
    cache.put("b", b, now=0, seconds_left=10)  # the token expires before the TTL
    assert cache.get("a", 59.9) is a and cache.get("b", 9.9) is b
    assert cache.get("b", 10) is None and cache.get("a", 60) is None
    cache.put("expired", a, now=0, seconds_left=-1)
    assert cache.get("expired", 0) is None
    for i in range(5):
        cache.put(str(i), a, now=0, seconds_left=None)
    assert len(cache) == 2 and cache.get("0", 1) is None and cache.get("4", 1) is a


# -- through the official client and a stand-in API server ----------------------------------------


class PodView:
    """The control plane's pods: (namespace, name) → (uid, node)."""

    def __init__(self, pods):
        self.pods = pods

    def node_of_pod(self, namespace, name, uid):
        known = self.pods.get((namespace, name))
        return known[1] if known and known[0] == uid else None


@pytest.fixture
def api():
    with FakeKubeApi() as fake:
        yield fake


def _service(api, tmp_path, authority, placement=None, pod_nodes=None, config=CONFIG, **kwargs):
    kube = KubeTokenAuthenticator(config, TokenReviewClient(api.api_client()), pod_nodes, **kwargs)
    placement = placement or StaticPodPlacement({"node-1": {SERVER}, "node-2": {CLIENT}})
    return CertificateService(authority, TokenStore(tmp_path / "tokens.json"), placement, kube=kube), kube


def _issue(service, token, identity, impersonated=None):
    return service.create_certificate(
        CertificateRequest(f"Bearer {token}", new_key_and_csr(identity)[1], 0, impersonated))


def _refused(service, token, identity, impersonated=None) -> CaRefusal:
    with pytest.raises(CaRefusal) as refusal:
        _issue(service, token, identity, impersonated)
    return refusal.value


def test_a_service_account_token_obtains_its_own_identity(api, tmp_path, authority):
    service, kube = _service(api, tmp_path, authority)
    token = api.issue(ServiceAccountToken("default", "client", pod="client-1", pod_uid="u1", node="node-2"))
    issued = _issue(service, token, CLIENT)
    assert issued.identity == CLIENT and len(issued.cert_chain) == 2
    assert issued.caller == KubeCaller(CLIENT, BoundPod("default", "client-1", "u1", "node-2"))
    assert _issue(service, token, CLIENT, str(CLIENT)).identity == CLIENT  # naming itself is fine
    assert api.requests[0] == {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                               "spec": {"token": token, "audiences": ["istio-ca"]}}


@pytest.mark.parametrize("audience_aware", [True, False])
def test_a_token_for_another_audience_is_refused(tmp_path, authority, audience_aware):
    with FakeKubeApi(audience_aware=audience_aware) as api:
        service, _ = _service(api, tmp_path, authority)
        token = api.issue(ServiceAccountToken("default", "client", audiences=(API_SERVER_AUDIENCE,)))
        refusal = _refused(service, token, CLIENT)
    assert refusal.status is Status.UNAUTHENTICATED
    # An audience-aware API server refuses it itself; one that is not answers for its own audience.
    assert refusal.reason == ("token_rejected" if audience_aware else "token_audience")
    assert "istio-ca" in str(refusal)


def test_an_unknown_token_and_a_user_that_is_no_service_account_are_refused(api, tmp_path, authority):
    service, _ = _service(api, tmp_path, authority)
    forged = ServiceAccountToken("default", "client").jwt()  # never issued by the API server
    refusal = _refused(service, forged, CLIENT)
    assert (refusal.status, refusal.reason) == (Status.UNAUTHENTICATED, "token_rejected")
    assert "invalid bearer token" in str(refusal)
    person = ServiceAccountToken("default", "alice").jwt()
    api.users[person] = {"authenticated": True, "audiences": ["istio-ca"],
                         "user": {"username": "alice@example.com", "groups": ["system:authenticated"]}}
    refusal = _refused(service, person, CLIENT)
    assert (refusal.reason, str(refusal)) == ("not_service_account",
                                              "user 'alice@example.com' is not a Kubernetes service account")


def test_ztunnel_impersonates_only_identities_with_a_pod_on_its_node(api, tmp_path, authority):
    service, _ = _service(api, tmp_path, authority)
    token = api.issue(ServiceAccountToken("istio-system", "ztunnel", pod="ztunnel-x7k2p", pod_uid="u9",
                                          node="node-1"))
    issued = _issue(service, token, SERVER, str(SERVER))
    assert issued.identity == SERVER
    refusal = _refused(service, token, CLIENT, str(CLIENT))  # CLIENT runs on node-2 only
    assert refusal.status is Status.PERMISSION_DENIED
    assert str(refusal) == (f"kubernetes {ZTUNNEL} (pod istio-system/ztunnel-x7k2p on node node-1): "
                            f"node node-1 runs no pod with identity {CLIENT}")
    assert _issue(service, token, ZTUNNEL).identity == ZTUNNEL  # and its own identity without impersonating


def test_without_node_in_the_token_the_node_is_the_control_plane_s_view_of_the_pod(api, tmp_path, authority):
    view = PodView({("istio-system", "ztunnel-x7k2p"): ("u9", "node-2")})
    service, _ = _service(api, tmp_path, authority, pod_nodes=view)
    token = api.issue(ServiceAccountToken("istio-system", "ztunnel", pod="ztunnel-x7k2p", pod_uid="u9"))
    assert _issue(service, token, CLIENT, str(CLIENT)).identity == CLIENT
    assert _refused(service, token, SERVER, str(SERVER)).reason == "forbidden_identity"
    view.pods[("istio-system", "ztunnel-x7k2p")] = ("another-uid", "node-2")  # re-created under the same name
    refusal = _refused(service, token, CLIENT, str(CLIENT))
    assert refusal.status is Status.PERMISSION_DENIED
    assert "knows no pod istio-system/ztunnel-x7k2p with uid u9" in str(refusal)


def test_no_bound_pod_no_impersonation(api, tmp_path, authority):
    service, _ = _service(api, tmp_path, authority)
    token = api.issue(ServiceAccountToken("istio-system", "ztunnel"))  # a token for the account alone
    refusal = _refused(service, token, SERVER, str(SERVER))
    assert refusal.status is Status.PERMISSION_DENIED and "not bound to a pod" in str(refusal)


def test_a_workload_service_account_cannot_impersonate(api, tmp_path, authority):
    service, _ = _service(api, tmp_path, authority)
    token = api.issue(ServiceAccountToken("default", "client", pod="client-1", pod_uid="u1", node="node-1"))
    refusal = _refused(service, token, SERVER, str(SERVER))  # SERVER does run on its node
    assert refusal.status is Status.PERMISSION_DENIED
    assert "only the node proxies' service accounts (istio-system/ztunnel) may impersonate" in str(refusal)


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_api_fails_closed_with_a_reason(tmp_path, authority):
    kube = KubeTokenAuthenticator(CONFIG, TokenReviewClient(api_client_for(f"http://127.0.0.1:{_unused_port()}")))
    service = CertificateService(authority, TokenStore(tmp_path / "t.json"), StaticPodPlacement({}), kube=kube)
    refusal = _refused(service, ServiceAccountToken("default", "client").jwt(), CLIENT)
    # UNAVAILABLE: the caller is not refused for what it is, it is told to retry
    assert (refusal.status, refusal.reason) == (Status.UNAVAILABLE, "token_review_failed")
    assert str(refusal).startswith("cannot review the token with the Kubernetes API: ")
    assert "Connection refused" in str(refusal)


def test_a_review_that_takes_too_long_is_refused(api, tmp_path, authority):
    service, _ = _service(api, tmp_path, authority, config=KubeAuthConfig(trust_domain=TD, review_timeout=0.2))
    token = api.issue(ServiceAccountToken("default", "client"))
    api.hold.clear()  # the API server takes the request and does not answer
    refusal = _refused(service, token, CLIENT)
    api.hold.set()
    assert (refusal.status, refusal.reason, str(refusal)) == (
        Status.UNAVAILABLE, "token_review_failed", "cannot review the token with the Kubernetes API: no answer in time")


def test_reviews_are_not_retried_and_the_given_client_is_left_alone(api):
    given = api.api_client()
    reviewer = TokenReviewClient(given)
    assert reviewer.api_client.configuration.retries == 0 and given.configuration.retries is None
    assert reviewer.api_client.configuration.host == given.configuration.host


@pytest.mark.parametrize("status_code, status", [(500, Status.UNAVAILABLE), (403, Status.FAILED_PRECONDITION)])
def test_an_api_error_fails_closed(api, tmp_path, authority, status_code, status):
    service, _ = _service(api, tmp_path, authority)
    token = api.issue(ServiceAccountToken("default", "client"))
    api.status_code = status_code
    refusal = _refused(service, token, CLIENT)
    assert (refusal.status, refusal.reason) == (status, "token_review_failed")
    assert f"HTTP {status_code}" in str(refusal)


def test_the_ca_s_own_credentials_are_sent_and_a_wrong_one_is_its_configuration_s_fault(api, tmp_path, authority):
    kube = KubeTokenAuthenticator(CONFIG, TokenReviewClient(api.api_client("stale-credential")))
    service = CertificateService(authority, TokenStore(tmp_path / "t.json"), StaticPodPlacement({}), kube=kube)
    refusal = _refused(service, api.issue(ServiceAccountToken("default", "client")), CLIENT)
    assert (refusal.status, str(refusal)) == (Status.FAILED_PRECONDITION,
                                              "the CA may not review tokens: HTTP 401 Unauthorized")


def test_a_cached_review_makes_no_second_call_until_it_expires(api, tmp_path, authority):
    now = [1000.0]
    service, kube = _service(api, tmp_path, authority, clock=lambda: now[0])
    token = api.issue(ServiceAccountToken("default", "client"))
    for _ in range(3):
        assert _issue(service, token, CLIENT).identity == CLIENT
    assert len(api.requests) == 1 and kube.reviews == 1
    now[0] += CONFIG.cache_ttl
    _issue(service, token, CLIENT)
    assert len(api.requests) == 2


def test_a_cached_review_ends_with_the_token(api, tmp_path, authority):
    now, wall = [0.0], [1_800_000_000.0]
    service, _ = _service(api, tmp_path, authority, clock=lambda: now[0], wall_clock=lambda: wall[0])
    token = api.issue(ServiceAccountToken("default", "client", expires=wall[0] + 5))
    _issue(service, token, CLIENT)
    now[0], wall[0] = 5.0, wall[0] + 5  # well inside the TTL, but the token has expired
    _issue(service, token, CLIENT)
    assert len(api.requests) == 2


def test_refusals_are_not_cached(api, tmp_path, authority):
    service, _ = _service(api, tmp_path, authority)
    token = api.issue(ServiceAccountToken("default", "client"))
    api.status_code = 500
    assert _refused(service, token, CLIENT).reason == "token_review_failed"
    api.status_code = 201  # the API server is back
    assert _issue(service, token, CLIENT).identity == CLIENT


def test_concurrent_requests_with_one_token_share_one_review(api, tmp_path, authority):
    service, kube = _service(api, tmp_path, authority)
    token = api.issue(ServiceAccountToken("default", "client"))
    api.hold.clear()  # reviews wait: the other requests arrive while the first is in flight
    with futures.ThreadPoolExecutor(8) as pool:
        results = [pool.submit(_issue, service, token, CLIENT) for _ in range(8)]
        api.hold.set()
        assert {r.result(timeout=30).identity for r in results} == {CLIENT}
    assert len(api.requests) == 1


class BlockingReviewer:
    """A reviewer that holds every review until released, to fill the in-flight slots."""

    def __init__(self):
        self.entered = threading.Event()
        self.release = threading.Event()

    def review(self, token, audiences, timeout):
        self.entered.set()
        assert self.release.wait(30)
        return _status()


def test_a_request_waiting_on_another_s_review_shares_its_outcome():
    kube = KubeTokenAuthenticator(CONFIG, BlockingReviewer())
    refused = _Flight(refusal=CaRefusal(Status.UNAUTHENTICATED, "token_rejected", "the API said no"))
    crashed, accepted = _Flight(), _Flight(caller=KubeCaller(CLIENT))
    for flight in (refused, crashed, accepted):
        flight.done.set()
    with pytest.raises(CaRefusal) as shared:
        kube._follow(refused)
    assert shared.value is not refused.refusal and (shared.value.reason, str(shared.value)) == (
        "token_rejected", "the API said no")
    with pytest.raises(CaRefusal) as after_crash:  # the leader's own request reports the exception
        kube._follow(crashed)
    assert after_crash.value.reason == "token_review_failed"
    assert kube._follow(accepted) == KubeCaller(CLIENT)


def test_reviews_in_flight_are_bounded(tmp_path, authority):
    reviewer = BlockingReviewer()
    config = KubeAuthConfig(trust_domain=TD, max_in_flight=1, review_timeout=0.05)
    kube = KubeTokenAuthenticator(config, reviewer)
    first = ServiceAccountToken("default", "client").jwt()
    with futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(kube.authenticate, first)
        assert reviewer.entered.wait(30)
        with pytest.raises(CaRefusal) as busy:  # another token: no slot within the timeout
            kube.authenticate(ServiceAccountToken("default", "server").jwt())
        reviewer.release.set()
        assert pending.result(timeout=30) == KubeCaller(CLIENT)
    assert busy.value.reason == "token_review_busy" and "1 token reviews already in flight" in str(busy.value)
    assert busy.value.status == Status.UNAVAILABLE
    assert kube.reviews == 1


def test_an_oversized_or_opaque_token_never_reaches_the_api(api, tmp_path, authority):
    service, _ = _service(api, tmp_path, authority)
    assert _refused(service, "a.b." + "c" * MAX_TOKEN_BYTES, CLIENT).reason == "token_too_large"
    assert _refused(service, "opaque-secret", CLIENT).reason == "unknown_token"
    assert api.requests == []


def test_project_tokens_still_work_and_never_reach_the_api(api, tmp_path, authority):
    service, _ = _service(api, tmp_path, authority)
    project = TokenStore(tmp_path / "tokens.json").create(WorkloadCaller(CLIENT))
    assert _issue(service, project, CLIENT).caller == WorkloadCaller(CLIENT)
    assert _refused(service, "amt_not-a-token", CLIENT).reason == "unknown_token"
    assert api.requests == []


def test_discovery_authentication_accepts_both_kinds(api, tmp_path, authority):
    service, _ = _service(api, tmp_path, authority)
    project = TokenStore(tmp_path / "tokens.json").create(WorkloadCaller(CLIENT))
    assert service.authenticate_token(project) == WorkloadCaller(CLIENT)
    assert service.authenticate_token(api.issue(ServiceAccountToken("default", "server"))) == KubeCaller(SERVER)
    assert service.authenticate_token(ServiceAccountToken("default", "server").jwt()) is None
    assert service.authenticate_token("amt_unknown") is None


def test_the_token_never_appears_in_logs_or_refusals(api, tmp_path, authority, caplog):
    caplog.set_level(logging.DEBUG)
    service, _ = _service(api, tmp_path, authority)
    good = api.issue(ServiceAccountToken("default", "client"))
    echoed = ServiceAccountToken("default", "x").jwt()
    api.users[echoed] = {"user": {}, "error": f"[invalid bearer token {echoed}] " + "x" * 400}  # quoted, long
    claims = ServiceAccountToken("default", "y").jwt()
    api.users[claims] = {"user": {}, "error": f"bad claims {claims.split('.')[1]}"}  # quotes one segment
    _issue(service, good, CLIENT)
    messages = [str(_refused(service, echoed, CLIENT)), str(_refused(service, claims, CLIENT)),
                str(_refused(service, good, SERVER, str(SERVER)))]
    assert messages[0].startswith("the Kubernetes API refused the token: [invalid bearer token <token>] xxx")
    assert messages[1] == "the Kubernetes API refused the token: bad claims <token>"
    logged = [r.getMessage() for r in caplog.records]
    assert any("reviewed" in m for m in logged)  # the review did log, by digest
    for text in messages + logged:
        for token in (good, echoed, claims):
            assert not any(part in text for part in token.split(".")[1:])


# -- end to end: the gRPC CA server, a real CSR, the token read from its file ----------------------


def test_end_to_end_through_the_grpc_ca_with_a_rotated_token_file(api, tmp_path, authority, caplog):
    placement = StaticPodPlacement({"node-1": {SERVER}})
    service, _ = _service(api, tmp_path, authority, placement)
    metrics = CaMetrics(CollectorRegistry())
    server = CaServer(service, ServeConfig(listen="127.0.0.1:0"), metrics)
    port = server.start()
    path = tmp_path / "istio-token"
    ztunnel = ServiceAccountToken("istio-system", "ztunnel", pod="ztunnel-x7k2p", pod_uid="u9", node="node-1")
    first = api.issue(ztunnel)
    path.write_text(first + "\n")
    try:
        with CaClient(f"127.0.0.1:{port}", authority.root_pem.encode(), token_file(path),
                      server_name="localhost") as client:
            certified = client.create_certificate(SERVER)
            assert certified.identity == SERVER
            rotated = api.issue(ztunnel)  # the kubelet replaces the projected token
            path.write_text(rotated)
            client.create_certificate(SERVER)
            with pytest.raises(CaRequestFailed) as failure:
                client.create_certificate(CLIENT)
            path.unlink()
            with pytest.raises(CertificateError, match="istio-token: No such file"):
                client.create_certificate(SERVER)
    finally:
        server.stop(grace=None)
    assert [r["spec"]["token"] for r in api.requests] == [first, rotated]
    assert failure.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "node node-1 runs no pod with identity" in failure.value.details
    assert metrics.registry.get_sample_value("ambient_ca_certificates_issued_total", {"caller": "node"}) == 2
    assert not any(first in r.getMessage() or rotated in r.getMessage() for r in caplog.records)


def test_token_file_is_read_on_every_call_and_names_what_is_wrong(tmp_path):
    path = tmp_path / "token"
    read = token_file(path)
    path.write_text("first\n")
    assert read() == "first"
    path.write_text("second")
    assert read() == "second"
    path.write_text("  \n")
    with pytest.raises(CertificateError, match=f"token file {path} is empty"):
        read()
    path.write_bytes(b"x" * (64 * 1024 + 1))
    with pytest.raises(CertificateError, match="not a token"):
        read()
