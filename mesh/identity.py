"""SPIFFE identities of the mesh: ``spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>``.

Every component names workloads this way (the CA issues it as the certificate's only URI SAN, the
proxies compare it with what a peer presents, policies match on it), so the one parser lives here.
Parsing is strict: a malformed ID is the peer's or the user's fault and raises ``InvalidSpiffeId``
with the reason, never a half-parsed value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_TRUST_DOMAIN = "cluster.local"
# The namespace whose GLOBAL AuthorizationPolicies apply to the whole mesh (Istio's default root).
ROOT_NAMESPACE = "istio-system"

# SPIFFE trust domains: lowercase letters, digits, '.', '-', '_' (SPIFFE-ID spec section 2.1).
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]{1,255}$")
# Kubernetes namespace and service-account names: DNS-1123 labels and subdomains.
_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class InvalidSpiffeId(ValueError):
    """A string that is not a mesh SPIFFE ID; the message says which part is wrong."""


def validate_trust_domain(trust_domain: str) -> str:
    if not _TRUST_DOMAIN.match(trust_domain):
        raise InvalidSpiffeId(
            f"trust domain {trust_domain!r} must be 1-255 characters of a-z, 0-9, '.', '-', '_'"
        )
    return trust_domain


def validate_k8s_name(what: str, value: str) -> str:
    """``value`` if it is a valid Kubernetes object name (namespace, service account, node)."""
    if not isinstance(value, str) or not _K8S_NAME.match(value):
        raise InvalidSpiffeId(f"{what} {value!r} is not a valid Kubernetes name")
    return value


@dataclass(frozen=True, slots=True)
class SpiffeId:
    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        validate_trust_domain(self.trust_domain)
        validate_k8s_name("namespace", self.namespace)
        validate_k8s_name("service account", self.service_account)

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        if not isinstance(text, str):
            raise InvalidSpiffeId(f"expected a string, got {type(text).__name__}")
        prefix = "spiffe://"
        if not text.startswith(prefix):
            raise InvalidSpiffeId(f"{text!r} does not start with {prefix!r}")
        trust_domain, _, path = text[len(prefix) :].partition("/")
        parts = path.split("/")
        if len(parts) != 4 or parts[0] != "ns" or parts[2] != "sa":
            raise InvalidSpiffeId(f"{text!r} is not of the form spiffe://<trust-domain>/ns/<ns>/sa/<sa>")
        return cls(trust_domain, parts[1], parts[3])

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"
