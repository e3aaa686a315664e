"""Signing: turn a verified CSR into a SPIFFE workload certificate chain.

A ``SigningAuthority`` is the CA's key material, loaded once (see ``ca.store``): the signing
certificate and key, and the chain from it up to the root. ``issue`` is a pure function of that
material, a CSR, the identity the caller was authorised for, the validity and the time: it does no
I/O, so the gRPC service, the tests and the benchmarks all drive it directly.

Only the CSR's public key reaches the certificate. Whatever else the CSR asks for (subject, SANs,
extensions) is ignored: the leaf carries exactly one URI SAN, the authorised SPIFFE ID, an empty
subject (so the SAN extension is critical, RFC 5280 section 4.2.1.6), and the key usages a TLS
client and server need.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mesh.identity import SpiffeId, validate_trust_domain

ROOT_LIFETIME = dt.timedelta(days=3650)
DEFAULT_WORKLOAD_TTL = dt.timedelta(hours=24)
# Leaves start a little in the past so that a peer whose clock is slightly behind accepts them.
CLOCK_SKEW_BACKDATE = dt.timedelta(minutes=5)
MAX_CSR_BYTES = 64 * 1024
_RSA_BITS = (2048, 8192)
_EC_CURVES = (ec.SECP256R1, ec.SECP384R1)


class Status(enum.Enum):
    """The outcome class of a refusal; the names are gRPC status code names."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    UNAVAILABLE = "UNAVAILABLE"  # something the CA depends on (the Kubernetes API) did not answer: retry


