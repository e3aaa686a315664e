"""``ambient demo``: the main job, run by ``make demo``.

For now it shows the certificate authority end to end, through the same commands a user types:
create a CA, serve it, make a workload token, obtain a certificate over gRPC/TLS, show and verify
the chain, show a refused request, read the CA's metrics, and stop the server it started (by its
PID). A later issue turns this into the local lab.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.client import spiffe_id_of
from mesh.launch import CaServerProcess, run_ambient, start_ca_server

IDENTITY = "spiffe://cluster.local/ns/default/sa/demo"
OTHER_IDENTITY = "spiffe://cluster.local/ns/payments/sa/ledger"


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser("demo", help="run the demonstration (what `make demo` runs)")
    demo.add_argument("--keep", action="store_true", help="keep the demo's state directory")
    demo.set_defaults(func=run)


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _describe_chain(path: Path) -> None:
    for i, cert in enumerate(x509.load_pem_x509_certificates(path.read_bytes())):
        role = "leaf" if i == 0 else "CA"
        print(f"  [{i}] {role:4}  subject: {cert.subject.rfc4514_string() or '(empty)'}")
        print(f"        issuer:  {cert.issuer.rfc4514_string()}")
        if i == 0:
            print(f"        SAN:     {spiffe_id_of(cert)} (the only SAN)")
        print(f"        valid:   {cert.not_valid_before_utc:%Y-%m-%d %H:%M} to {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")


def run(args: argparse.Namespace) -> int:
    state = Path(tempfile.mkdtemp(prefix="ambient-demo-"))
    ca_dir, out = state / "ca", state / "workload"
    server: CaServerProcess | None = None
    try:
        _step("ambient ca init: a new self-signed root (ECDSA P-256, 10 years)")
        print(run_ambient("ca", "init", "--dir", str(ca_dir)).stdout, end="")

        _step(f"ambient ca token create --identity {IDENTITY}")
        token = run_ambient("ca", "token", "create", "--dir", str(ca_dir), "--identity", IDENTITY).stdout.strip()
        print(f"  token {token[:8]}... (printed once; the CA keeps only its SHA-256)")

        _step("ambient ca serve: gRPC IstioCertificateService over TLS on loopback")
        log_path = state / "ca.log"
        with open(log_path, "w") as log_file:
            server = start_ca_server(ca_dir, metrics=True, stderr=log_file)
        print(f"  {server.ready_line} (pid {server.proc.pid})")
        address, metrics_url = server.address, server.metrics_url

        _step("ambient ca request: the key is made locally, only a CSR is sent")
        print(run_ambient("ca", "request", "--server", address, "--root", str(ca_dir / "root-cert.pem"),
                       "--token", token, "--identity", IDENTITY, "--out", str(out)).stdout, end="")
        _describe_chain(out / "cert-chain.pem")

        _step("openssl verify: the chain against the mesh root")
        chain = x509.load_pem_x509_certificates((out / "cert-chain.pem").read_bytes())
        (state / "leaf.pem").write_bytes(chain[0].public_bytes(serialization.Encoding.PEM))
        verify = subprocess.run(["openssl", "verify", "-CAfile", str(ca_dir / "root-cert.pem"), str(state / "leaf.pem")],
                                capture_output=True, text=True)
        print(f"  {verify.stdout.strip() or verify.stderr.strip()}")

        _step(f"the same token asking for {OTHER_IDENTITY} is refused")
        refused = run_ambient("ca", "request", "--server", address, "--root", str(ca_dir / "root-cert.pem"),
                           "--token", token, "--identity", OTHER_IDENTITY, "--out", str(state / "refused"), check=False)
        print(f"  exit {refused.returncode}: {refused.stderr.strip()}")

        _step(f"CA metrics ({metrics_url})")
        with urllib.request.urlopen(metrics_url, timeout=10) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("ambient_ca_") and not line.startswith("ambient_ca_root") and "_created" not in line:
                    print(f"  {line}")

        _step(f"the CA's log ({log_path.name}): one line per decision")
        for line in log_path.read_text().splitlines():
            print(f"  {line}")
        return 0 if verify.returncode == 0 and refused.returncode != 0 else 1
    finally:
        if server is not None:
            status = server.stop()
            _step(f"stopped the CA server (pid {server.proc.pid}, exit {status})")
        if args.keep:
            print(f"state kept in {state}")
        else:
            shutil.rmtree(state, ignore_errors=True)
