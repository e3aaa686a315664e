"""Shared by every component: identities, the resource model, discovery, the CLI and the lab."""

__version__ = "0.1.0"

from mesh.identity import DEFAULT_TRUST_DOMAIN, InvalidSpiffeId, SpiffeId, validate_k8s_name, validate_trust_domain

__all__ = ["__version__", "DEFAULT_TRUST_DOMAIN", "InvalidSpiffeId", "SpiffeId", "validate_k8s_name",
           "validate_trust_domain"]
