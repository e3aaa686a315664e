"""Certificates for the ztunnel tests, from an in-memory mesh CA (ca.authority.SigningAuthority)."""

from __future__ import annotations

import datetime as dt

from cryptography.hazmat.primitives import serialization

from ca.authority import SigningAuthority
from ca.client import CertifiedKey, new_key_and_csr
from hbone.tls import WorkloadCredentials
from mesh.identity import SpiffeId

TD = "cluster.local"
HOUR = dt.timedelta(hours=1)


def key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def certified(authority: SigningAuthority, identity: SpiffeId, *, now: dt.datetime | None = None,
              lifetime: dt.timedelta = HOUR) -> CertifiedKey:
    """What SecretManager hands out: a key and its chain, leaf first, root last."""
    key, csr = new_key_and_csr(identity)
    leaf, chain = authority.issue(csr, identity, lifetime, now=now)
    return CertifiedKey(identity, key_pem(key), tuple(chain), leaf.not_valid_before_utc, leaf.not_valid_after_utc)


def creds(authority: SigningAuthority, identity: SpiffeId, *, trusting: SigningAuthority | None = None,
          **kwargs) -> WorkloadCredentials:
    roots = (trusting.root_pem,) if trusting is not None else None
    return WorkloadCredentials.from_certified_key(certified(authority, identity, **kwargs), roots)
