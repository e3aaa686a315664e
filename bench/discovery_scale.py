"""Discovery at scale: 10,000 pods, 1,000 services and 500 policies, served to 50 clients.

Measures, on this machine:
1. compute: the time to compute the dataplane view from the registry (``compute_view``) and to turn
   it into the versioned snapshot discovery serves, in process (median of --runs);
2. initial delivery: ``ambient controlplane`` runs as its own process on loopback; 50 discovery
   clients (trio ``DiscoveryClient``, wildcard on both types, spread over --client-procs processes)
   connect at once; the time from their start until every one holds the whole view;
3. one change: one pod's status changes in ``pods.json`` (what the lab writes); the time until
   every client has that Workload (median of --changes). This includes the control plane's polling
   of the file (SCAN_INTERVAL) and its debounce (DEBOUNCE_QUIET), both reported beside it.

Times across processes use CLOCK_MONOTONIC, which is system-wide on Linux. Every load is bounded
(counts, and a timeout on every wait). Writes bench/results/discovery-<date>.json. Not part of
``make test``. Run: ``make bench-discovery``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mesh_fixture  # noqa: E402

from controlplane import server as cp  # noqa: E402
from controlplane.registry import POD_STATUS_FILE, Registry, write_pod_statuses  # noqa: E402
from controlplane.view import MeshConfig, PodStatus, compute_view, workload_uid  # noqa: E402
from lab.launch import run_ambient, start_controlplane  # noqa: E402
from mesh.parse import parse_text  # noqa: E402

WAIT_TIMEOUT = 120.0
IDLE_SECONDS = 3.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def build_registry(files: dict[str, str], nodes: int) -> Registry:
    registry = Registry()
    for name, text in files.items():
        result = parse_text(text, name)
        if result.errors:
            raise SystemExit(f"fixture does not parse: {result.errors[0]}")
        registry.set_file(name, result.resources)
    registry.replace_pod_statuses(mesh_fixture.statuses(registry.state().pods.keys(), nodes))
    return registry


def measure_compute(registry: Registry, runs: int) -> dict:
    state_s, view_s, snapshot_s = [], [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        state = registry.state()
        t1 = time.perf_counter()
        view = compute_view(state)
        t2 = time.perf_counter()
        resources = cp.snapshot_resources(view)
        t3 = time.perf_counter()
        state_s.append(t1 - t0)
        view_s.append(t2 - t1)
        snapshot_s.append(t3 - t2)
    return {
        "workloads": len(view.workloads), "services": len(view.services),
        "authorizations": len(view.authorizations),
        "resources": sum(len(r) for r in resources.values()),
        "bytes": sum(len(v.body.value) for r in resources.values() for v in r.values()),
        "state_ms": round(statistics.median(state_s) * 1000, 1),
        "view_ms": round(statistics.median(view_s) * 1000, 1),
        "snapshot_ms": round(statistics.median(snapshot_s) * 1000, 1),
        "total_ms": round(statistics.median(map(sum, zip(state_s, view_s, snapshot_s, strict=True))) * 1000, 1),
    }


# ---------------------------------------------------------------- client processes


def client_worker(args: argparse.Namespace) -> None:
    """Runs ``args.clients`` clients; prints ``synced <t>`` per client, then ``changed <n> <t>``
    per client each time the watched pod's Workload changes. Exits when stdin closes."""
    import trio

    from mesh.api.types import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL
    from mesh.xds.client import ClientConfig, DiscoveryClient

    root = Path(args.root).read_bytes()
    config = ClientConfig(args.target, root, args.token, {ADDRESS_TYPE_URL: None, AUTHORIZATION_TYPE_URL: None},
                          server_name="localhost")

    def emit(line: str) -> None:
        print(line, flush=True)

    async def one(client: DiscoveryClient, nursery) -> None:
        await nursery.start(client.run)
        emit(f"synced {time.monotonic():.6f} {len(client.view(ADDRESS_TYPE_URL))}")
        changes = 0
        async for change in client.changes():
            if args.watch in change.updated:
                changes += 1
                emit(f"changed {changes} {time.monotonic():.6f}")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(args.clients):
                nursery.start_soon(one, DiscoveryClient(config), nursery)
            await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)  # the parent closes it
            nursery.cancel_scope.cancel()

    trio.run(main)


