"""The signing core: what a leaf looks like, and every way a CSR is refused."""

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings, strategies as st

from ca.authority import (
    CLOCK_SKEW_BACKDATE,
    CaRefusal,
    IssuancePolicy,
    SigningAuthority,
    Status,
    verified_csr_public_key,
)
from ca.client import new_key_and_csr, spiffe_id_of
from mesh.identity import SpiffeId

DAY = dt.timedelta(hours=24)


def csr_for(key, *, sans=("spiffe://cluster.local/ns/evil/sa/admin", "https://example.com"), cn="admin") -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    builder = builder.add_extension(
        x509.SubjectAlternativeName([x509.UniformResourceIdentifier(s) for s in sans] + [x509.DNSName("evil.example")]),
        critical=False,
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def test_leaf_carries_only_the_authorised_identity(authority, identity):
    """The CSR asks for a CN, another SPIFFE ID, a URL and a DNS name: none of it is issued."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    leaf, chain = authority.issue(csr_for(key), identity, DAY, now=now)

    assert leaf.subject == x509.Name([])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical  # required with an empty subject
    assert list(san.value) == [x509.UniformResourceIdentifier(str(identity))]
    assert spiffe_id_of(leaf) == identity
    assert leaf.public_key().public_numbers() == key.public_key().public_numbers()
    assert len(chain) == 2 and chain[-1] == authority.root_pem


def test_leaf_extensions_and_validity(authority, identity):
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    leaf, _ = authority.issue(new_key_and_csr(identity)[1], identity, DAY, now=now)
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_encipherment and not usage.key_cert_sign
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.not_valid_before_utc == now - CLOCK_SKEW_BACKDATE
    assert leaf.not_valid_after_utc == now + DAY
    leaf.verify_directly_issued_by(authority.root)


def test_rsa_key_gets_key_encipherment(authority, identity):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf, _ = authority.issue(csr_for(key), identity, DAY)
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment
    assert isinstance(leaf.public_key(), rsa.RSAPublicKey)


def test_leaf_never_outlives_the_ca(identity):
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    authority = SigningAuthority.self_signed("cluster.local", now=now - dt.timedelta(days=3650) + dt.timedelta(hours=1))
    leaf, _ = authority.issue(new_key_and_csr(identity)[1], identity, DAY, now=now)
    assert leaf.not_valid_after_utc == authority.root.not_valid_after_utc


def test_expired_ca_refuses(identity):
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=3651)
    authority = SigningAuthority.self_signed("cluster.local", now=long_ago)
    with pytest.raises(CaRefusal) as refusal:
        authority.issue(new_key_and_csr(identity)[1], identity, DAY)
    assert refusal.value.status is Status.FAILED_PRECONDITION


def test_foreign_trust_domain_is_refused(authority):
    other = SpiffeId("example.org", "default", "client")
    with pytest.raises(CaRefusal, match="outside this CA's trust domain") as refusal:
        authority.issue(new_key_and_csr(other)[1], other, DAY)
    assert refusal.value.status is Status.PERMISSION_DENIED


def _tampered_csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    der = bytearray(x509.load_pem_x509_csr(csr_for(key).encode()).public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x55  # inside the signature
    import base64
    import textwrap
    body = "\n".join(textwrap.wrap(base64.b64encode(bytes(der)).decode(), 64))
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{body}\n-----END CERTIFICATE REQUEST-----\n"


@pytest.mark.parametrize(
    "make_csr, reason, message",
    [
        (lambda: "", "malformed_csr", "csr is empty"),
        (lambda: "hello", "malformed_csr", "not a PEM certificate request"),
        (lambda: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
         "malformed_csr", "not a PEM certificate request"),
        (lambda: "A" * 70_000, "malformed_csr", "at most 65536"),
        (_tampered_csr, "bad_csr_signature", "signature does not verify"),
        (lambda: csr_for(ec.generate_private_key(ec.SECP521R1())), "unsupported_key", "secp521r1"),
        (lambda: csr_for(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
         "unsupported_key", "1024-bit"),
    ],
)
def test_bad_csr_is_invalid_argument(authority, identity, make_csr, reason, message):
    with pytest.raises(CaRefusal, match=message) as refusal:
        authority.issue(make_csr(), identity, DAY)
    assert refusal.value.status is Status.INVALID_ARGUMENT
    assert refusal.value.reason == reason


@pytest.mark.parametrize(
    "requested, expected",
    [(0, DAY), (3600, dt.timedelta(hours=1)), (10 * 86400, DAY), (1, dt.timedelta(seconds=1))],
)
def test_lifetime_defaults_and_caps(requested, expected):
    assert IssuancePolicy().lifetime(requested) == expected


def test_lifetime_negative_is_refused():
    with pytest.raises(CaRefusal, match="must be >= 0"):
        IssuancePolicy().lifetime(-5)


def test_policy_validates_itself():
    with pytest.raises(ValueError, match="at most the maximum"):
        IssuancePolicy(default_ttl=dt.timedelta(days=2), max_ttl=DAY)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=4096), st.text(max_size=4096)))
def test_arbitrary_csr_input_is_refused_cleanly(data):
    with pytest.raises(CaRefusal) as refusal:
        verified_csr_public_key(data)
    assert refusal.value.status is Status.INVALID_ARGUMENT


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=600))
def test_arbitrary_der_inside_pem_armour_is_refused_cleanly(der):
    import base64
    pem = f"-----BEGIN CERTIFICATE REQUEST-----\n{base64.encodebytes(der).decode()}-----END CERTIFICATE REQUEST-----\n"
    with pytest.raises(CaRefusal):
        verified_csr_public_key(pem)
