"""HBONE TLS (hbone/tls.py): real TLS 1.3 handshakes over trio memory streams, with certificates
from an in-memory mesh CA (ca.authority.SigningAuthority), no mocks.

A "rogue" peer is a plain ``ssl.SSLContext`` built here from whatever PEM a test forges, so that it
can present what our own contexts would refuse to load or negotiate (TLS 1.2, no ALPN, two URI SANs).
"""

from __future__ import annotations

import datetime as dt
import os
import ssl

import outcome
import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca.authority import SigningAuthority, key_usage
from hbone.tls import (
    ContextCache,
    HandshakeFailed,
    HboneTlsError,
    PeerIdentityError,
    PeerProtocolError,
    WorkloadCredentials,
    _private_pem_path,
    client_context,
    client_handshake,
    server_context,
    server_handshake,
    verify_client_identity,
)
from mesh.identity import SpiffeId
from tests.ztunnel.pki import HOUR, TD, certified, creds, key_pem

CLIENT = SpiffeId(TD, "a", "client")
SERVER = SpiffeId(TD, "b", "server")
OTHER = SpiffeId(TD, "b", "other")


# -- PKI helpers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def authority() -> SigningAuthority:
    return SigningAuthority.self_signed(TD)


@pytest.fixture(scope="module")
def other_root() -> SigningAuthority:
    """Another mesh CA with the same trust domain: its certificates must not chain to ours."""
    return SigningAuthority.self_signed(TD)


def expired(authority: SigningAuthority, identity: SpiffeId, *, trusting: SigningAuthority) -> WorkloadCredentials:
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    return creds(authority, identity, now=long_ago, lifetime=HOUR, trusting=trusting)


