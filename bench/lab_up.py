"""How long `ambient lab up` and `ambient lab down` take, on this machine (root).

Builds a lab of --nodes nodes (default 2) and --pods pods (default 10: half HTTP echo servers with an
httpGet readiness probe, half sleeping clients), --runs times (default 3). Each run times the whole
`ambient lab up` command (until it returns: every pod Running and ready), then one request from a
client to an echo server on the other node (to show the lab works), then `ambient lab down`. The
median run is reported and every run kept, in bench/results/lab-<date>.json. Not part of `make test`.
Run: `make bench-lab` (or `sudo .venv/bin/python bench/lab_up.py --pods 20`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "manifests" / "samples"
LAB = "bench-lab"


def manifests(pods: int, nodes: int) -> str:
    docs = ["apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n"]
    for i in range(pods):
        node = f"node-{i % nodes}"
        if i % 2 == 0:
            docs.append(f"""apiVersion: v1
kind: Pod
metadata: {{name: echo-{i}, namespace: bench}}
spec:
  nodeName: {node}
  containers:
  - name: echo
    command: [python3, echo_server.py, --port, "8080"]
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe: {{httpGet: {{path: /healthz, port: http}}}}
""")
        else:
            docs.append(f"""apiVersion: v1
kind: Pod
metadata: {{name: client-{i}, namespace: bench}}
spec:
  nodeName: {node}
  containers: [{{name: client, command: [sleep, infinity]}}]
""")
    return "---\n".join(docs)


def ambient(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ambient", *args], capture_output=True, text=True, env=env,
                          timeout=300, check=True)


def one_run(config: Path, env: dict, nodes: int) -> dict:
    start = time.perf_counter()
    ambient(env, "lab", "up", str(config), "--name", LAB, "--nodes", str(nodes))
    up = time.perf_counter() - start
    try:
        status = json.loads(ambient(env, "lab", "status", "--name", LAB, "-o", "json").stdout)
        assert all(p["all_ready"] for p in status["pods"]), status["pods"]
        client = next(p for p in status["pods"] if p["name"].startswith("client-"))
        echo = next(p for p in status["pods"] if p["name"].startswith("echo-") and p["node"] != client["node"])
        answer = json.loads(ambient(env, "exec", "--name", LAB, f"bench/{client['name']}", "--", "curl", "-sS",
                                    "--max-time", "5", f"http://{echo['ip']}:8080/").stdout)
        assert answer["client"]["address"] == client["ip"], answer
    finally:
        start = time.perf_counter()
        ambient(env, "lab", "down", "--name", LAB)
        down = time.perf_counter() - start
    return {"up_s": round(up, 3), "down_s": round(down, 3), "pods": len(status["pods"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--pods", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("the lab needs root", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="ambient-bench-lab-"))
    try:
        config = work / "config"
        config.mkdir()
        shutil.copy(SAMPLES / "echo_server.py", config)
        (config / "pods.yaml").write_text(manifests(args.pods, args.nodes))
        env = {**os.environ, "AMBIENT_LAB_ROOT": str(work / "state")}
        runs = [one_run(config, env, args.nodes) for _ in range(args.runs)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()},
        "nodes": args.nodes, "pods": args.pods, "runs": runs,
        "median_up_s": statistics.median(r["up_s"] for r in runs),
        "median_down_s": statistics.median(r["down_s"] for r in runs),
    }
    out = REPO / "bench" / "results" / f"lab-{dt.date.today().isoformat()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"lab up, {args.nodes} nodes and {args.pods} pods (every pod ready): median {result['median_up_s']:.2f} s; "
          f"lab down: median {result['median_down_s']:.2f} s; runs {runs}; written to {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
