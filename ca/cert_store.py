"""Workload certificates and keys kept across a proxy's restart, so it can serve while the CA is away.

A restarted ztunnel with no certificate cannot serve its pods until the CA answers; Istio's ztunnel
keeps them in memory only, so a restart during a control plane outage takes every pod on the node
down. Here ``SecretManager`` saves each certificate it receives (with its key) in a directory only
the proxy's user can read (``mesh.private_files``: ``0700``, files ``0600``), and reads it back for an
identity it starts serving, while it is still valid.

What is read back is checked as a fresh answer from the CA is (``ca.client.verify_issued``): the chain
must verify to the mesh root this proxy trusts, name the identity asked for, and carry the stored
key's public key; an expired, foreign or damaged file is ignored (and removed). Keys are never
logged. A forgotten identity's file is removed with it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca.client import verify_issued
from mesh.certs import CertificateError, CertifiedKey
from mesh.identity import SpiffeId
from mesh.private_files import private_directory, read_private, write_private

log = logging.getLogger("ambient.ca.store")

MAX_STORED_BYTES = 64 * 1024  # a key and a chain of a few certificates; anything larger is not ours


class CertificateStore:
    def __init__(self, directory: Path, trusted_root_pem: bytes) -> None:
        self._directory = private_directory(directory)
        self._root = x509.load_pem_x509_certificate(trusted_root_pem)

    def _path(self, identity: SpiffeId) -> Path:
        # SPIFFE IDs hold '/' and ':': the file is named by a digest of the ID, which it also records.
        return self._directory / (hashlib.sha256(str(identity).encode()).hexdigest()[:32] + ".json")

    def save(self, cert: CertifiedKey) -> None:
        document = {"identity": str(cert.identity), "key_pem": cert.key_pem.decode(), "chain_pem": list(cert.chain_pem)}
        write_private(self._path(cert.identity), json.dumps(document).encode())

    def load(self, identity: SpiffeId, now: dt.datetime | None = None) -> CertifiedKey | None:
        """The stored certificate for ``identity`` if it is there, checks out and has not expired by
        ``now`` (default: the wall clock)."""
        path = self._path(identity)
        try:
            data = read_private(path, MAX_STORED_BYTES)
            if data is None:
                return None
            document = json.loads(data)
            if not isinstance(document, dict) or document.get("identity") != str(identity):
                raise CertificateError("it is not this identity's")
            key = serialization.load_pem_private_key(str(document["key_pem"]).encode(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise CertificateError("its key is not an EC key")
            chain = document["chain_pem"]
            if not isinstance(chain, list) or not all(isinstance(pem, str) for pem in chain):
                raise CertificateError("its chain is not a list of PEM certificates")
            cert = verify_issued(chain, self._root, identity, key)
        except (OSError, ValueError, TypeError, KeyError, CertificateError) as exc:
            log.warning("stored certificate for %s not used: %s", identity, exc)
            self.remove(identity)
            return None
        if cert.not_after <= (now or dt.datetime.now(dt.UTC)):
            log.info("stored certificate for %s expired at %s; not used", identity, cert.not_after.isoformat())
            self.remove(identity)
            return None
        return cert

    def remove(self, identity: SpiffeId) -> None:
        try:
            os.unlink(self._path(identity))
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove the stored certificate of %s: %s", identity, exc)
