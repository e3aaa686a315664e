"""One CreateCertificate request, decided without I/O.

Order matters: the caller is authenticated first (an unknown caller learns nothing about its
request), then the identity it asks for is authorised, and only then is the CSR examined and signed.

Authentication: a token of this CA's shape (``amt_...``) must be known and, for a node token bound
to its node's addresses, presented from one of them (``peer_address``; an unknown peer cannot
present a bound token). Any other token is a Kubernetes service-account token when the CA was given
a ``KubeTokenAuthenticator`` (``ca.kube_auth``: the API server reviews it), else unknown. A token is
never tried both ways: the CA's own secrets never reach the API server.

Authorisation:
- a workload token obtains its own bound identity only (``ImpersonatedIdentity``, if sent, must
  equal it);
- a node token must name ``ImpersonatedIdentity`` and obtains it only if a pod with that identity
  is scheduled on its node;
- a Kubernetes caller obtains its own identity; a node proxy's (ztunnel's service account) may name
  another in ``ImpersonatedIdentity`` and obtains it only if a pod with that identity runs on the
  node of the pod its token is bound to;
- nothing outside the CA's trust domain is ever issued.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from ca.authority import CaRefusal, IssuancePolicy, SigningAuthority, Status, invalid
from ca.kube_auth import KubeTokenAuthenticator
from ca.placement import PodPlacement
from ca.tokens import (
    Caller,
    KubeCaller,
    NodeCaller,
    PeerAddress,
    TokenStore,
    WorkloadCaller,
    is_project_token,
    parse_bearer,
)
from mesh.identity import InvalidSpiffeId, SpiffeId


@dataclass(frozen=True)
class CertificateRequest:
    """What arrived, already out of its wire encoding."""

    authorization: str | None  # the raw `authorization` header value
    csr: str
    validity_seconds: int
    impersonated_identity: object = None  # as sent: must be a SPIFFE ID string if present
    peer_address: PeerAddress | None = None  # where the request came from, if the transport knows


@dataclass(frozen=True)
class Issued:
    caller: Caller
    identity: SpiffeId
    cert_chain: list[str]
    not_after: dt.datetime
    serial: int


def _bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise CaRefusal(Status.UNAUTHENTICATED, "missing_token",
                        "no bearer token: send `authorization: Bearer <token>`")
    token = parse_bearer(authorization)
    if token is None:
        raise CaRefusal(Status.UNAUTHENTICATED, "missing_token", "authorization header is not `Bearer <token>`")
    return token


class CertificateService:
    def __init__(
        self,
        authority: SigningAuthority,
        tokens: TokenStore,
        placement: PodPlacement,
        policy: IssuancePolicy = IssuancePolicy(),
        kube: KubeTokenAuthenticator | None = None,
    ) -> None:
        """``kube``: also accept Kubernetes service-account tokens (on a cluster); None: only this
        CA's own tokens (the lab)."""
        self.authority = authority
        self._tokens = tokens
        self._placement = placement
        self._policy = policy
        self._kube = kube

    def authenticate(self, authorization: str | None, peer: PeerAddress | None = None) -> Caller:
        token = _bearer_token(authorization)
        if self._kube is not None and not is_project_token(token):
            return self._kube.authenticate(token)  # blocks for a review: we run in a gRPC worker thread
        caller = self._tokens.authenticate(token)
        if caller is None:
            raise CaRefusal(Status.UNAUTHENTICATED, "unknown_token", "bearer token is not known to this CA")
        if isinstance(caller, NodeCaller) and not caller.allows_peer(peer):
            refusal = CaRefusal(Status.UNAUTHENTICATED, "token_address",
                                f"the token of {caller} is not valid from {peer or 'an unknown address'}")
            refusal.caller = caller
            raise refusal
        return caller

    def authenticate_token(self, token: str) -> Caller | None:
        """The caller ``token`` stands for, or None: the shape discovery's ``Authenticate`` wants
        (it checks a node token's address binding itself). Blocks for a Kubernetes token's review."""
        if self._kube is not None and not is_project_token(token):
            try:
                return self._kube.authenticate(token)
            except CaRefusal:
                return None
        return self._tokens.authenticate(token)

    def authorize(self, caller: Caller, impersonated: object) -> SpiffeId:
        """The one identity ``caller`` gets for this request, or a refusal saying why not."""
        requested: SpiffeId | None = None
        if impersonated is not None:
            if not isinstance(impersonated, str):
                raise invalid("bad_metadata", "metadata ImpersonatedIdentity must be a string")
            try:
                requested = SpiffeId.parse(impersonated)
            except InvalidSpiffeId as exc:
                raise invalid("bad_metadata", f"metadata ImpersonatedIdentity: {exc}") from None
        if isinstance(caller, WorkloadCaller):
            if requested is not None and requested != caller.identity:
                raise CaRefusal(
                    Status.PERMISSION_DENIED,
                    "forbidden_identity",
                    f"{caller} may not obtain a certificate for {requested}",
                )
            return caller.identity
        if isinstance(caller, KubeCaller):
            return self._authorize_kube(caller, requested)
        assert isinstance(caller, NodeCaller)
        if requested is None:
            raise CaRefusal(
                Status.PERMISSION_DENIED,
                "forbidden_identity",
                f"{caller} must name the workload in metadata ImpersonatedIdentity",
            )
        if not self._placement.has_pod(caller.node, requested):
            raise CaRefusal(
                Status.PERMISSION_DENIED,
                "forbidden_identity",
                f"{caller} runs no pod with identity {requested}",
            )
        return requested

    def _authorize_kube(self, caller: KubeCaller, requested: SpiffeId | None) -> SpiffeId:
        if requested is None or requested == caller.identity:
            return caller.identity
        assert self._kube is not None  # a KubeCaller comes only from it
        if not caller.node_proxy:
            trusted = ", ".join(sorted(self._kube.config.node_service_accounts))
            raise CaRefusal(
                Status.PERMISSION_DENIED,
                "forbidden_identity",
                f"{caller} may not obtain a certificate for {requested}: only the node proxies' service accounts "
                f"({trusted}) may impersonate",
            )
        node = self._kube.impersonation_node(caller)
        if not self._placement.has_pod(node, requested):
            raise CaRefusal(
                Status.PERMISSION_DENIED,
                "forbidden_identity",
                f"{caller}: node {node} runs no pod with identity {requested}",
            )
        return requested

    def create_certificate(self, request: CertificateRequest) -> Issued:
        caller = self.authenticate(request.authorization, request.peer_address)
        try:
            identity = self.authorize(caller, request.impersonated_identity)
            lifetime = self._policy.lifetime(request.validity_seconds)
            leaf, chain = self.authority.issue(request.csr, identity, lifetime)
        except CaRefusal as refusal:
            refusal.caller = caller
            raise
        return Issued(caller, identity, chain, leaf.not_valid_after_utc, leaf.serial_number)
