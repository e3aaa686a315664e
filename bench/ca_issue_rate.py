"""Certificates issued per second through gRPC, on this machine.

Starts `ambient ca serve` as its own process on loopback, then measures two things, each bounded in
count and time:

1. CA throughput: many callers send CreateCertificate concurrently over one TLS channel, with CSRs
   made beforehand, so the figure is the server's (authentication, CSR check, signing, gRPC).
2. Client round trip: one caller doing what a ztunnel does per identity: make a key and CSR, call,
   verify the returned chain.

Each phase runs --runs times (default 3); the median run is reported, every run is kept.
Writes bench/results/ca-<date>.json and prints a summary. Not part of `make test`.
Run: `make bench-ca` (or `.venv/bin/python bench/ca_issue_rate.py --requests 3000`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from google.protobuf import struct_pb2

from ca.client import CaClient, new_key_and_csr
from ca.proto import ca_pb2
from lab.launch import run_ambient, start_ca_server
from mesh.identity import SpiffeId

IDENTITY = SpiffeId("cluster.local", "bench", "client")
METHOD = "/istio.v1.auth.IstioCertificateService/CreateCertificate"


def ambient(*args: str) -> str:
    return run_ambient(*args).stdout


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput(address: str, root: bytes, token: str, requests: int, concurrency: int, max_seconds: float, pid: int):
    csrs = [new_key_and_csr(IDENTITY)[1] for _ in range(32)]
    metadata = struct_pb2.Struct()
    metadata.update({"ImpersonatedIdentity": str(IDENTITY)})
    bodies = [ca_pb2.IstioCertificateRequest(csr=c, metadata=metadata).SerializeToString() for c in csrs]
    auth = (("authorization", f"Bearer {token}"),)
    latencies: list[float] = []
    deadline = time.monotonic() + max_seconds
    with grpc.secure_channel(address, grpc.ssl_channel_credentials(root)) as channel:
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        call(bodies[0], timeout=10, metadata=auth)  # warm the connection

        def one(i: int) -> None:
            if time.monotonic() > deadline:
                return
            start = time.perf_counter()
            call(bodies[i % len(bodies)], timeout=10, metadata=auth)
            latencies.append(time.perf_counter() - start)

        cpu_before, start = cpu_seconds(pid), time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(requests)))
        elapsed, cpu = time.perf_counter() - start, cpu_seconds(pid) - cpu_before
    latencies.sort()
    return {
        "requests": len(latencies), "concurrency": concurrency, "seconds": round(elapsed, 3),
        "certificates_per_second": round(len(latencies) / elapsed, 1),
        "server_cpu_ms_per_certificate": round(1000 * cpu / len(latencies), 3),
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 2),
        "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99) - 1], 2),
    }


def round_trips(address: str, root: bytes, token: str, count: int, max_seconds: float):
    times: list[float] = []
    deadline = time.monotonic() + max_seconds
    with CaClient(address, root, token) as client:
        client.create_certificate(IDENTITY)
        while len(times) < count and time.monotonic() < deadline:
            start = time.perf_counter()
            client.create_certificate(IDENTITY)
            times.append(time.perf_counter() - start)
    return {"round_trips": len(times), "per_second": round(len(times) / sum(times), 1),
            "median_ms": round(1000 * statistics.median(times), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=30.0, help="bound on each phase")
    parser.add_argument("--runs", type=int, default=3, help="repeat each phase; the median run is reported")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ambient-bench-ca-") as tmp:
        ca_dir = Path(tmp) / "ca"
        ambient("ca", "init", "--dir", str(ca_dir))
        token = ambient("ca", "token", "create", "--dir", str(ca_dir), "--identity", str(IDENTITY)).strip()
        root = (ca_dir / "root-cert.pem").read_bytes()
        server = start_ca_server(ca_dir, log_level="warning")
        proc, address = server.proc, server.address
        try:
            servers = [throughput(address, root, token, args.requests, args.concurrency, args.max_seconds, proc.pid)
                       for _ in range(args.runs)]
            clients = [round_trips(address, root, token, min(args.requests, 500), args.max_seconds)
                       for _ in range(args.runs)]
        finally:
            server.stop()

    server = sorted(servers, key=lambda r: r["certificates_per_second"])[len(servers) // 2]
    client = sorted(clients, key=lambda r: r["per_second"])[len(clients) // 2]
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()},
        "ca_throughput": server,
        "client_round_trip": client,
        "all_runs": {"ca_throughput": servers, "client_round_trip": clients},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"ca-{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    spread = ", ".join(str(r["certificates_per_second"]) for r in servers)
    print(f"CA throughput (median of {len(servers)} runs: {spread}): "
          f"{server['certificates_per_second']} certificates/s over gRPC/TLS "
          f"({server['requests']} requests, {server['concurrency']} concurrent; "
          f"p50 {server['p50_ms']} ms, p99 {server['p99_ms']} ms; "
          f"{server['server_cpu_ms_per_certificate']} CPU-ms per certificate in the CA)")
    print(f"client round trip (keygen + CSR + gRPC + chain check): {client['per_second']}/s, "
          f"median {client['median_ms']} ms")
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