class ClientProcesses:
    def __init__(self, count: int, per_process: list[int], target: str, root: Path, token: str, watch: str) -> None:
        self.procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--client-worker", "--clients", str(n), "--target", target,
                 "--root", str(root), "--token", token, "--watch", watch],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )
            for n in per_process
        ]
        self.count = count
        self.lines: queue.Queue[str | None] = queue.Queue()
        for p in self.procs:  # one reader per pipe: a select() over buffered pipes can strand lines
            threading.Thread(target=self._pump, args=(p,), daemon=True).start()

    def _pump(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def read(self, prefix: str, expected: int) -> list[list[str]]:
        """``expected`` lines starting with ``prefix`` from all processes together."""
        found: list[list[str]] = []
        deadline = time.monotonic() + WAIT_TIMEOUT
        while len(found) < expected:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise SystemExit(f"timed out waiting for {expected} '{prefix}' lines (got {len(found)})") from None
            if line is None:
                raise SystemExit("a client process exited early")
            if line.startswith(prefix):
                found.append(line.split())
        return found

    def close(self) -> None:
        for p in self.procs:
            p.stdin.close()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def measure_delivery(files: dict[str, str], registry: Registry, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="ambient-bench-discovery-") as tmp:
        config_dir, state_dir = Path(tmp, "config"), Path(tmp, "state")
        config_dir.mkdir()
        state_dir.mkdir()
        for name, text in files.items():
            (config_dir / name).write_text(text)
        statuses = registry.pod_statuses()
        write_pod_statuses(state_dir / POD_STATUS_FILE, statuses)
        log = open(Path(tmp, "controlplane.log"), "w")
        server = start_controlplane(config_dir, state_dir, log_level="info", stderr=log)
        try:
            created = run_ambient("ca", "token", "create", "--dir", str(state_dir / "ca"), "--node", "node-00")
            token = created.stdout.strip()
            watched = sorted(statuses)[0]
            uid = workload_uid(MeshConfig(), *watched)
            per_process = [args.clients // args.client_procs + (i < args.clients % args.client_procs)
                           for i in range(args.client_procs)]
            cpu_before = cpu_seconds(server.proc.pid)
            started = time.monotonic()
            clients = ClientProcesses(args.clients, per_process, server.address, state_dir / "ca" / "root-cert.pem",
                                      token, uid)
            try:
                synced = clients.read("synced", args.clients)
                initial_cpu = cpu_seconds(server.proc.pid) - cpu_before
                cpu_before = cpu_seconds(server.proc.pid)
                time.sleep(IDLE_SECONDS)  # what the control plane costs with clients connected and nothing changing
                idle_cpu = (cpu_seconds(server.proc.pid) - cpu_before) / IDLE_SECONDS
                cpu_before = cpu_seconds(server.proc.pid)
                sync_times = sorted(float(s[1]) - started for s in synced)
                sizes = {int(s[2]) for s in synced}
                change_latencies = []
                for n in range(1, args.changes + 1):
                    old = statuses[watched]
                    statuses[watched] = PodStatus(old.ip, old.node, ready=not old.ready)
                    t0 = time.monotonic()
                    write_pod_statuses(state_dir / POD_STATUS_FILE, statuses)
                    arrivals = [float(c[2]) for c in clients.read("changed", args.clients) if int(c[1]) == n]
                    change_latencies.append(max(arrivals) - t0)
                change_cpu = (cpu_seconds(server.proc.pid) - cpu_before) / args.changes
            finally:
                clients.close()
        finally:
            server.stop()
            log.close()
            views = [line for line in Path(tmp, "controlplane.log").read_text().splitlines()
                     if "ambient.controlplane: view " in line]
    return {
        "clients": args.clients, "client_processes": args.client_procs, "addresses_per_client": sorted(sizes),
        "initial_all_clients_s": round(sync_times[-1], 3),
        "initial_first_client_s": round(sync_times[0], 3),
        "initial_median_client_s": round(statistics.median(sync_times), 3),
        "initial_controlplane_cpu_s": round(initial_cpu, 2),
        "change_controlplane_cpu_ms": round(change_cpu * 1000, 1),
        "idle_controlplane_cpu_ms_per_s": round(idle_cpu * 1000, 1),
        "change_to_all_clients_ms": [round(x * 1000, 1) for x in change_latencies],
        "change_to_all_clients_median_ms": round(statistics.median(change_latencies) * 1000, 1),
        "controlplane_view_log": views,
        "includes_scan_interval_ms": cp.SCAN_INTERVAL * 1000, "includes_debounce_quiet_ms": cp.DEBOUNCE_QUIET * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--services", type=int, default=1_000)
    parser.add_argument("--policies", type=int, default=500)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--client-procs", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--changes", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--client-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--watch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client_worker:
        client_worker(args)
        return 0
    if not (0 < args.clients <= 200 and 0 < args.client_procs <= args.clients and 0 < args.changes <= 50):
        raise SystemExit("bounded load: 1..200 clients, 1..50 changes")

    files = mesh_fixture.manifests(args.pods, args.services, args.policies)
    t0 = time.perf_counter()
    registry = build_registry(files, args.nodes)
    parse_s = time.perf_counter() - t0
    compute = measure_compute(registry, args.runs)
    compute["parse_yaml_ms"] = round(parse_s * 1000, 1)
    print(f"view of {compute['workloads']} workloads, {compute['services']} services, "
          f"{compute['authorizations']} authorizations ({compute['resources']} resources, "
          f"{compute['bytes'] / 1e6:.1f} MB): compute {compute['view_ms']} ms + snapshot {compute['snapshot_ms']} ms "
          f"(registry state {compute['state_ms']} ms); parsing the YAML took {compute['parse_yaml_ms']} ms", flush=True)
    delivery = measure_delivery(files, registry, args)
    print(f"{delivery['clients']} clients: all hold the full view after {delivery['initial_all_clients_s']} s "
          f"(first {delivery['initial_first_client_s']} s, median {delivery['initial_median_client_s']} s); "
          f"control plane CPU {delivery['initial_controlplane_cpu_s']} s", flush=True)
    print(f"one pod change reaches all {delivery['clients']} clients in "
          f"{delivery['change_to_all_clients_median_ms']} ms (median of {args.changes}: "
          f"{delivery['change_to_all_clients_ms']}; includes up to {delivery['includes_scan_interval_ms']:.0f} ms "
          f"file polling and {delivery['includes_debounce_quiet_ms']:.0f} ms debounce); "
          f"control plane CPU per change {delivery['change_controlplane_cpu_ms']} ms")
    result = {
        "date": dt.date.today().isoformat(), "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load": {"pods": args.pods, "services": args.services, "policies": args.policies, "nodes": args.nodes},
        "compute": compute, "delivery": delivery,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"discovery-{result['date']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