class CaRefusal(Exception):
    """A request the CA will not serve. The fault is the caller's (or, for FAILED_PRECONDITION,
    the CA's configuration), never a crash: ``status`` says what to answer, ``reason`` is a short
    stable label for metrics and logs, the message says what is wrong."""

    def __init__(self, status: Status, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.caller: object | None = None  # set once the caller is known, for the log line


def invalid(reason: str, message: str) -> CaRefusal:
    return CaRefusal(Status.INVALID_ARGUMENT, reason, message)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class IssuancePolicy:
    """How long the certificates the CA signs live."""

    default_ttl: dt.timedelta = DEFAULT_WORKLOAD_TTL
    max_ttl: dt.timedelta = DEFAULT_WORKLOAD_TTL

    def __post_init__(self) -> None:
        if self.max_ttl <= dt.timedelta(0):
            raise ValueError(f"maximum certificate lifetime must be positive, got {self.max_ttl}")
        if not dt.timedelta(0) < self.default_ttl <= self.max_ttl:
            raise ValueError(
                f"default certificate lifetime {self.default_ttl} must be positive and at most "
                f"the maximum {self.max_ttl}"
            )

    def lifetime(self, requested_seconds: int) -> dt.timedelta:
        if requested_seconds < 0:
            raise invalid("bad_validity", f"validity_duration is {requested_seconds}; it must be >= 0")
        if requested_seconds == 0:
            return self.default_ttl
        return min(dt.timedelta(seconds=requested_seconds), self.max_ttl)


_KEY_USAGES = (
    "digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
    "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only",
)


def key_usage(**enabled: bool) -> x509.KeyUsage:
    """A KeyUsage with the named usages set and every other one clear."""
    return x509.KeyUsage(**{**dict.fromkeys(_KEY_USAGES, False), **enabled})


def signature_hash(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


@dataclass(frozen=True)
class SigningAuthority:
    """The CA's signing key and certificates. ``chain`` runs from the signing certificate to the
    root, both included (one element when the root signs directly)."""

    trust_domain: str
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = field(repr=False)
    chain: tuple[x509.Certificate, ...]
    # Derived once: every issuance appends the same PEM chain and the same AKI.
    chain_pem: tuple[str, ...] = field(init=False, repr=False)
    _authority_key_id: x509.AuthorityKeyIdentifier = field(init=False, repr=False)

    def __post_init__(self) -> None:
        validate_trust_domain(self.trust_domain)
        if not isinstance(self.key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
            raise ValueError(f"CA key must be ECDSA or RSA, not {type(self.key).__name__}")
        if not self.chain:
            raise ValueError("CA chain is empty")
        if self.key.public_key() != self.signing_cert.public_key():
            raise ValueError("CA key does not match the signing certificate")
        pem = tuple(c.public_bytes(serialization.Encoding.PEM).decode() for c in self.chain)
        object.__setattr__(self, "chain_pem", pem)
        object.__setattr__(
            self,
            "_authority_key_id",
            # The key's public half: the signing certificate's, as checked above.
            x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
        )

    @property
    def signing_cert(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def root(self) -> x509.Certificate:
        return self.chain[-1]

    @property
    def root_pem(self) -> str:
        return self.chain_pem[-1]

    @classmethod
    def self_signed(cls, trust_domain: str, *, now: dt.datetime | None = None) -> SigningAuthority:
        """A fresh root CA (ECDSA P-256, ten years) that signs workload certificates itself."""
        validate_trust_domain(trust_domain)
        now = now or utcnow()
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                x509.NameAttribute(NameOID.COMMON_NAME, "ambient-mesh root CA"),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW_BACKDATE)
            .not_valid_after(now + ROOT_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(key_usage(key_cert_sign=True, crl_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(trust_domain, key, (cert,))

    def _leaf_builder(
        self, public_key, not_before: dt.datetime, not_after: dt.datetime
    ) -> x509.CertificateBuilder:
        is_rsa = isinstance(public_key, rsa.RSAPublicKey)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.signing_cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(key_usage(digital_signature=True, key_encipherment=is_rsa), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(self._authority_key_id, critical=False)
        )

    def _validity(self, lifetime: dt.timedelta, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
        ca_not_after = self.signing_cert.not_valid_after_utc
        if now >= ca_not_after:
            raise CaRefusal(
                Status.FAILED_PRECONDITION, "ca_expired", f"the CA's signing certificate expired at {ca_not_after}"
            )
        # A leaf never outlives the certificate that signed it.
        return now - CLOCK_SKEW_BACKDATE, min(now + lifetime, ca_not_after)

    def _sign(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        return builder.sign(self.key, signature_hash(self.key))

    def issue(
        self, csr_pem: str | bytes, identity: SpiffeId, lifetime: dt.timedelta, *, now: dt.datetime | None = None
    ) -> tuple[x509.Certificate, list[str]]:
        """Sign ``csr_pem``'s public key for ``identity``. Returns the leaf and the PEM chain,
        leaf first and root last. Raises ``CaRefusal`` (INVALID_ARGUMENT) for a bad CSR."""
        if identity.trust_domain != self.trust_domain:
            raise CaRefusal(
                Status.PERMISSION_DENIED,
                "foreign_trust_domain",
                f"identity {identity} is outside this CA's trust domain {self.trust_domain!r}",
            )
        public_key = verified_csr_public_key(csr_pem)
        not_before, not_after = self._validity(lifetime, now or utcnow())
        builder = self._leaf_builder(public_key, not_before, not_after).add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(identity))]), critical=True
        )
        leaf = self._sign(builder)
        return leaf, [leaf.public_bytes(serialization.Encoding.PEM).decode(), *self.chain_pem]

    def issue_server_certificate(
        self, names: list[str], lifetime: dt.timedelta, *, now: dt.datetime | None = None
    ) -> tuple[bytes, bytes]:
        """A TLS server certificate for the CA's own endpoint, with DNS and IP SANs. The key is
        made here and returned (PEM key, PEM chain); the caller keeps it in memory only."""
        import ipaddress

        sans: list[x509.GeneralName] = []
        for name in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        if not sans:
            raise ValueError("the CA's server certificate needs at least one DNS name or IP address")
        key = ec.generate_private_key(ec.SECP256R1())
        not_before, not_after = self._validity(lifetime, now or utcnow())
        builder = self._leaf_builder(key.public_key(), not_before, not_after).add_extension(
            x509.SubjectAlternativeName(sans), critical=True
        )
        cert = self._sign(builder)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        chain = cert.public_bytes(serialization.Encoding.PEM) + "".join(self.chain_pem[:-1]).encode()
        return key_pem, chain


def verified_csr_public_key(csr_pem: str | bytes):
    """The public key of a well-formed, correctly self-signed CSR with an accepted key type."""
    data = csr_pem.encode("utf-8", "surrogateescape") if isinstance(csr_pem, str) else csr_pem
    if not data.strip():
        raise invalid("malformed_csr", "csr is empty")
    if len(data) > MAX_CSR_BYTES:
        raise invalid("malformed_csr", f"csr is {len(data)} bytes; at most {MAX_CSR_BYTES} are accepted")
    try:
        csr = x509.load_pem_x509_csr(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise invalid("malformed_csr", f"csr is not a PEM certificate request: {exc}") from None
    try:
        public_key = csr.public_key()
        signature_ok = csr.is_signature_valid
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise invalid("malformed_csr", f"csr cannot be checked: {exc}") from None
    if not signature_ok:
        raise invalid("bad_csr_signature", "csr signature does not verify with its own public key")
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, _EC_CURVES):
            raise invalid("unsupported_key", f"csr uses curve {public_key.curve.name}; use P-256 or P-384")
    elif isinstance(public_key, rsa.RSAPublicKey):
        low, high = _RSA_BITS
        if not low <= public_key.key_size <= high:
            raise invalid("unsupported_key", f"csr has a {public_key.key_size}-bit RSA key; use {low} to {high} bits")
    else:
        raise invalid("unsupported_key", f"csr key type {type(public_key).__name__} is not supported; use ECDSA or RSA")
    return public_key
