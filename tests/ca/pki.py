"""Test PKI: an operator's own root and intermediate, as a plug-in CA would be made."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca.authority import key_usage


def ca_cert(subject: str, key, issuer_name: x509.Name | None = None, issuer_key=None, *, ca: bool = True,
            days: int = 365) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(key_usage(key_cert_sign=True, crl_sign=True), critical=True)
    return builder.sign(issuer_key or key, hashes.SHA256())


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_plugin_ca(directory: Path) -> tuple[x509.Certificate, x509.Certificate]:
    """Istio's plug-in CA files: an intermediate signed by an offline root. Returns (root, intermediate)."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = ca_cert("Operator Root CA", root_key, days=3650)
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter = ca_cert("Cluster Intermediate CA", inter_key, root.subject, root_key)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "root-cert.pem").write_bytes(pem(root))
    (directory / "ca-cert.pem").write_bytes(pem(inter))
    (directory / "ca-key.pem").write_bytes(key_pem(inter_key))
    (directory / "cert-chain.pem").write_bytes(pem(inter, root))
    return root, inter
