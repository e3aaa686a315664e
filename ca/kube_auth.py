"""Kubernetes service-account tokens as CA callers, reviewed by the API server (TokenReview).

How it works. A bearer token that is not one of the CA's own (``ca.tokens.is_project_token``) and
has the shape of a JWT is sent to ``POST /apis/authentication.k8s.io/v1/tokenreviews`` with
``spec.audiences`` set to the CA's audiences (``istio-ca``), as istiod does. The answer is judged
here without I/O (``caller_from_review``). It is accepted only if ``status.authenticated`` is true
with no ``status.error``, one of our audiences is in ``status.audiences`` (the API documents that a
reviewer which is not audience-aware answers with the API server's own audience, so a token made for
the API server must not pass as one made for us), and the user is a service account
(``system:serviceaccount:<ns>:<sa>``, in group ``system:serviceaccounts``). The caller then has the
SPIFFE ID ``spiffe://<trust domain>/ns/<ns>/sa/<sa>``.

The pod a token is bound to comes from the review's ``user.extra``
(``authentication.kubernetes.io/pod-name`` and ``pod-uid``, and ``node-name`` on Kubernetes 1.30+).
Node impersonation follows istiod's NodeAuthorizer: only a service account listed in
``KubeAuthConfig.node_service_accounts`` (default ``istio-system/ztunnel``) may ask for another
identity, only with a token bound to a pod, and only for an identity with a pod on that pod's node
(``impersonation_node`` finds the node: the token's ``node-name``, else the control plane's own view
of the pod through ``PodNodes``, whose uid must match; the placement check itself is
``ca.placement``'s). A token with no bound pod (a legacy Secret token) never impersonates.

Bounds, each a named constant below: a token over ``MAX_TOKEN_BYTES`` is refused before any call;
the review call has a timeout; at most ``MAX_REVIEWS_IN_FLIGHT`` reviews run at once (a caller
waits for a slot no longer than the timeout); concurrent requests with the same token share one
review (a ztunnel asks for all its pods' certificates at once, with one token); a successful review
is cached under the token's SHA-256 (never the token) for ``REVIEW_CACHE_TTL``, never past the
token's own ``exp``, in a cache of at most ``REVIEW_CACHE_SIZE`` entries. Refusals are not cached:
an API server outage must not outlive itself. The caller's pod → node lookup is not cached either.

I/O: ``TokenReviewClient`` drives the official ``kubernetes`` client, which blocks. The CA's gRPC
handlers run in grpcio's worker threads, so a review blocks one of those and never an event loop;
trio code would call ``KubeTokenAuthenticator.authenticate`` through ``trio.to_thread.run_sync``.
The token is never logged nor put in a refusal's message (``_redact``).
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ca.authority import CaRefusal, Status
from ca.tokens import BoundPod, KubeCaller, token_digest
from mesh.identity import InvalidSpiffeId, SpiffeId, validate_k8s_name, validate_trust_domain

log = logging.getLogger("ambient.ca.kube_auth")

DEFAULT_AUDIENCES = ("istio-ca",)  # what istio-agent and ztunnel request their projected tokens for
DEFAULT_NODE_SERVICE_ACCOUNTS = ("istio-system/ztunnel",)  # istiod's default trusted node account
# A projected service-account token is about 1 KiB; gRPC's default limit on all metadata is 8 KiB.
MAX_TOKEN_BYTES = 8 * 1024
REVIEW_TIMEOUT = 5.0  # seconds for one TokenReview call (connect + answer)
# A review is a request to the API server per certificate; a ztunnel asks for every pod of its node
# with the same token, at start and every 12 h. A minute keeps that to one review while still
# noticing a deleted pod (its bound token stops being valid) soon.
REVIEW_CACHE_TTL = 60.0
REVIEW_CACHE_SIZE = 4096  # distinct tokens remembered: one per ztunnel and per workload, with room
MAX_REVIEWS_IN_FLIGHT = 4  # concurrent calls to the API server; the CA has 8 gRPC worker threads

TOKEN_REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
SERVICE_ACCOUNT_USER_PREFIX = "system:serviceaccount:"
SERVICE_ACCOUNTS_GROUP = "system:serviceaccounts"
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"

# Three base64url segments: header.claims.signature (RFC 7519 compact serialisation).
_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
_MAX_REASON_CHARS = 300  # of an API error quoted in a refusal


class PodNodes(Protocol):
    """The control plane's view of where pods run."""

    def node_of_pod(self, namespace: str, name: str, uid: str) -> str | None:
        """The node of pod ``namespace/name`` if it exists with that ``uid`` and is scheduled; else None."""
        ...


