"""The CA over real gRPC and TLS on loopback: round trips, every refusal, and hostile input."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from google.protobuf import struct_pb2
from hypothesis import HealthCheck, given, settings, strategies as st
from prometheus_client import CollectorRegistry

from ca import store
from ca.authority import IssuancePolicy, SigningAuthority
from ca.cli import build_service
from ca.client import CaClient, CaRequestFailed
from ca.placement import PLACEMENT_FILE
from ca.proto import ca_pb2
from ca.server import CaMetrics, CaServer, ServeConfig
from ca.tokens import TOKEN_FILE, NodeCaller, TokenStore, WorkloadCaller
from mesh.identity import SpiffeId
from mesh.watched_file import write_json_atomic
from tests.ca.pki import write_plugin_ca

CLIENT = SpiffeId("cluster.local", "default", "client")
SERVER = SpiffeId("cluster.local", "default", "server")
METHOD = "/istio.v1.auth.IstioCertificateService/CreateCertificate"


@dataclass
class RunningCa:
    dir: Path
    address: str
    root_pem: bytes
    metrics: CaMetrics
    tokens: TokenStore

    def client(self, token: str) -> CaClient:
        return CaClient(self.address, self.root_pem, token)

    def metric(self, name: str, **labels) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def raw_call(self, payload: bytes, token: str) -> grpc.RpcError | bytes:
        """Send ``payload`` as the request body, bypassing the client's own encoding."""
        with grpc.secure_channel(self.address, grpc.ssl_channel_credentials(self.root_pem)) as channel:
            call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
            try:
                return call(payload, timeout=10, metadata=(("authorization", f"Bearer {token}"),))
            except grpc.RpcError as exc:
                return exc


def start_ca(ca_dir: Path):
    service = build_service(ca_dir, IssuancePolicy())
    metrics = CaMetrics(CollectorRegistry())
    server = CaServer(service, ServeConfig(listen="127.0.0.1:0"), metrics)
    port = server.start()
    ca = RunningCa(ca_dir, f"127.0.0.1:{port}", (ca_dir / store.ROOT_CERT).read_bytes(), metrics,
                   TokenStore(ca_dir / TOKEN_FILE))
    return server, ca


@pytest.fixture(scope="module")
def running_ca(tmp_path_factory):
    ca_dir = tmp_path_factory.mktemp("ca")
    store.init_self_signed(ca_dir, "cluster.local")
    server, ca = start_ca(ca_dir)
    yield ca
    server.stop(grace=None)


@pytest.fixture(scope="module")
def client_token(running_ca):
    return running_ca.tokens.create(WorkloadCaller(CLIENT))


