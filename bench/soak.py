"""The soak (issue 18, root): keep-alive and new-connection load through the mesh while ztunnel, the node
agent and the control plane are each killed once; requests failed, data corrupted, fd and RSS drift.

One lab (`ambient lab up`, lab `soak`, 2 nodes, its state under a private AMBIENT_LAB_ROOT in a
temporary directory): in the ambient namespace `soak`, a checksumming echo server on node-1 and a
client pod on node-0, so every request crosses capture -> ztunnel node-0 -> HBONE -> ztunnel node-1.
Two loads run in the client pod (`ambient exec`, `bench/soak/load.py`): keep-alive connections and a
connection per request, each printing its ok/failed/corrupted counts every second.

The timeline (`bench/soak/plan.py`): a warm-up, a baseline, then SIGKILL to ztunnel-node-1, to
node-agent-node-1 and to the control plane, one per phase (each pid from the lab's status, checked to
be in that component's cgroup of this lab). After each kill the soak waits, bounded by
`RECOVERY_BOUND_S`, until the component runs again under a new pid (ztunnel: until it is also ready on
15021) and both loads are served again, then keeps steady load until the phase ends. Every mesh
component's fds and RSS are sampled at the start and end of each steady stretch (and every
`SAMPLE_PERIOD_S`).

The lab is always taken down, also on an error, Ctrl-C or SIGTERM (`ambient lab down`; should that fail,
SIGTERM to the lab's daemon); the loads are ended by their pids; on a failure the lab's logs are
first copied to a directory whose path is printed. Writes bench/results/<date>-soak.json (every second
of every load, every sample) and <date>-soak.md; exits 1 if any request was corrupted or a kill was not
recovered from within the bound.

Run: `make soak`, or `sudo .venv/bin/python bench/soak.py [--quick | --duration 60-480]`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from datapath.lab import (  # noqa: E402
    BenchFailure,
    Lab,
    LabLayout,
    cgroup_pids,
    code_state,
    exit_on_sigterm,
    lab_preflight,
    lab_session,
    rss_kib,
    temporary_lab,
)
from datapath.paths import container, planned_ips, pod  # noqa: E402
from lab.components import CONTROLPLANE  # noqa: E402
from lab.processes import process_cgroup  # noqa: E402
from soak import plan as timeline, report  # noqa: E402  (bench/soak/, the package beside this script)
from ztunnel.admin import READINESS_PORT  # noqa: E402

LAB = "soak"
NAMESPACE = "soak"
CLIENT_NODE, SERVER_NODE = "node-0", timeline.SERVER_NODE
ECHO_PORT = 9000
LOAD_SCRIPT = REPO / "bench" / "soak" / "load.py"
# The loads, as load.py's options. Paced, not flat out: the soak looks for lost and corrupted requests
# and for drift, not for the throughput (2 cores, and the lab shares them with the loads): 100 requests/s
# on 4 keep-alive connections, 20 new connections/s.
LOADS = {
    "keepalive": {"workers": 4, "rate": 25, "max_payload": 64 * 1024},
    "newconn": {"workers": 2, "rate": 10, "max_payload": 16 * 1024},
}
READY_TIMEOUT_S = 90  # lab up
ENROLL_TIMEOUT_S = 60  # both pods ready and enrolled after lab up
STATUS_POLL_S = 0.1  # reading the lab's status file while waiting for a component (no event to await from outside)
READY_PROBE_TIMEOUT_S = 2  # one readiness request to a restarted ztunnel
SAMPLE_PERIOD_S = 15.0  # fd and RSS samples within a steady stretch, besides its start and end
LOAD_STOP_TIMEOUT_S = 20.0  # a load's exit after SIGTERM: its workers finish the exchange they are in (<= 15 s)
LOAD_SLACK_S = 60.0  # the loads' own time bound beyond the worst-case timeline: they never outlive the soak long
STDERR_LINES = 20  # of each load's stderr, kept in the report
MAX_BUCKETS = 4000  # per load: seconds kept (more than the longest timeline; a runaway load stays bounded)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=timeline.DEFAULT_DURATION_S,
                        help=f"the timeline in seconds ({timeline.MIN_DURATION_S:g}-{timeline.MAX_DURATION_S:g}; "
                             "lab up and down come on top)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a {timeline.QUICK_DURATION_S:g} s timeline, for iterating on the soak itself")
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    if args.quick:
        args.duration = timeline.QUICK_DURATION_S
    try:
        args.phases = timeline.plan(args.duration)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def preflight() -> str | None:
    return lab_preflight(REPO, ("ip", "ss", "curl"))


def manifests(layout: LabLayout) -> list[dict]:
    echo = [layout.python, str(LOAD_SCRIPT), "serve", "--port", str(ECHO_PORT)]
    return [{"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": NAMESPACE, "labels": {"istio.io/dataplane-mode": "ambient"}}},
            pod(NAMESPACE, "server", SERVER_NODE, [container("echo", echo, (ECHO_PORT,))]),
            pod(NAMESPACE, "client", CLIENT_NODE, [container("client", ["sleep", "infinity"])])]


def check_lab(lab: Lab, ips: dict) -> dict:
    """Both pods on their nodes, at their planned IPs, ready and enrolled (bounded)."""
    deadline = time.monotonic() + ENROLL_TIMEOUT_S
    while True:
        status = lab.status()
        pods = {(p["namespace"], p["name"]): p for p in status["pods"]}
        problems = []
        for name, node in (("server", SERVER_NODE), ("client", CLIENT_NODE)):
            pod_status, ip = pods.get((NAMESPACE, name)), ips[(NAMESPACE, name)]
            if pod_status is None:
                problems.append(f"{NAMESPACE}/{name} is missing")
            elif (pod_status["node"], pod_status["ip"], pod_status["all_ready"], pod_status["enrolled"]) != \
                    (node, ip, True, True):
                problems.append(f"{NAMESPACE}/{name}: on {pod_status['node']} at {pod_status['ip']} (planned {node} "
                                f"at {ip}), ready {pod_status['ready']}, enrolled {pod_status['enrolled']}")
        if not problems:
            return status
        if time.monotonic() > deadline:
            raise BenchFailure("the lab is not as planned:\n  " + "\n  ".join(problems))
        time.sleep(0.5)


def components(status: dict) -> dict[str, dict]:
    """{name: {"pid", "state", "restarts", "netns"}} of the control plane and every node's components."""
    out = {CONTROLPLANE: {**status["controlplane"]}}
    for node in status["nodes"]:
        for component in node["components"]:
            out[component["name"]] = {**component, "netns": node["netns"]}
    return out


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return 0