class TokenReviewer(Protocol):
    def review(self, token: str, audiences: Sequence[str], timeout: float) -> object:
        """The TokenReview the API server answers, as decoded JSON; ``ReviewFailed`` if there is none."""
        ...


class ReviewFailed(Exception):
    """No usable answer from the API server. ``http_status`` is its HTTP status if it answered."""

    def __init__(self, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


@dataclass(frozen=True)
class KubeAuthConfig:
    trust_domain: str
    audiences: tuple[str, ...] = DEFAULT_AUDIENCES
    node_service_accounts: frozenset[str] = frozenset(DEFAULT_NODE_SERVICE_ACCOUNTS)  # "<namespace>/<name>"
    review_timeout: float = REVIEW_TIMEOUT
    cache_ttl: float = REVIEW_CACHE_TTL
    cache_size: int = REVIEW_CACHE_SIZE
    max_in_flight: int = MAX_REVIEWS_IN_FLIGHT

    def __post_init__(self) -> None:
        try:
            validate_trust_domain(self.trust_domain)
        except InvalidSpiffeId as exc:
            raise ValueError(f"kube auth: {exc}") from None
        audiences = tuple(self.audiences)
        if not audiences or not all(isinstance(a, str) and a.strip() == a and a for a in audiences):
            raise ValueError(f"kube auth: audiences must be one or more non-empty names, not {self.audiences!r}")
        object.__setattr__(self, "audiences", audiences)
        accounts = frozenset(self.node_service_accounts)
        for account in accounts:
            namespace, sep, name = str(account).partition("/")
            try:
                if not sep:
                    raise InvalidSpiffeId("expected <namespace>/<service account>")
                validate_k8s_name("namespace", namespace)
                validate_k8s_name("service account", name)
            except InvalidSpiffeId as exc:
                raise ValueError(f"kube auth: node service account {account!r}: {exc}") from None
        object.__setattr__(self, "node_service_accounts", accounts)
        for what in ("review_timeout", "cache_ttl"):
            if not getattr(self, what) > 0:
                raise ValueError(f"kube auth: {what} must be a positive number of seconds")
        for what in ("cache_size", "max_in_flight"):
            if not isinstance(getattr(self, what), int) or getattr(self, what) < 1:
                raise ValueError(f"kube auth: {what} must be a positive integer")


def _refusal(reason: str, message: str, status: Status = Status.UNAUTHENTICATED) -> CaRefusal:
    return CaRefusal(status, reason, message)


def check_token_shape(token: str) -> None:
    """Refuse, before any call, a token that is too large or is not a JWT."""
    size = len(token.encode("utf-8", "surrogateescape"))
    if size > MAX_TOKEN_BYTES:
        raise _refusal("token_too_large", f"bearer token of {size} bytes is over the limit of {MAX_TOKEN_BYTES}")
    if not _JWT_SHAPE.match(token):
        raise _refusal("unknown_token",
                       "bearer token is neither a token of this CA nor a Kubernetes service-account token (JWT)")


def unverified_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT (Unix time), read without checking the signature: used only to
    forget a cached review no later than the token itself expires, never to trust anything."""
    try:
        claims_segment = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(claims_segment + "=" * (-len(claims_segment) % 4)))
    except (IndexError, ValueError, binascii.Error, UnicodeDecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def _one_extra(extra: Mapping[str, object], key: str) -> str | None:
    values = extra.get(key)
    if isinstance(values, list) and len(values) == 1 and isinstance(values[0], str) and values[0]:
        return values[0]
    return None


def caller_from_review(review: object, config: KubeAuthConfig) -> KubeCaller:
    """Judge a TokenReview answer (decoded JSON): the caller it proves, or a refusal saying why not."""
    status = review.get("status") if isinstance(review, dict) else None
    if not isinstance(status, dict):
        raise _refusal("token_review_failed", "the Kubernetes API's TokenReview answer has no status")
    error = status.get("error")
    if error:
        raise _refusal("token_rejected", f"the Kubernetes API refused the token: {error}")  # shortened by the caller
    if status.get("authenticated") is not True:
        raise _refusal("token_rejected", "the Kubernetes API did not authenticate the token")
    audiences = status.get("audiences") or []
    if not isinstance(audiences, list) or not set(config.audiences) & {a for a in audiences if isinstance(a, str)}:
        raise _refusal(
            "token_audience",
            f"the token is not for audience {', '.join(config.audiences)} "
            f"(the Kubernetes API accepted it for {', '.join(map(str, audiences)) or 'its own audience only'})",
        )
    user = status.get("user")
    user = user if isinstance(user, dict) else {}
    username = user.get("username")
    groups = user.get("groups")
    parts = username.split(":") if isinstance(username, str) else []
    if (not isinstance(username, str) or not username.startswith(SERVICE_ACCOUNT_USER_PREFIX) or len(parts) != 4
            or not isinstance(groups, list) or SERVICE_ACCOUNTS_GROUP not in groups):
        raise _refusal("not_service_account", f"user {username!r} is not a Kubernetes service account")
    namespace, service_account = parts[2], parts[3]
    try:
        identity = SpiffeId(config.trust_domain, namespace, service_account)
    except InvalidSpiffeId as exc:
        raise _refusal("not_service_account", f"user {username!r}: {exc}") from None
    extra = user.get("extra")
    extra = extra if isinstance(extra, dict) else {}
    pod_name, pod_uid = _one_extra(extra, POD_NAME_EXTRA), _one_extra(extra, POD_UID_EXTRA)
    node = _one_extra(extra, NODE_NAME_EXTRA)
    try:
        pod = (BoundPod(namespace, validate_k8s_name("pod", pod_name), pod_uid,
                        validate_k8s_name("node", node) if node else None)
               if pod_name and pod_uid else None)
    except InvalidSpiffeId as exc:
        raise _refusal("token_review_failed", f"the Kubernetes API's TokenReview answer: {exc}") from None
    return KubeCaller(identity, pod, f"{namespace}/{service_account}" in config.node_service_accounts)


def impersonation_node(caller: KubeCaller, pod_nodes: PodNodes | None) -> str:
    """The node whose pods ``caller`` (a node proxy) may obtain certificates for, or a refusal."""
    if caller.pod is None:
        raise _refusal("forbidden_identity",
                       f"{caller} may not impersonate: its token is not bound to a pod, so its node is unknown",
                       Status.PERMISSION_DENIED)
    if caller.pod.node:
        return caller.pod.node  # the API server vouched for it when it reviewed the bound token
    node = pod_nodes.node_of_pod(caller.pod.namespace, caller.pod.name, caller.pod.uid) if pod_nodes else None
    if node is None:
        raise _refusal("forbidden_identity",
                       f"{caller} may not impersonate: the control plane knows no pod {caller.pod.namespace}/"
                       f"{caller.pod.name} with uid {caller.pod.uid} on a node (yet: retry)",
                       Status.PERMISSION_DENIED)
    return node


class ReviewCache:
    """Successful reviews by token digest, each until its own deadline; the oldest goes first when full."""

    def __init__(self, ttl: float, size: int) -> None:
        self._ttl = ttl
        self._size = size
        self._entries: OrderedDict[str, tuple[float, KubeCaller]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: str, now: float) -> KubeCaller | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if now >= entry[0]:
            del self._entries[digest]
            return None
        return entry[1]

    def put(self, digest: str, caller: KubeCaller, now: float, seconds_left: float | None) -> None:
        """Remember ``caller`` for the TTL, or less if the token expires sooner (``seconds_left``)."""
        lifetime = self._ttl if seconds_left is None else min(self._ttl, seconds_left)
        if lifetime <= 0:
            return
        self._entries.pop(digest, None)
        self._entries[digest] = (now + lifetime, caller)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)


@dataclass
class _Flight:
    """One review in progress, which requests with the same token wait for."""

    done: threading.Event = field(default_factory=threading.Event)
    caller: KubeCaller | None = None
    refusal: CaRefusal | None = None


def _redact(text: str, token: str) -> str:
    """``text`` without ``token`` or any long part of it (an API error might quote the token, or one
    of its segments), then shortened: redacted first, so that a cut cannot leave a piece behind."""
    for secret in (token, *token.split(".")):
        if len(secret) >= 16:
            text = text.replace(secret, "<token>")
    return text[:_MAX_REASON_CHARS]


class KubeTokenAuthenticator:
    """Kubernetes tokens → ``KubeCaller``, with the cache and bounds of the module docstring.

    ``authenticate`` blocks (a review is a network call): call it from a worker thread."""

    def __init__(
        self,
        config: KubeAuthConfig,
        reviewer: TokenReviewer,
        pod_nodes: PodNodes | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._reviewer = reviewer
        self._pod_nodes = pod_nodes
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._cache = ReviewCache(config.cache_ttl, config.cache_size)
        self._flights: dict[str, _Flight] = {}
        self._slots = threading.BoundedSemaphore(config.max_in_flight)
        self.reviews = 0  # calls made to the API server

    def impersonation_node(self, caller: KubeCaller) -> str:
        return impersonation_node(caller, self._pod_nodes)

    def authenticate(self, token: str) -> KubeCaller:
        check_token_shape(token)
        digest = token_digest(token)
        with self._lock:
            cached = self._cache.get(digest, self._clock())
            if cached is not None:
                return cached
            flight = self._flights.get(digest)
            leader = flight is None
            if flight is None:
                flight = self._flights[digest] = _Flight()
        if not leader:
            return self._follow(flight)
        try:
            flight.caller = self._review(token, digest)
            return flight.caller
        except CaRefusal as refusal:
            flight.refusal = refusal
            raise
        finally:
            with self._lock:
                del self._flights[digest]
            flight.done.set()

    def _follow(self, flight: _Flight) -> KubeCaller:
        # The leader waits at most the timeout for a slot, then at most the timeout for the answer.
        if not flight.done.wait(2 * self.config.review_timeout + 1):
            raise _refusal("token_review_failed", "the Kubernetes API did not review the token in time",
                           Status.UNAVAILABLE)
        if flight.caller is not None:
            return flight.caller
        if flight.refusal is None:  # the leader crashed: its own request reports the exception
            raise _refusal("token_review_failed", "the token's review failed; see the CA's log", Status.UNAVAILABLE)
        # A new exception per waiter: one instance raised in several threads would share a traceback.
        raise CaRefusal(flight.refusal.status, flight.refusal.reason, str(flight.refusal))

    def _review(self, token: str, digest: str) -> KubeCaller:
        if not self._slots.acquire(timeout=self.config.review_timeout):
            raise _refusal("token_review_busy",
                           f"{self.config.max_in_flight} token reviews already in flight; retry shortly",
                           Status.UNAVAILABLE)
        try:
            with self._lock:
                self.reviews += 1
            review = self._reviewer.review(token, self.config.audiences, self.config.review_timeout)
        except ReviewFailed as exc:
            if exc.http_status in (401, 403):
                # The CA's own credentials or RBAC (create tokenreviews) are wrong: its configuration.
                raise _refusal("token_review_failed",
                               f"the CA may not review tokens: {_redact(str(exc), token)}",
                               Status.FAILED_PRECONDITION) from None
            raise _refusal("token_review_failed",
                           f"cannot review the token with the Kubernetes API: {_redact(str(exc), token)}",
                           Status.UNAVAILABLE) from None
        finally:
            self._slots.release()
        try:
            caller = caller_from_review(review, self.config)
        except CaRefusal as refusal:
            raise CaRefusal(refusal.status, refusal.reason, _redact(str(refusal), token)) from None
        expiry = unverified_expiry(token)
        with self._lock:
            self._cache.put(digest, caller, self._clock(),
                            None if expiry is None else expiry - self._wall_clock())
        log.debug("token sha256:%s… reviewed: %s", digest[:12], caller)
        return caller


class TokenReviewClient:
    """``TokenReviewer`` over the official ``kubernetes`` client. ``api_client`` is configured from
    in-cluster or kubeconfig credentials (``controlplane.kube_client.connect``); its identity needs RBAC
    ``create tokenreviews``, as the ``system:auth-delegator`` ClusterRole grants.

    The reviews go through a client of their own, a copy of that configuration with urllib3's
    retries off: a retried connection would multiply the review's timeout (urllib3 retries three
    times by default), and a caller refused now simply asks again."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client  # imported here: the lab's CA never needs the package

        configuration = copy.deepcopy(api_client.configuration)
        configuration.retries = 0
        self.api_client = client.ApiClient(configuration)
        self._api = client.AuthenticationV1Api(self.api_client)
        self._models = client

    def review(self, token: str, audiences: Sequence[str], timeout: float) -> object:
        import urllib3
        from kubernetes.client.exceptions import ApiException

        body = self._models.V1TokenReview(
            api_version="authentication.k8s.io/v1", kind="TokenReview",
            spec=self._models.V1TokenReviewSpec(token=token, audiences=list(audiences)),
        )
        try:
            # Unparsed: the raw urllib3 response (its stub says a V1TokenReview), judged as JSON here.
            response: Any = self._api.create_token_review(body, _preload_content=False, _request_timeout=timeout)
        except ApiException as exc:
            raise ReviewFailed(f"HTTP {exc.status} {exc.reason or ''}".rstrip(), exc.status) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ReviewFailed(_describe_transport(exc)) from None
        status = getattr(response, "status", None)
        if status not in (200, 201):
            raise ReviewFailed(f"HTTP {status}", status)
        try:
            return json.loads(response.data)
        except (ValueError, UnicodeDecodeError):
            raise ReviewFailed("the TokenReview answer is not JSON") from None


def _describe_transport(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)  # urllib3's MaxRetryError wraps the cause
    cause = reason if isinstance(reason, BaseException) else exc
    text = str(cause)
    if "timed out" in text.lower():
        return "no answer in time"
    return f"{type(cause).__name__}: {text}"[:_MAX_REASON_CHARS]

