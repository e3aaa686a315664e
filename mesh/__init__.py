"""Shared by every component: identities, the resource model, discovery, the CLI and the lab."""

from mesh.identity import DEFAULT_TRUST_DOMAIN, InvalidSpiffeId, SpiffeId, validate_k8s_name, validate_trust_domain

__all__ = ["DEFAULT_TRUST_DOMAIN", "InvalidSpiffeId", "SpiffeId", "validate_k8s_name", "validate_trust_domain"]
