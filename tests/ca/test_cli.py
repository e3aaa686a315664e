"""The commands a user types, as real processes: init, token create, serve, request, demo."""

from __future__ import annotations

import stat
import subprocess

import pytest
from cryptography import x509

from lab.launch import run_ambient, start_ca_server


def ambient(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_ambient(*args, check=check)


@pytest.fixture
def serving(tmp_path):
    """`ambient ca serve` on a free port; yields (ca_dir, address, server); stopped with SIGTERM."""
    ca_dir = tmp_path / "ca"
    ambient("ca", "init", "--dir", str(ca_dir))
    server = start_ca_server(ca_dir, stderr=subprocess.PIPE)
    assert server.ready_line.startswith("serving IstioCertificateService on 127.0.0.1:")
    yield ca_dir, server.address, server
    server.stop()


def test_init_token_serve_request(serving, tmp_path):
    ca_dir, address, server = serving
    identity = "spiffe://cluster.local/ns/shop/sa/cart"
    token = ambient("ca", "token", "create", "--dir", str(ca_dir), "--identity", identity).stdout.strip()
    out = tmp_path / "out"
    result = ambient("ca", "request", "--server", address, "--root", str(ca_dir / "root-cert.pem"),
                     "--token", token, "--identity", identity, "--out", str(out))
    assert f"identity:  {identity}" in result.stdout
    assert stat.S_IMODE((out / "key.pem").stat().st_mode) == 0o600
    chain = x509.load_pem_x509_certificates((out / "cert-chain.pem").read_bytes())
    assert len(chain) == 2 and (out / "root-cert.pem").read_bytes() == (ca_dir / "root-cert.pem").read_bytes()
    assert server.stop() == 0  # SIGTERM: a clean drain


def test_request_with_a_bad_token_fails_in_one_line(serving, tmp_path):
    ca_dir, address, _ = serving
    result = ambient("ca", "request", "--server", address, "--root", str(ca_dir / "root-cert.pem"), "--token",
                     "amt_wrong", "--identity", "spiffe://cluster.local/ns/a/sa/b", "--out", str(tmp_path / "o"),
                     check=False)
    assert result.returncode == 1
    assert result.stderr == (
        f"ambient: error: the CA at {address} refused the request: UNAUTHENTICATED: bearer token is not known to "
        "this CA\n"
    )
    assert not (tmp_path / "o" / "key.pem").exists()


def request(address: str, root, tmp_path, *extra: str) -> subprocess.CompletedProcess:
    return ambient("ca", "request", "--server", address, "--root", str(root), "--token", "amt_any", "--identity",
                   "spiffe://cluster.local/ns/a/sa/b", "--out", str(tmp_path / "o"), *extra, check=False)


def test_a_ca_not_trusted_by_root_is_told_apart_from_a_refusal_and_grpc_says_nothing(serving, tmp_path, monkeypatch):
    """Another mesh's root: the TLS handshake fails before any request. gRPC's core logs that failure
    itself ("I... Handshake failed") unless GRPC_VERBOSITY says otherwise: the command's one line only."""
    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)
    _, address, _ = serving
    ambient("ca", "init", "--dir", str(tmp_path / "other"))
    other_root = tmp_path / "other" / "root-cert.pem"
    result = request(address, other_root, tmp_path)
    assert (result.returncode, result.stderr) == (1, f"ambient: error: the CA's certificate at {address} is not "
                                                     f"trusted by --root {other_root} (its chain does not lead to "
                                                     "that root)\n")
    assert not (tmp_path / "o").exists()


def test_a_ca_certificate_for_another_name_says_so(serving, tmp_path):
    ca_dir, address, _ = serving
    result = request(address, ca_dir / "root-cert.pem", tmp_path, "--server-name", "ca.example")
    assert (result.returncode, result.stderr) == (1, f"ambient: error: the CA's certificate at {address} is not for "
                                                     "'ca.example' (--server-name names the one to check)\n")


def test_no_ca_listening_and_a_bad_root_file_are_one_line_each(tmp_path):
    ambient("ca", "init", "--dir", str(tmp_path / "ca"))
    root = tmp_path / "ca" / "root-cert.pem"
    result = request("127.0.0.1:1", root, tmp_path)
    assert (result.returncode, result.stderr) == (1, "ambient: error: cannot reach the CA at 127.0.0.1:1: "
                                                     "connection refused\n")
    key = tmp_path / "ca" / "ca-key.pem"
    result = request("127.0.0.1:1", key, tmp_path)
    assert (result.returncode, result.stderr) == (1, f"ambient: error: --root {key}: not a PEM certificate\n")
    missing = tmp_path / "nope.pem"
    result = request("127.0.0.1:1", missing, tmp_path)
    assert (result.returncode, result.stderr) == (1, f"ambient: error: --root {missing}: No such file or directory\n")


