"""The CA's state directory: key material on disk, in Istio's ``cacerts`` file names.

    ca-cert.pem     the certificate that signs workload certificates
    ca-key.pem      its private key (mode 0600; the directory is 0700)
    cert-chain.pem  ca-cert.pem and everything above it, up to and including the root
    root-cert.pem   the mesh root: what every workload trusts
    ca.json         the trust domain
    tokens.json     digests of the bearer tokens (``ca.tokens``)
    placements.json which identities run on which node (``ca.placement``), until discovery supplies it

``init_self_signed`` makes a new root that signs directly. ``import_plugin`` takes an operator's
intermediate CA (the four files of Istio's plug-in CA, as in ``istioctl``'s cacerts secret), checks
that it is coherent, and copies it in. ``load`` reads either back as a ``SigningAuthority``.
Every error names the file and what is wrong with it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ca.authority import SigningAuthority, utcnow
from mesh.identity import InvalidSpiffeId, validate_trust_domain

CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT, CONFIG = (
    "ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem", "ca.json",
)


class CaStoreError(Exception):
    """The CA directory, or a plug-in CA, is missing something or is inconsistent."""


def _pem(certs: list[x509.Certificate] | tuple[x509.Certificate, ...]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _read_certs(path: Path) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except FileNotFoundError:
        raise CaStoreError(f"{path}: file not found") from None
    except ValueError as exc:
        raise CaStoreError(f"{path}: not PEM certificates: {exc}") from None
    return certs


def _read_key(path: Path):
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise CaStoreError(f"{path}: file not found") from None
    except (ValueError, TypeError) as exc:
        raise CaStoreError(f"{path}: not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise CaStoreError(f"{path}: CA key must be ECDSA or RSA, not {type(key).__name__}")
    return key


def _check_chain(chain: list[x509.Certificate], source: Path) -> None:
    """Each certificate is a CA certificate signed by the next; the last is a self-signed root;
    all are valid now."""
    now = utcnow()
    for i, cert in enumerate(chain):
        subject = cert.subject.rfc4514_string() or "(empty subject)"
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise CaStoreError(f"{source}: certificate {subject!r} is not a CA certificate (basicConstraints CA:TRUE)")
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise CaStoreError(
                f"{source}: certificate {subject!r} is not valid now "
                f"({cert.not_valid_before_utc} to {cert.not_valid_after_utc})"
            )
        issuer = chain[i + 1] if i + 1 < len(chain) else cert
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            what = "is not self-signed" if issuer is cert else f"is not signed by {issuer.subject.rfc4514_string()!r}"
            raise CaStoreError(f"{source}: certificate {subject!r} {what}") from None


def _write(directory: Path, trust_domain: str, key, chain: list[x509.Certificate]) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(directory / CA_KEY, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    (directory / CA_CERT).write_bytes(_pem(chain[:1]))
    (directory / CERT_CHAIN).write_bytes(_pem(chain))
    (directory / ROOT_CERT).write_bytes(_pem(chain[-1:]))
    (directory / CONFIG).write_text(json.dumps({"trust_domain": trust_domain}, indent=2) + "\n")


def _refuse_existing(directory: Path) -> None:
    if (directory / CA_KEY).exists():
        raise CaStoreError(f"{directory}: a CA already exists here ({CA_KEY}); refusing to replace it")


def init_self_signed(directory: Path, trust_domain: str) -> SigningAuthority:
    _refuse_existing(directory)
    authority = SigningAuthority.self_signed(trust_domain)
    _write(directory, trust_domain, authority.key, list(authority.chain))
    return authority


def import_plugin(directory: Path, plugin_dir: Path, trust_domain: str) -> SigningAuthority:
    """Check and copy a plug-in CA (``ca-cert.pem``, ``ca-key.pem``, ``root-cert.pem``,
    ``cert-chain.pem``). ``cert-chain.pem`` may or may not repeat ``ca-cert.pem`` first and the
    root last; the stored chain always runs from the signing certificate to the root."""
    _refuse_existing(directory)
    signing = _read_certs(plugin_dir / CA_CERT)
    if len(signing) != 1:
        raise CaStoreError(f"{plugin_dir / CA_CERT}: expected one certificate, found {len(signing)}")
    roots = _read_certs(plugin_dir / ROOT_CERT)
    if len(roots) != 1:
        raise CaStoreError(f"{plugin_dir / ROOT_CERT}: expected one certificate, found {len(roots)}")
    middle = _read_certs(plugin_dir / CERT_CHAIN)
    if middle and middle[0] == signing[0]:
        middle = middle[1:]
    if middle and middle[-1] == roots[0]:
        middle = middle[:-1]
    chain = signing + middle + roots if signing[0] != roots[0] else roots
    _check_chain(chain, plugin_dir / CERT_CHAIN)
    key = _read_key(plugin_dir / CA_KEY)
    try:
        authority = SigningAuthority(trust_domain, key, tuple(chain))
    except ValueError as exc:
        raise CaStoreError(f"{plugin_dir / CA_KEY}: {exc}") from None
    _write(directory, trust_domain, key, chain)
    return authority


def load(directory: Path) -> SigningAuthority:
    try:
        config = json.loads((directory / CONFIG).read_text())
        trust_domain = validate_trust_domain(config["trust_domain"])
    except FileNotFoundError:
        raise CaStoreError(
            f"{directory}: no CA here (missing {CONFIG}); run `ambient ca init --dir {directory}`"
        ) from None
    except (ValueError, KeyError, TypeError, InvalidSpiffeId) as exc:
        raise CaStoreError(f"{directory / CONFIG}: {exc}") from None
    chain = _read_certs(directory / CERT_CHAIN)
    if not chain:
        raise CaStoreError(f"{directory / CERT_CHAIN}: no certificates")
    _check_chain(chain, directory / CERT_CHAIN)
    key = _read_key(directory / CA_KEY)
    try:
        return SigningAuthority(trust_domain, key, tuple(chain))
    except ValueError as exc:
        raise CaStoreError(f"{directory / CA_KEY}: {exc}") from None
