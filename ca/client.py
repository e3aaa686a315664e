"""Getting a workload certificate from the mesh CA.

The key is made here and never leaves the process: we send a CSR, and check what comes back before
anyone uses it: the chain must verify up to the root we trust (not one the CA sends), the leaf must
carry exactly the SPIFFE ID we asked for, and its public key must be ours.

``CaClient`` is the gRPC caller (grpcio is blocking, so ``fetch`` runs it in a worker thread for
trio code); ``ca.secrets.SecretManager`` sits on top of it and keeps certificates fresh.

The bearer token is a string or a ``TokenSource`` called on every request: on Kubernetes the token
is a projected service-account token that the kubelet replaces before it expires, so a client that
read the file once would present an expired token after an hour or so (``token_file`` reads it anew
each time).
"""

from __future__ import annotations

import grpc
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from google.protobuf import struct_pb2

from ca.proto import ca_pb2
from mesh.certs import CertificateError, CertifiedKey, spiffe_id_of
from mesh.identity import SpiffeId
from mesh.token_file import MAX_TOKEN_FILE_BYTES, TokenSource, token_file  # noqa: F401 (re-exported)

IMPERSONATED_IDENTITY = "ImpersonatedIdentity"
DEFAULT_TIMEOUT = 10.0


class CaRequestFailed(CertificateError):
    """The CA answered with an error status (``code`` is the grpc.StatusCode)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"CA refused the request: {code.name}: {details}")
        self.code = code
        self.details = details


def new_key_and_csr(identity: SpiffeId) -> tuple[ec.EllipticCurvePrivateKey, str]:
    """An ECDSA P-256 key and a CSR for it that names ``identity`` as its URI SAN."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(identity))]), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.PEM).decode()


def verify_issued(
    chain_pem: list[str], trusted_root: x509.Certificate, identity: SpiffeId, key: ec.EllipticCurvePrivateKey
) -> CertifiedKey:
    """Check a chain the CA returned for ``key`` and ``identity`` against the root we trust."""
    if len(chain_pem) < 2:
        raise CertificateError(f"CA returned {len(chain_pem)} certificate(s); expected leaf ... root")
    try:
        chain = [x509.load_pem_x509_certificate(pem.encode()) for pem in chain_pem]
    except ValueError as exc:
        raise CertificateError(f"CA returned a certificate that does not parse: {exc}") from None
    leaf = chain[0]
    if chain[-1] != trusted_root:
        raise CertificateError("the chain's root is not the mesh root this client trusts")
    try:
        PolicyBuilder().store(Store([trusted_root])).build_client_verifier().verify(leaf, chain[1:-1])
    except VerificationError as exc:
        raise CertificateError(f"issued chain does not verify to the mesh root: {exc}") from None
    got = spiffe_id_of(leaf)
    if got != identity:
        raise CertificateError(f"CA issued a certificate for {got}, not for the requested {identity}")
    if leaf.public_key() != key.public_key():
        raise CertificateError("issued certificate does not carry the public key of our CSR")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return CertifiedKey(identity, key_pem, tuple(chain_pem), leaf.not_valid_before_utc, leaf.not_valid_after_utc)


class CaClient:
    """A gRPC client of ``IstioCertificateService`` authenticated by a bearer token (a string, or a
    ``TokenSource`` such as ``token_file(path)`` asked on every request).

    ``server_name`` overrides the name checked in the CA's server certificate (needed when
    ``target`` is an address the certificate does not list).
    """

    def __init__(
        self,
        target: str,
        root_pem: bytes,
        token: str | TokenSource,
        *,
        server_name: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._root = x509.load_pem_x509_certificate(root_pem)
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        self._channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=root_pem), options)
        self._create = self._channel.unary_unary(
            "/istio.v1.auth.IstioCertificateService/CreateCertificate",
            request_serializer=ca_pb2.IstioCertificateRequest.SerializeToString,
            response_deserializer=ca_pb2.IstioCertificateResponse.FromString,
        )
        self._token: TokenSource = (lambda: token) if isinstance(token, str) else token
        self._timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CaClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def create_certificate(self, identity: SpiffeId, validity_seconds: int = 0) -> CertifiedKey:
        """Blocking: make a key, have the CA sign it for ``identity``, verify the result."""
        key, csr = new_key_and_csr(identity)
        metadata = struct_pb2.Struct()
        metadata.update({IMPERSONATED_IDENTITY: str(identity)})
        request = ca_pb2.IstioCertificateRequest(csr=csr, validity_duration=validity_seconds, metadata=metadata)
        headers = (("authorization", f"Bearer {self._token()}"),)  # read now: the token may have rotated
        try:
            response = self._create(request, timeout=self._timeout, metadata=headers)
        except grpc.RpcError as exc:
            raise CaRequestFailed(exc.code(), exc.details() or "") from None
        return verify_issued(list(response.cert_chain), self._root, identity, key)

    async def fetch(self, identity: SpiffeId) -> CertifiedKey:
        """``create_certificate`` for trio code; the gRPC deadline bounds the worker thread."""
        return await trio.to_thread.run_sync(self.create_certificate, identity, abandon_on_cancel=True)