class LoadRun:
    """One load generator in the client pod (our child, by pid), its seconds read as they come."""

    def __init__(self, lab: Lab, name: str, server_ip: str, seconds: float, stderr_path: Path,
                 arrived: threading.Condition) -> None:
        options = [f"--{k.replace('_', '-')}={v}" for k, v in LOADS[name].items()]
        argv = lab.exec_argv(NAMESPACE, "client", lab.layout.python, str(LOAD_SCRIPT), name, "--host", server_ip,
                             "--port", str(ECHO_PORT), "--seconds", f"{seconds:.0f}", *options)
        self.name, self.arrived, self.stderr_path = name, arrived, stderr_path
        self.buckets: deque[dict] = deque(maxlen=MAX_BUCKETS)
        self.summary: dict | None = None
        self.unparsed = 0
        with stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
                                            env=lab.layout.env, text=True)
        self.reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                self.unparsed += 1
                continue
            with self.arrived:
                if "summary" in record:
                    self.summary = record["summary"]
                else:
                    self.buckets.append(record)
                self.arrived.notify_all()

    def served_since(self, since: float) -> bool:
        """A whole second that started after `since` with successes and no failure."""
        return any(b["second"] >= since and b["ok"] and not b["failed"] for b in reversed(self.buckets))

    def stop(self) -> None:
        """SIGTERM (it prints its last second and summary), then SIGKILL if it does not end in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(LOAD_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(LOAD_STOP_TIMEOUT_S)
        self.reader.join(LOAD_STOP_TIMEOUT_S)

    def stderr_tail(self) -> list[str]:
        try:
            return self.stderr_path.read_text(errors="replace").splitlines()[-STDERR_LINES:]
        except OSError:
            return []


class Soak:
    def __init__(self, lab: Lab, status: dict, server_ip: str, work: Path) -> None:
        self.lab, self.server_ip, self.work = lab, server_ip, work
        self.status_file = lab.layout.paths.status
        self.netns = {name: c.get("netns") for name, c in components(status).items()}
        self.arrived = threading.Condition()
        self.loads: list[LoadRun] = []
        self.phases: list[dict] = []
        self.samples: list[dict] = []

    def current(self) -> dict[str, dict]:
        return components(json.loads(self.status_file.read_text()))

    def start_loads(self, seconds: float) -> None:
        for name in LOADS:
            self.loads.append(LoadRun(self.lab, name, self.server_ip, seconds, self.work / f"{name}.stderr",
                                      self.arrived))

    def stop_loads(self) -> None:
        for load in self.loads:
            load.stop()

    def sample(self, phase: str, point: str) -> None:
        at = time.time()
        for name, component in sorted(self.current().items()):
            pid = component["pid"]
            if pid:
                self.samples.append({"at": round(at, 3), "phase": phase, "point": point, "component": name,
                                     "pid": pid, "fds": fd_count(pid), "rss_kib": rss_kib(pid)})

    def not_enrolled(self) -> list[str]:
        """The soak's pods that are not enrolled (captured and handed to their ztunnel) right now."""
        pods = json.loads(self.status_file.read_text())["pods"]
        return sorted(f"{p['namespace']}/{p['name']}: {p['capture']}" for p in pods
                      if p["namespace"] == NAMESPACE and not p["enrolled"])

    def kill(self, component: str) -> tuple[int, float]:
        """SIGKILL to the component's process, once it is checked to be that component of this lab; its
        pid, and the time just before the kill."""
        pid = self.current()[component]["pid"]
        if not pid or pid not in cgroup_pids(process_cgroup(LAB, component)):
            raise BenchFailure(f"{component}: pid {pid} is not in its cgroup of lab {LAB}; not killing it")
        at = time.time()
        os.kill(pid, signal.SIGKILL)
        return pid, at

    def wait_back(self, component: str, old_pid: int, deadline: float) -> tuple[int | None, float | None]:
        while time.time() < deadline:
            now = self.current()[component]
            if now["pid"] and now["pid"] != old_pid and now["state"] == "running":
                return now["pid"], time.time()
            time.sleep(STATUS_POLL_S)
        return None, None

    def wait_ready(self, component: str, deadline: float) -> float | None:
        """A restarted ztunnel's readiness (15021, in its node's netns), asked until it says 200."""
        url = f"http://127.0.0.1:{READINESS_PORT}/healthz/ready"
        argv = ["ip", "netns", "exec", self.netns[component], "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                "--max-time", str(READY_PROBE_TIMEOUT_S), url]
        while time.time() < deadline:
            try:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=READY_PROBE_TIMEOUT_S + 5)
                if done.stdout.strip() == "200":
                    return time.time()
            except subprocess.TimeoutExpired:
                pass
            time.sleep(STATUS_POLL_S)
        return None

    def wait_served(self, since: float, deadline: float) -> float | None:
        with self.arrived:
            if self.arrived.wait_for(lambda: all(load.served_since(since) for load in self.loads),
                                     max(0.0, deadline - time.time())):
                return time.time()
        return None

    def run_phase(self, phase: timeline.Phase) -> None:
        record: dict = {"name": phase.name, "kill": phase.kill}
        steady_from = start = time.time()
        if phase.kill:
            record["killed_pid"], start = self.kill(phase.kill)
            deadline = start + timeline.RECOVERY_BOUND_S
            record["back_pid"], record["back_at"] = self.wait_back(phase.kill, record["killed_pid"], deadline)
            record["ready_at"] = None
            if record["back_at"] is not None and phase.kill.startswith("ztunnel-"):
                record["ready_at"] = self.wait_ready(phase.kill, deadline)
            since = max(t for t in (record["back_at"], record["ready_at"], start) if t is not None)
            record["served_at"] = self.wait_served(since, deadline)
            steady_from = time.time()
            took = {k: f"{record[k] - start:.1f} s" if record[k] else "never"
                    for k in ("back_at", "ready_at", "served_at")}
            if not phase.kill.startswith("ztunnel-"):
                took["ready_at"] = "-"
            print(f"  killed {phase.kill} (pid {record['killed_pid']}): back {took['back_at']}, ready "
                  f"{took['ready_at']}, served {took['served_at']}", flush=True)
        record["start"] = start
        self.sample(phase.name, "start")
        end = max(start + phase.seconds, steady_from + timeline.MIN_STEADY_S)
        while (left := end - time.time()) > 0:
            time.sleep(min(left, SAMPLE_PERIOD_S))  # the timeline's own pace: nothing to wait for but time
            if end - time.time() > 1:
                self.sample(phase.name, "periodic")
        self.sample(phase.name, "end")
        record["end"] = time.time()
        record["not_enrolled"] = self.not_enrolled()
        self.phases.append(record)
        ok = {load.name: sum(b["ok"] for b in load.buckets if b["second"] >= start) for load in self.loads}
        failed = {load.name: sum(b["failed"] for b in load.buckets if b["second"] >= start) for load in self.loads}
        print(f"{phase.name}: {record['end'] - start:.0f} s; ok {ok}, failed {failed}", flush=True)