def forged_leaf(sans: list[x509.GeneralName] | None, *, signer: SigningAuthority | None) -> tuple[str, bytes]:
    """A leaf the CA would never issue: any SANs (``None``: no SAN extension), signed by the mesh
    root (``signer``) or by its own key (``signer=None``: self-signed). Returns (PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "forged workload")])
    issuer_name, issuer_key = (signer.root.subject, signer.key) if signer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - HOUR)
        .not_valid_after(now + HOUR)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(digital_signature=True), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem(key)


def uri(identity: SpiffeId | str) -> x509.UniformResourceIdentifier:
    return x509.UniformResourceIdentifier(str(identity))


@pytest.fixture
def rogue_context(tmp_path):
    """A plain ssl context presenting arbitrary PEM (written to tmp_path: test material only)."""
    count = 0

    def make(server_side: bool, chain_pem: str, key: bytes, roots_pem: str, *,
             version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3, alpn: list[str] | None = None,
             verify_mode: ssl.VerifyMode = ssl.CERT_REQUIRED) -> ssl.SSLContext:
        nonlocal count
        count += 1
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = verify_mode
        context.minimum_version = context.maximum_version = version
        if alpn is not None:
            context.set_alpn_protocols(alpn)
        context.load_verify_locations(cadata=roots_pem)
        path = tmp_path / f"rogue{count}.pem"
        path.write_bytes(key + chain_pem.encode())
        context.load_cert_chain(path)
        return context

    return make


def rogue_from(make, server_side: bool, credentials: WorkloadCredentials, **kwargs) -> ssl.SSLContext:
    return make(server_side, "".join(credentials.chain_pem), credentials.key_pem, "".join(credentials.roots_pem),
                **kwargs)


# -- running both ends -----------------------------------------------------------------------------


async def run_pair(client_side, server_side) -> tuple[outcome.Outcome, outcome.Outcome]:
    """Run ``client_side(stream)`` and ``server_side(stream)`` over a connected socket pair; return
    what each returned or raised."""
    a, b = trio.socket.socketpair()
    client_stream, server_stream = trio.SocketStream(a), trio.SocketStream(b)
    results: dict[str, outcome.Outcome] = {}

    async def run(name, fn, stream):
        results[name] = await outcome.acapture(fn, stream)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "client", client_side, client_stream)
            nursery.start_soon(run, "server", server_side, server_stream)
    return results["client"], results["server"]


def ours_client(credentials: WorkloadCredentials, expected: set[SpiffeId] | frozenset[SpiffeId]):
    async def side(stream):
        return await client_handshake(stream, ContextCache().client(credentials), frozenset(expected))
    return side


def ours_server(credentials: WorkloadCredentials, trust_domain: str = TD):
    async def side(stream):
        return await server_handshake(stream, ContextCache().server(credentials), trust_domain)
    return side


def rogue(context: ssl.SSLContext, server_side: bool):
    async def side(stream):
        tls = trio.SSLStream(stream, context, server_side=server_side)
        try:
            await tls.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(tls)  # as a real peer would: its end of the socket closes
            raise
        return tls
    return side


def error_of(result: outcome.Outcome) -> BaseException:
    assert isinstance(result, outcome.Error), f"expected a failure, got {result!r}"
    return result.error


async def assert_rejected_later(result: outcome.Outcome) -> None:
    """TLS 1.3: a client the server refuses may finish its handshake; its first read must break."""
    if isinstance(result, outcome.Error):
        return
    value = result.value
    tls = value[0] if isinstance(value, tuple) else value
    with pytest.raises(trio.BrokenResourceError):
        with trio.fail_after(5):
            await tls.receive_some()


# -- credentials ---------------------------------------------------------------------------------


def test_credentials_from_certified_key_present_leaf_and_trust_the_root(authority):
    cert = certified(authority, CLIENT)
    c = WorkloadCredentials.from_certified_key(cert)
    assert c.identity == CLIENT
    assert c.chain_pem == cert.chain_pem[:-1]  # the root is trusted, not presented
    assert c.roots_pem == (authority.root_pem,)
    assert c.key_pem == cert.key_pem
    assert "PRIVATE KEY" not in repr(c) and "key_pem" not in repr(c)


def test_credentials_refuse_a_certificate_for_another_identity(authority):
    cert = certified(authority, CLIENT)
    with pytest.raises(ValueError, match=f"credentials for {SERVER} carry a certificate for {CLIENT}"):
        WorkloadCredentials(SERVER, cert.chain_pem[:-1], cert.key_pem, (cert.root_pem,))


def test_credentials_refuse_a_key_that_does_not_match(authority):
    a, b = certified(authority, CLIENT), certified(authority, CLIENT)
    with pytest.raises(ValueError, match="key does not match") as info:
        WorkloadCredentials(CLIENT, a.chain_pem[:-1], b.key_pem, (a.root_pem,))
    assert "PRIVATE KEY" not in str(info.value)


@pytest.mark.parametrize("chain, roots", [((), ("root",)), (("leaf",), ())])
def test_credentials_need_a_chain_and_a_root(authority, chain, roots):
    cert = certified(authority, CLIENT)
    chain = cert.chain_pem[:-1] if chain else ()
    roots = (cert.root_pem,) if roots else ()
    with pytest.raises(ValueError, match="empty|no mesh root"):
        WorkloadCredentials(CLIENT, chain, cert.key_pem, roots)


# -- contexts --------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [server_context, client_context])
def test_context_is_tls13_h2_mutual_and_trusts_only_the_mesh_root(authority, make):
    context = make(creds(authority, CLIENT))
    assert context.minimum_version == context.maximum_version == ssl.TLSVersion.TLSv1_3
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is False
    cas = context.get_ca_certs()
    assert [int(ca["serialNumber"], 16) for ca in cas] == [authority.root.serial_number]


def test_contexts_are_cached_per_identity_and_certificate_generation(authority):
    cache = ContextCache()
    first = creds(authority, CLIENT)
    server, client = cache.server(first), cache.client(first)
    assert server is not client
    same = WorkloadCredentials(first.identity, first.chain_pem, first.key_pem, first.roots_pem)
    assert cache.server(same) is server and cache.client(same) is client
    renewed = creds(authority, CLIENT)
    assert cache.server(renewed) is not server and cache.client(renewed) is not client
    assert cache.server(renewed) is cache.server(renewed)
    cache.server(creds(authority, SERVER))
    assert len(cache) == 3  # one per (side, identity): the old generation is dropped
    cache.forget(CLIENT)
    assert len(cache) == 1


def test_building_contexts_leaves_no_key_file_and_no_open_descriptor(authority):
    c = creds(authority, CLIENT)
    fds = set(os.listdir("/proc/self/fd"))
    for _ in range(5):
        cache = ContextCache()
        cache.server(c), cache.client(c)
    assert set(os.listdir("/proc/self/fd")) <= fds


def test_private_pem_path_is_private_and_gone_after_use():
    with _private_pem_path(b"secret material") as path:
        with open(path, "rb") as f:
            assert f.read() == b"secret material"
        if path.startswith("/proc/self/fd/"):
            target = os.readlink(path)
            assert target.startswith("/memfd:hbone-credentials")
        else:
            assert os.stat(path).st_mode & 0o077 == 0
    if path.startswith("/proc/self/fd/"):
        assert not os.path.exists(path) or os.readlink(path) != target
    else:
        assert not os.path.exists(path)


# -- handshakes that succeed -----------------------------------------------------------------------


async def test_good_handshake_is_tls13_h2_with_both_identities_verified(authority):
    client_creds, server_creds = creds(authority, CLIENT), creds(authority, SERVER)

    async def client(stream):
        tls, server_id = await client_handshake(stream, client_context(client_creds), frozenset({SERVER}))
        await tls.send_all(b"ping")
        assert await tls.receive_some() == b"pong"
        return tls, server_id

    async def server(stream):
        tls, client_id = await server_handshake(stream, server_context(server_creds), TD)
        assert await tls.receive_some() == b"ping"
        await tls.send_all(b"pong")
        return tls, client_id

    c, s = await run_pair(client, server)
    client_tls, server_id = c.unwrap()
    server_tls, client_id = s.unwrap()
    assert server_id == SERVER and client_id == CLIENT
    for tls in (client_tls, server_tls):
        assert tls.version() == "TLSv1.3"
        assert tls.selected_alpn_protocol() == "h2"


async def test_client_accepts_any_expected_identity(authority):
    # The plan's expected set: the pod's identity plus the service's subject_alt_names.
    c, s = await run_pair(ours_client(creds(authority, CLIENT), {OTHER, SERVER}), ours_server(creds(authority, SERVER)))
    assert c.unwrap()[1] == SERVER and s.unwrap()[1] == CLIENT


# -- the client refuses ----------------------------------------------------------------------------


async def test_client_rejects_a_server_with_another_identity(authority):
    c, s = await run_pair(ours_client(creds(authority, CLIENT), {SERVER}), ours_server(creds(authority, OTHER)))
    error = error_of(c)
    assert isinstance(error, PeerIdentityError)
    assert str(error) == f"server presented {OTHER}, expected one of {SERVER}"


async def test_client_rejects_an_expired_server(authority):
    server = expired(authority, SERVER, trusting=authority)
    c, s = await run_pair(ours_client(creds(authority, CLIENT), {SERVER}), ours_server(server))
    error = error_of(c)
    assert isinstance(error, HandshakeFailed)
    assert "server certificate did not verify" in str(error) and "expired" in str(error)
    assert isinstance(error_of(s), HandshakeFailed)


async def test_client_rejects_a_server_of_another_root(authority, other_root):
    server = creds(other_root, SERVER, trusting=authority)
    c, s = await run_pair(ours_client(creds(authority, CLIENT), {SERVER}), ours_server(server))
    error = error_of(c)
    assert isinstance(error, HandshakeFailed)
    assert "server certificate did not verify" in str(error)
    assert str(error_of(s)) == (
        "TLS handshake with the client failed: the client closed the connection during the handshake")


async def test_client_rejects_a_tls12_only_server(authority, rogue_context):
    server = rogue_from(rogue_context, True, creds(authority, SERVER), version=ssl.TLSVersion.TLSv1_2, alpn=["h2"])
    c, s = await run_pair(ours_client(creds(authority, CLIENT), {SERVER}), rogue(server, True))
    assert isinstance(error_of(c), HandshakeFailed)
    assert isinstance(error_of(s), trio.BrokenResourceError)


@pytest.mark.parametrize("alpn", [None, ["http/1.1"]])
async def test_client_rejects_a_server_that_does_not_agree_on_h2(authority, rogue_context, alpn):
    server = rogue_from(rogue_context, True, creds(authority, SERVER), alpn=alpn)
    c, s = await run_pair(ours_client(creds(authority, CLIENT), {SERVER}), rogue(server, True))
    error = error_of(c)
    assert isinstance(error, PeerProtocolError)
    assert str(error) == "server did not agree on ALPN 'h2' (negotiated: None)"


@pytest.mark.parametrize(
    "sans, reason",
    [
        (None, "has no subjectAltName"),
        ([x509.DNSName("server.b.svc")], "exactly one URI SAN, it has 0"),
        ([uri(SERVER), uri(OTHER)], "exactly one URI SAN, it has 2"),
        ([uri("https://server.b.svc/")], "is not a SPIFFE ID"),
    ],
)
async def test_client_rejects_a_server_leaf_without_exactly_one_spiffe_uri(authority, rogue_context, sans, reason):
    leaf, key = forged_leaf(sans, signer=authority)
    server = rogue_context(True, leaf, key, authority.root_pem, alpn=["h2"])
    c, s = await run_pair(ours_client(creds(authority, CLIENT), {SERVER}), rogue(server, True))
    error = error_of(c)
    assert isinstance(error, PeerIdentityError)
    assert "server certificate is not a mesh workload certificate" in str(error) and reason in str(error)


async def test_client_needs_an_expected_identity(authority):
    c, s = await run_pair(ours_client(creds(authority, CLIENT), frozenset()), ours_server(creds(authority, SERVER)))
    assert isinstance(error_of(c), ValueError)


# -- the server refuses ----------------------------------------------------------------------------


async def test_server_rejects_a_client_of_another_trust_domain_under_the_same_root(authority):
    foreign = SigningAuthority("example.org", authority.key, authority.chain)  # same root key and certificate
    intruder = SpiffeId("example.org", "a", "client")
    client = creds(foreign, intruder, trusting=authority)
    c, s = await run_pair(ours_client(client, {SERVER}), ours_server(creds(authority, SERVER)))
    error = error_of(s)
    assert isinstance(error, PeerIdentityError)
    assert str(error) == (
        f"client presented {intruder}, from trust domain 'example.org', not this mesh's 'cluster.local'"
    )
    assert c.unwrap()[1] == SERVER  # the chain itself was fine: only the trust domain is wrong
    await assert_rejected_later(c)


async def test_server_rejects_a_self_signed_client(authority, rogue_context):
    leaf, key = forged_leaf([uri(CLIENT)], signer=None)
    client = rogue_context(False, leaf, key, authority.root_pem, alpn=["h2"])
    c, s = await run_pair(rogue(client, False), ours_server(creds(authority, SERVER)))
    error = error_of(s)
    assert isinstance(error, HandshakeFailed)
    assert "client certificate did not verify against the mesh root: self-signed certificate" in str(error)
    await assert_rejected_later(c)


async def test_server_rejects_an_expired_client(authority):
    client = expired(authority, CLIENT, trusting=authority)
    c, s = await run_pair(ours_client(client, {SERVER}), ours_server(creds(authority, SERVER)))
    error = error_of(s)
    assert isinstance(error, HandshakeFailed)
    assert "client certificate did not verify against the mesh root: certificate has expired" in str(error)
    await assert_rejected_later(c)


async def test_server_rejects_a_client_of_another_root(authority, other_root):
    client = creds(other_root, CLIENT, trusting=authority)
    c, s = await run_pair(ours_client(client, {SERVER}), ours_server(creds(authority, SERVER)))
    error = error_of(s)
    assert isinstance(error, HandshakeFailed)
    assert "client certificate did not verify against the mesh root" in str(error)
    await assert_rejected_later(c)


async def test_server_rejects_a_client_without_a_certificate(authority, rogue_context):
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.check_hostname = False
    bare.minimum_version = ssl.TLSVersion.TLSv1_3
    bare.set_alpn_protocols(["h2"])
    bare.load_verify_locations(cadata=authority.root_pem)
    c, s = await run_pair(rogue(bare, False), ours_server(creds(authority, SERVER)))
    assert isinstance(error_of(s), HandshakeFailed)
    await assert_rejected_later(c)


async def test_server_rejects_a_tls12_only_client(authority, rogue_context):
    client = rogue_from(rogue_context, False, creds(authority, CLIENT), version=ssl.TLSVersion.TLSv1_2, alpn=["h2"])
    c, s = await run_pair(rogue(client, False), ours_server(creds(authority, SERVER)))
    assert isinstance(error_of(s), HandshakeFailed)
    assert isinstance(error_of(c), trio.BrokenResourceError)


@pytest.mark.parametrize("alpn", [None, ["http/1.1"]])
async def test_server_rejects_a_client_that_does_not_offer_h2(authority, rogue_context, alpn):
    client = rogue_from(rogue_context, False, creds(authority, CLIENT), alpn=alpn)
    c, s = await run_pair(rogue(client, False), ours_server(creds(authority, SERVER)))
    error = error_of(s)
    assert isinstance(error, PeerProtocolError)
    assert str(error) == "client did not agree on ALPN 'h2' (negotiated: None)"
    await assert_rejected_later(c)


@pytest.mark.parametrize(
    "sans, reason",
    [
        ([uri(CLIENT), uri(OTHER)], "exactly one URI SAN, it has 2"),
        ([x509.DNSName("client.a.svc")], "exactly one URI SAN, it has 0"),
        (None, "has no subjectAltName"),
    ],
)
async def test_server_rejects_a_client_leaf_without_exactly_one_spiffe_uri(authority, rogue_context, sans, reason):
    leaf, key = forged_leaf(sans, signer=authority)
    client = rogue_context(False, leaf, key, authority.root_pem, alpn=["h2"])
    c, s = await run_pair(rogue(client, False), ours_server(creds(authority, SERVER)))
    error = error_of(s)
    assert isinstance(error, PeerIdentityError) and isinstance(error, HboneTlsError)
    assert "client certificate is not a mesh workload certificate" in str(error) and reason in str(error)
    await assert_rejected_later(c)


async def test_identity_check_refuses_a_context_that_did_not_verify_the_peer(authority, rogue_context):
    # A context with CERT_NONE never verified the chain: checking the SAN alone would trust a forgery.
    server = rogue_from(rogue_context, True, creds(authority, SERVER), alpn=["h2"], verify_mode=ssl.CERT_NONE)

    async def server_side(stream):
        tls = await rogue(server, True)(stream)
        return verify_client_identity(tls, TD)

    c, s = await run_pair(ours_client(creds(authority, CLIENT), {SERVER}), server_side)
    error = error_of(s)
    assert isinstance(error, RuntimeError) and "CERT_REQUIRED" in str(error)