@pytest.mark.parametrize(
    "args, message",
    [
        (["ca", "token", "create", "--identity", "spiffe://other.org/ns/a/sa/b"], "outside the CA's trust domain"),
        (["ca", "token", "create", "--node", "Node_1"], "--node: node 'Node_1' is not a valid Kubernetes name"),
        (["ca", "token", "create", "--node", "n1", "--address", "10.0.0.300"], "--address: '10.0.0.300' does not "
                                                                                "appear to be an IPv4 or IPv6 address"),
        (["ca", "token", "create", "--identity", "spiffe://cluster.local/ns/a/sa/b", "--address", "10.0.0.1"],
         "--address binds a node token"),
        (["ca", "init", "--trust-domain", "cluster.local"], "a CA already exists"),
        (["ca", "serve", "--listen", "nowhere"], "listen address 'nowhere' is not HOST:PORT"),
    ],
)
def test_user_errors_name_what_is_wrong(tmp_path, args, message):
    ambient("ca", "init", "--dir", str(tmp_path))
    result = ambient(*args, "--dir", str(tmp_path), check=False)
    assert result.returncode == 1, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("holder", ["plain socket", "another CA server"])
def test_serve_on_a_busy_port_fails_in_one_line(serving, tmp_path, holder):
    ca_dir, address, _ = serving
    if holder == "plain socket":
        import socket
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    result = ambient("ca", "serve", "--dir", str(ca_dir), "--listen", address, "--metrics-listen", "off", check=False)
    assert result.returncode == 1
    assert f"cannot listen on {address}: address in use" in result.stderr and "Traceback" not in result.stderr


def test_serve_without_a_ca_says_how_to_make_one(tmp_path):
    result = ambient("ca", "serve", "--dir", str(tmp_path / "none"), check=False)
    assert result.returncode == 1 and "run `ambient ca init" in result.stderr


def test_plugin_init(tmp_path):
    from tests.ca.pki import write_plugin_ca
    write_plugin_ca(tmp_path / "plugin")
    result = ambient("ca", "init", "--dir", str(tmp_path / "ca"), "--plugin-certs", str(tmp_path / "plugin"))
    assert "plug-in CA CN=Cluster Intermediate CA" in result.stdout


def test_init_if_absent_keeps_the_ca_that_is_there(tmp_path):
    """What the istiod init container runs at every pod start: the first creates, the next keep it."""
    from tests.ca.pki import write_plugin_ca
    write_plugin_ca(tmp_path / "plugin")
    argv = ("ca", "init", "--if-absent", "--dir", str(tmp_path / "ca"), "--plugin-certs", str(tmp_path / "plugin"))
    assert "plug-in CA" in ambient(*argv).stdout
    key = (tmp_path / "ca" / "ca-key.pem").read_bytes()
    again = ambient(*argv)
    assert "already holds a CA for trust domain cluster.local: left as it is" in again.stdout
    assert (tmp_path / "ca" / "ca-key.pem").read_bytes() == key
    refused = ambient("ca", "init", "--dir", str(tmp_path / "ca"), check=False)  # without it: refused, as before
    assert refused.returncode != 0 and "already exists" in refused.stderr


def test_ca_demo_runs(tmp_path):
    """`ambient demo --ca` (what `make demo` shows without root): it must keep working."""
    result = ambient("demo", "--ca")
    assert "SAN:     spiffe://cluster.local/ns/default/sa/demo (the only SAN)" in result.stdout
    assert "leaf.pem: OK" in result.stdout
    assert "PERMISSION_DENIED" in result.stdout
    assert 'ambient_ca_certificates_issued_total{caller="workload"} 1.0' in result.stdout


def test_a_node_token_can_be_bound_to_addresses(tmp_path):
    from ca.tokens import TOKEN_FILE, TokenStore

    ambient("ca", "init", "--dir", str(tmp_path))
    token = ambient("ca", "token", "create", "--dir", str(tmp_path), "--node", "node-1", "--address", "10.0.0.1",
                    "--address", "fd00::1").stdout.strip()
    caller = TokenStore(tmp_path / TOKEN_FILE).authenticate(token)
    from ipaddress import ip_address

    assert caller.allows_peer(ip_address("10.0.0.1")) and caller.allows_peer(ip_address("fd00::1"))
    assert not caller.allows_peer(ip_address("10.0.0.2"))