def test_round_trip_chain_verifies_with_openssl(running_ca, client_token, tmp_path):
    with running_ca.client(client_token) as client:
        certified = client.create_certificate(CLIENT)
    assert certified.identity == CLIENT
    leaf = certified.leaf
    assert leaf.subject == x509.Name([])
    assert list(leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value) == [
        x509.UniformResourceIdentifier("spiffe://cluster.local/ns/default/sa/client")
    ]
    assert certified.root_pem.encode() == running_ca.root_pem
    (tmp_path / "leaf.pem").write_text(certified.chain_pem[0])
    verify = subprocess.run(["openssl", "verify", "-CAfile", running_ca.dir / "root-cert.pem", tmp_path / "leaf.pem"],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    assert certified.lifetime.total_seconds() == pytest.approx(24 * 3600 + 300, abs=2)


def test_requested_validity_is_capped(running_ca, client_token):
    with running_ca.client(client_token) as client:
        short = client.create_certificate(CLIENT, validity_seconds=600)
        long = client.create_certificate(CLIENT, validity_seconds=30 * 86400)
    assert short.lifetime.total_seconds() == pytest.approx(600 + 300, abs=2)
    assert long.lifetime.total_seconds() == pytest.approx(24 * 3600 + 300, abs=2)


def _refusal(ca: RunningCa, token: str, identity: SpiffeId) -> CaRequestFailed:
    with ca.client(token) as client, pytest.raises(CaRequestFailed) as failure:
        client.create_certificate(identity)
    return failure.value


def _serves_next(ca: RunningCa, token: str) -> None:
    with ca.client(token) as client:
        assert client.create_certificate(CLIENT).identity == CLIENT


def _raw_request(csr: str, identity: SpiffeId) -> bytes:
    metadata = struct_pb2.Struct()
    metadata.update({"ImpersonatedIdentity": str(identity)})
    return ca_pb2.IstioCertificateRequest(csr=csr, metadata=metadata).SerializeToString()


def test_each_refusal_has_its_status_and_the_server_goes_on(running_ca, client_token, caplog):
    before = {r: running_ca.metric("ambient_ca_requests_rejected_total", reason=r)
              for r in ("unknown_token", "forbidden_identity", "malformed_csr")}

    unknown = _refusal(running_ca, "amt_not-a-token", CLIENT)
    assert unknown.code == grpc.StatusCode.UNAUTHENTICATED
    assert "not known to this CA" in unknown.details
    _serves_next(running_ca, client_token)

    forbidden = _refusal(running_ca, client_token, SERVER)
    assert forbidden.code == grpc.StatusCode.PERMISSION_DENIED
    assert str(SERVER) in forbidden.details
    _serves_next(running_ca, client_token)

    malformed = running_ca.raw_call(_raw_request("not a csr", CLIENT), client_token)
    assert isinstance(malformed, grpc.RpcError) and malformed.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a PEM certificate request" in malformed.details()
    _serves_next(running_ca, client_token)

    for reason, value in before.items():
        assert running_ca.metric("ambient_ca_requests_rejected_total", reason=reason) == value + 1
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert any("UNAUTHENTICATED" in m for m in refusals)
    assert any("PERMISSION_DENIED" in m and str(SERVER) in m for m in refusals)
    assert any("INVALID_ARGUMENT" in m and f"caller workload {CLIENT}" in m for m in refusals)
    assert not any(client_token in r.getMessage() for r in caplog.records)  # never log secrets


def test_node_impersonation_follows_scheduling(running_ca):
    node_token = running_ca.tokens.create(NodeCaller("node-1"))
    issued_before = running_ca.metric("ambient_ca_certificates_issued_total", caller="node")
    assert _refusal(running_ca, node_token, SERVER).code == grpc.StatusCode.PERMISSION_DENIED

    write_json_atomic(running_ca.dir / PLACEMENT_FILE, {"nodes": {"node-1": [str(SERVER)], "node-2": [str(CLIENT)]}})
    with running_ca.client(node_token) as client:
        assert client.create_certificate(SERVER).identity == SERVER
    failure = _refusal(running_ca, node_token, CLIENT)  # scheduled, but on another node
    assert failure.code == grpc.StatusCode.PERMISSION_DENIED and "node node-1 runs no pod" in failure.details

    write_json_atomic(running_ca.dir / PLACEMENT_FILE, {"nodes": {}})  # the pod went away
    assert _refusal(running_ca, node_token, SERVER).code == grpc.StatusCode.PERMISSION_DENIED
    assert running_ca.metric("ambient_ca_certificates_issued_total", caller="node") == issued_before + 1


def test_a_node_token_is_refused_from_another_address_than_its_node_s(running_ca):
    # The client connects from 127.0.0.1: a token bound to 127.0.0.2 is another node's.
    write_json_atomic(running_ca.dir / PLACEMENT_FILE, {"nodes": {"node-1": [str(SERVER)]}})
    elsewhere = running_ca.tokens.create(NodeCaller("node-1", frozenset({IPv4Address("127.0.0.2")})))
    refused_before = running_ca.metric("ambient_ca_requests_rejected_total", reason="token_address")
    failure = _refusal(running_ca, elsewhere, SERVER)
    assert failure.code == grpc.StatusCode.UNAUTHENTICATED
    assert "the token of node node-1 is not valid from 127.0.0.1" in failure.details
    assert running_ca.metric("ambient_ca_requests_rejected_total", reason="token_address") == refused_before + 1
    here = running_ca.tokens.create(NodeCaller("node-1", frozenset({IPv4Address("127.0.0.1")})))
    with running_ca.client(here) as client:
        assert client.create_certificate(SERVER).identity == SERVER


def test_garbage_request_body_is_invalid_argument(running_ca, client_token):
    reply = running_ca.raw_call(b"\xff\xff\xff\xff garbage", client_token)
    assert isinstance(reply, grpc.RpcError) and reply.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not an IstioCertificateRequest" in reply.details()
    _serves_next(running_ca, client_token)


def test_oversized_request_is_refused_by_the_ca_itself(running_ca, client_token):
    # The port accepts large messages (discovery needs them); CreateCertificate keeps its own limit.
    reply = running_ca.raw_call(_csr_field(b"x" * (300 * 1024)), client_token)
    assert isinstance(reply, grpc.RpcError) and reply.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "over the limit of 262144" in reply.details()
    _serves_next(running_ca, client_token)


def _csr_field(data: bytes) -> bytes:
    """Field 1 (csr), wire type 2, with arbitrary bytes as its content (not necessarily UTF-8)."""
    length, varint = len(data), bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        varint.append(byte | (0x80 if length else 0))
        if not length:
            return b"\x0a" + bytes(varint) + data


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_as_csr_never_crash_the_server(running_ca, client_token, data):
    reply = running_ca.raw_call(_csr_field(data), client_token)
    assert isinstance(reply, grpc.RpcError)
    assert reply.code() == grpc.StatusCode.INVALID_ARGUMENT, reply.details()


def test_server_still_serves_after_the_fuzzing(running_ca, client_token):
    assert running_ca.metric("ambient_ca_requests_rejected_total", reason="internal") == 0
    _serves_next(running_ca, client_token)


def test_client_refuses_a_ca_it_does_not_trust(running_ca, client_token):
    stranger_root = SigningAuthority.self_signed("cluster.local").root_pem.encode()
    with CaClient(running_ca.address, stranger_root, client_token, timeout=5) as client:
        with pytest.raises(CaRequestFailed) as failure:
            client.create_certificate(CLIENT)
    assert failure.value.code == grpc.StatusCode.UNAVAILABLE


def test_plugin_ca_chain_includes_the_intermediate(tmp_path):
    root, inter = write_plugin_ca(tmp_path / "plugin")
    store.import_plugin(tmp_path / "ca", tmp_path / "plugin", "cluster.local")
    server, ca = start_ca(tmp_path / "ca")
    try:
        token = ca.tokens.create(WorkloadCaller(CLIENT))
        with ca.client(token) as client:
            certified = client.create_certificate(CLIENT)
    finally:
        server.stop(grace=None)
    chain = [x509.load_pem_x509_certificate(p.encode()) for p in certified.chain_pem]
    assert chain[1:] == [inter, root]
    assert chain[0].issuer == inter.subject


def test_root_expiry_metric(running_ca):
    root = x509.load_pem_x509_certificate(running_ca.root_pem)
    assert running_ca.metric("ambient_ca_root_cert_expiry_timestamp_seconds") == root.not_valid_after_utc.timestamp()