def run(args: argparse.Namespace, lab: Lab, work: Path) -> dict:
    layout = lab.layout
    layout.config_dir.mkdir()
    docs = manifests(layout)
    ips = planned_ips(docs, LAB)
    (layout.config_dir / "pods.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    lab_up_s = lab.up(nodes=2, ready_timeout=READY_TIMEOUT_S)
    status = check_lab(lab, ips)
    print(f"lab up in {lab_up_s:.0f} s; the echo server at {ips[(NAMESPACE, 'server')]}", flush=True)
    soak = Soak(lab, status, ips[(NAMESPACE, "server")], work)
    try:
        soak.start_loads(timeline.worst_case_seconds(args.phases) + LOAD_SLACK_S)
        for phase in args.phases:
            soak.run_phase(phase)
    finally:
        soak.stop_loads()
    final = components(lab.status())
    return {"lab_up_s": round(lab_up_s, 1), "server_ip": soak.server_ip, "phases": soak.phases,
            "buckets": {load.name: list(load.buckets) for load in soak.loads},
            "summaries": {load.name: load.summary for load in soak.loads},
            "unparsed_lines": {load.name: load.unparsed for load in soak.loads},
            "load_stderr": {load.name: load.stderr_tail() for load in soak.loads},
            "samples": soak.samples, "restarts": {name: c["restarts"] for name, c in final.items()}}


def main() -> int:
    args = parse_args()
    problem = preflight()
    if problem:
        print(problem, file=sys.stderr)
        return 1
    exit_on_sigterm()
    started = time.monotonic()
    stem = f"{dt.date.today().isoformat()}-soak"
    print(f"soak: {' | '.join(f'{p.name} {p.seconds:.0f} s' for p in args.phases)}", flush=True)
    lab, work = temporary_lab(LAB)
    with lab_session(lab, work, ("ztunnel-node-*.log", "node-agent-*.log", "controlplane.log")):
        measured = run(args, lab, work)

    analysis = report.analyze(measured["phases"], measured["buckets"], measured["samples"], measured["restarts"])
    warnings = [f"{load}: {n} lines of its output were not JSON" for load, n in measured["unparsed_lines"].items() if n]
    warnings += [f"{load}: no summary line (it did not end normally)" for load, s in measured["summaries"].items()
                 if s is None]
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "code": code_state(REPO),
        "parameters": {"lab": LAB, "duration_s": args.duration, "quick": args.quick,
                       "phases": [{"name": p.name, "seconds": round(p.seconds, 1), "kill": p.kill}
                                  for p in args.phases],
                       "recovery_bound_s": timeline.RECOVERY_BOUND_S, "min_steady_s": timeline.MIN_STEADY_S,
                       "loads": {name: " ".join(f"--{k.replace('_', '-')} {v}" for k, v in spec.items())
                                 for name, spec in LOADS.items()},
                       "client_node": CLIENT_NODE, "server_node": SERVER_NODE, "echo_port": ECHO_PORT},
        "analysis": analysis,
        "warnings": warnings,
        **measured,
        "seconds": round(time.monotonic() - started, 1),
        "json": f"{stem}.json",
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    text = report.markdown(result)
    (args.out_dir / f"{stem}.md").write_text(text)
    print("\n" + text)
    print(f"written: {args.out_dir / stem}.json, .md")
    return 0 if analysis["verdict"]["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
