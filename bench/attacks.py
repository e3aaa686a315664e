"""Issue 18's adversarial attacks re-run against a real lab (root): the figures after the fixes, beside
the issue's.

One lab (`ambient lab up`, lab `attacks`, 2 nodes, its state under a private AMBIENT_LAB_ROOT in a
temporary directory). The target is node-1's ztunnel, which serves three pods of the ambient
namespace `mesh`: `victim` (the attacks' target: the soak's echo server on 9000 and a sink that holds
every connection on 9100), `server` (an echo server) and `bystander`, which sends a small request to
`server` every 0.1 s on a new connection for the whole run (`bench/attacks/bystander.py`), so every
attack's window shows whether the node's other pods were still served (failures, longest gap). The
attacker is a pod of the namespace `plain` (outside the mesh) on node-0; it runs
`bench/attacks/attacker.py` in the pod's netns with `ip netns exec` (the lab's `ambient exec` hides
the lab's state from pods), holding a workload certificate obtained from the lab's CA
(`ambient ca token create --identity` and `ambient ca request`) for the HBONE attacks.

The attacks, one after another, each bounded in count and time (the numbers are the issue's):
1. a plaintext connection to the victim's own 15001, and an HBONE CONNECT to `<victim>:15001`;
2. 100,000 empty CONTINUATION frames after a HEADERS without END_HEADERS;
3. 50,000 HEADERS (CONNECT to the victim's app) + RST_STREAM pairs in one write;
4. 5 million PINGs from a peer that never reads (stops at the server's close or after 30 s);
5. 8,000 idle plaintext connections to the victim's app port (captured to 15006), held 5 s;
7. a ~1 KB billion-laughs Service dropped into the lab's YAML directory for 20 s, then removed;
8. an ALLOW policy for `server` written without its rules, then with them 0.2 s later.
Meanwhile ztunnel-node-1's fds and RSS, and the control plane's and the lab daemon's RSS, are sampled
every `SAMPLE_PERIOD_S`.

The lab is always taken down, also on an error, Ctrl-C or SIGTERM; the bystander and attackers are
ended by their pids; on a failure the lab's logs are first copied to a directory whose path is printed.
Writes bench/results/<date>-attacks.json (every sample and request) and <date>-attacks.md; exits 1
if an attack's verdict is FAIL.

Run: `sudo .venv/bin/python bench/attacks.py [--only 1,2,...]`.
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

from attacks import report  # noqa: E402  (bench/attacks/, the package beside this script)
from datapath.lab import (  # noqa: E402
    BenchFailure,
    Lab,
    LabLayout,
    code_state,
    exit_on_sigterm,
    lab_preflight,
    lab_session,
    rss_kib,
    temporary_lab,
)
from datapath.paths import container, planned_ips, pod  # noqa: E402
from ztunnel.limits import node_connection_cap, pod_connection_cap  # noqa: E402
from ztunnel.metrics import REFUSED  # noqa: E402

LAB = "attacks"
MESH, PLAIN = "mesh", "plain"
TARGET_NODE, ATTACKER_NODE = "node-1", "node-0"
ECHO_PORT, SINK_PORT = 9000, 9100
ATTACKS_DIR = REPO / "bench" / "attacks"
ECHO_SCRIPT = REPO / "bench" / "soak" / "load.py"
ATTACKER_IDENTITY = f"spiffe://cluster.local/ns/{PLAIN}/sa/attacker"
# The scale.
CONTINUATION_FRAMES = 100_000
RAPID_RESETS = 50_000
PINGS = 5_000_000
PING_SECONDS = 30.0
# The paced PING flood: writes of fewer PINGs than the server's bound on control frames pending
# (hbone.limits.MAX_PENDING_CONTROL_FRAMES, 1,000), a pause between them so that the server reads
# them one write at a time (unpaced, TCP hands it a 256 KiB read of 15,000 PINGs and the bound trips
# on the first read). What then ends the connection is answers the peer never reads piling up.
PACED_PING_BATCH = 500
PACED_PING_PAUSE_S = 0.005  # 100,000 PINGs/s at most
# The paced flood's time bound: once the server's output is stuck it stops reading, and only its PING
# timeout (hbone.limits: a PING every 10 s, unanswered for 20 s) ends the connection, about 30 s in;
# 45 s shows that end (the flood keeps the brief's 30 s).
PACED_PING_SECONDS = 45.0
PLAIN_CONNECTIONS = 8_000
PLAIN_HOLD_S = 5.0  # the flood's connections held open while ztunnel is sampled
PLAIN_OPEN_BOUND_S = 50.0  # opening them, at most (here: about 6 s)
YAML_BOMB_WATCH_S = 20.0
# The YAML bomb is removed at once, and the run stopped, if the control plane or the lab daemon
# passes this: the unfixed code reached 7 GB in 65 s on a machine with 24 GB.
YAML_BOMB_ABORT_KIB = 2 * 1024 * 1024
HALF_WRITTEN_PAUSE_S = 0.2  # between the two writes of the policy (the issue's)
HALF_WRITTEN_WATCH_S = 10.0  # after the second write: the denial lasted ~6 s
# After each attack, before the next: the window in which ztunnel's fds and RSS come back and the
# bystander shows whether it is served again.
SETTLE_S = 3.0
BYSTANDER_RATE = 10.0  # requests per second
SAMPLE_PERIOD_S = 0.1
MAX_SAMPLES = 60_000  # 3 components x 10/s x 30 min: a runaway run stays bounded
STATUS_REFRESH_S = 1.0  # pids re-read from the lab's status this often (a restart shows as a new pid)
ATTACK_SLACK_S = 30.0  # an attacker process beyond its own bounds is killed
COMMAND_TIMEOUT_S = 30.0  # token, certificate, metrics
READY_TIMEOUT_S = 90
ENROLL_TIMEOUT_S = 60
RUN_BOUND_S = 600.0  # the bystander's own bound: it never outlives the run long
ATTACK_KEYS = ("1", "2", "3", "4", "5", "7", "8")
LOG_READ_BYTES = 4 * 1024 * 1024  # of a component's log per attack: its warnings, not a flood of them
LOG_LINES_KEPT = 5  # warning lines kept per attack in the report

BOMB = """# ~1 KB of nested aliases (billion laughs) under a Service's annotations: 9^9 strings expanded
apiVersion: v1
kind: Service
metadata:
  name: bomb
  namespace: mesh
  annotations:
    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
    b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
    c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
    d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
    e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
    f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
    g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
    h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
    i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
spec:
  selector: {app: server}
  ports: [{name: echo, port: 9000}]
"""
POLICY_HEAD = f"""apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow-bystander, namespace: {MESH}}}
spec:
  selector: {{matchLabels: {{app: server}}}}
  action: ALLOW
"""
POLICY_RULES = f"""  rules:
  - from: [{{source: {{principals: [cluster.local/ns/{MESH}/sa/default]}}}}]
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(ATTACK_KEYS), help="attacks to run, e.g. 1,2")
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    args.only = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = sorted(set(args.only) - set(ATTACK_KEYS))
    if unknown or not args.only:
        parser.error(f"--only takes attacks among {', '.join(ATTACK_KEYS)}, not {unknown or 'nothing'}")
    return args


def preflight() -> str | None:
    return lab_preflight(REPO, ("ip", "curl"))


def manifests(layout: LabLayout) -> list[dict]:
    def echo(name: str) -> dict:
        return container(name, [layout.python, str(ECHO_SCRIPT), "serve", "--port", str(ECHO_PORT)], (ECHO_PORT,))

    sink = container("sink", [layout.python, str(ATTACKS_DIR / "sink.py"), "--port", str(SINK_PORT)], (SINK_PORT,))
    idle = container("client", ["sleep", "infinity"])
    return [{"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": MESH, "labels": {"istio.io/dataplane-mode": "ambient"}}},
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": PLAIN}},
            pod(MESH, "victim", TARGET_NODE, [echo("echo"), sink]),
            pod(MESH, "server", TARGET_NODE, [echo("echo")]),
            pod(MESH, "bystander", TARGET_NODE, [idle]),
            pod(PLAIN, "attacker", ATTACKER_NODE, [idle])]


def check_lab(lab: Lab, ips: dict) -> dict:
    """Every pod ready at its planned IP, the mesh pods enrolled (bounded)."""
    deadline = time.monotonic() + ENROLL_TIMEOUT_S
    while True:
        status = lab.status()
        pods = {(p["namespace"], p["name"]): p for p in status["pods"]}
        problems = [f"{ns}/{name}: {pods.get((ns, name))}" for (ns, name), ip in ips.items()
                    if (p := pods.get((ns, name))) is None or p["ip"] != ip or not p["all_ready"]
                    or p["enrolled"] != (ns == MESH)]
        if not problems:
            return status
        if time.monotonic() > deadline:
            raise BenchFailure("the lab is not as planned:\n  " + "\n  ".join(problems))
        time.sleep(0.5)


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return 0


def fd_limit(pid: int) -> int | None:
    """The soft RLIMIT_NOFILE of a process, from /proc/<pid>/limits."""
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft = line.split()[3]
                return None if soft == "unlimited" else int(soft)
    except (OSError, ValueError, IndexError):
        pass
    return None


class Sampler:
    """ztunnel-node-1's fds and RSS, the control plane's and the lab daemon's RSS, every SAMPLE_PERIOD_S
    in a thread; pids re-read from the lab's status every STATUS_REFRESH_S."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.samples: deque[dict] = deque(maxlen=MAX_SAMPLES)
        self.pids: dict[str, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def refresh(self) -> None:
        status = json.loads(self.lab.layout.paths.status.read_text())
        pids = {c["name"]: c["pid"] for node in status["nodes"] for c in node["components"]
                if c["name"] == f"ztunnel-{TARGET_NODE}"}
        pids["controlplane"] = status["controlplane"]["pid"]
        pids["daemon"] = json.loads(self.lab.layout.paths.record.read_text())["pid"]
        self.pids = {name: pid for name, pid in pids.items() if pid}

    def _run(self) -> None:
        refreshed = 0.0
        while not self.stop.wait(SAMPLE_PERIOD_S):  # a period, not a synchronisation
            if time.monotonic() - refreshed > STATUS_REFRESH_S:
                try:
                    self.refresh()
                except (OSError, ValueError, KeyError):
                    pass  # the status file mid-rewrite: the next period reads it
                refreshed = time.monotonic()
            at = round(time.time(), 3)
            for name, pid in self.pids.items():
                component = "ztunnel" if name.startswith("ztunnel-") else name
                self.samples.append({"at": at, "component": component, "pid": pid,
                                     "fds": fd_count(pid) if component == "ztunnel" else 0, "rss_kib": rss_kib(pid)})

    def latest(self, component: str) -> dict | None:
        return next((s for s in reversed(self.samples) if s["component"] == component), None)


class Bystander:
    """bystander.py in the bystander pod's netns (our child, by pid), its requests read as they come."""

    def __init__(self, lab: Lab, netns: str, server_ip: str, stderr_path: Path) -> None:
        argv = ["ip", "netns", "exec", netns, lab.layout.python, str(ATTACKS_DIR / "bystander.py"),
                "--host", server_ip, "--port", str(ECHO_PORT), "--rate", f"{BYSTANDER_RATE:g}",
                "--seconds", f"{RUN_BOUND_S:g}"]
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        with stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
                                            text=True)
        self.reader = threading.Thread(target=self._read, name="bystander", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            with self.lock:
                self.requests.append(record)

    def snapshot(self) -> list[dict]:
        with self.lock:
            return list(self.requests)

    def wait_served(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(r["ok"] for r in self.snapshot()[-5:]):
                return
            time.sleep(0.2)  # the reader thread's list has no event of its own; bounded by the deadline
        raise BenchFailure(f"the bystander was not served within {timeout:g} s: {self.snapshot()[-5:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.reader.join(10)


class Run:
    def __init__(self, lab: Lab, status: dict, ips: dict, work: Path) -> None:
        self.lab, self.ips, self.work = lab, ips, work
        self.netns = {(p["namespace"], p["name"]): p["netns"] for p in status["pods"]}
        self.node_netns = {n["name"]: n["netns"] for n in status["nodes"]}
        self.target = ips[(MESH, "victim")]
        self.certs = work / "certs"
        self.sampler = Sampler(lab)
        self.bystander: Bystander | None = None
        self.notes: list[str] = []

    # -- setting up

    def mint_certificate(self) -> None:
        """A workload token from the lab's CA, then a key and chain through the CA's gRPC from the attacker
        pod (as any workload holding a token would)."""
        ca_dir = self.lab.layout.paths.controlplane / "ca"
        token = self.lab.ambient("ca", "token", "create", "--dir", str(ca_dir), "--identity", ATTACKER_IDENTITY,
                                 timeout=COMMAND_TIMEOUT_S).strip()
        self.certs.mkdir()
        argv = ["ip", "netns", "exec", self.netns[(PLAIN, "attacker")], self.lab.layout.python, "-m", "ambient",
                "ca", "request", "--server", self.lab.layout.ca_address, "--root", str(self.lab.layout.ca_root),
                "--identity", ATTACKER_IDENTITY, "--out", str(self.certs),
                "--server-name", self.lab.layout.ca_server_name]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                              env={**os.environ, "AMBIENT_CA_TOKEN": token})
        if done.returncode != 0:
            raise BenchFailure(f"`ambient ca request` exited {done.returncode}: {done.stderr.strip()[-1000:]}")

    def start(self) -> None:
        self.sampler.refresh()
        self.sampler.thread.start()
        self.bystander = Bystander(self.lab, self.netns[(MESH, "bystander")], self.ips[(MESH, "server")],
                                   self.work / "bystander.stderr")
        self.bystander.wait_served(30.0)

    def stop(self) -> None:
        if self.bystander is not None:
            self.bystander.stop()
        self.sampler.stop.set()
        self.sampler.thread.join(5)

    # -- the pieces of an attack

    def attacker(self, attack: str, *options: str, bound: float) -> dict:
        """attacker.py in the attacker pod's netns, killed if it outlives `bound` + ATTACK_SLACK_S; its
        last JSON line."""
        argv = ["ip", "netns", "exec", self.netns[(PLAIN, "attacker")], self.lab.layout.python,
                str(ATTACKS_DIR / "attacker.py"), attack, *options]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=bound + ATTACK_SLACK_S)
        except subprocess.TimeoutExpired:
            return {"error": f"the attacker did not end within {bound + ATTACK_SLACK_S:g} s (killed)"}
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            return {"error": f"exited {done.returncode}: {done.stderr.strip()[-1000:]}"}
        return json.loads(lines[-1])

    def hbone_options(self, *extra: str) -> list[str]:
        return ["--target", self.target, "--certs", str(self.certs), "--app-port", str(ECHO_PORT), *extra]

    def refused(self) -> dict[str, float]:
        """ambient_ztunnel_connections_refused_total of the target node's ztunnel, by its labels, scraped in
        the node's netns (metrics are not served to pods)."""
        argv = ["ip", "netns", "exec", self.node_netns[TARGET_NODE], "curl", "-sS", "--max-time", "5",
                "http://127.0.0.1:15020/metrics"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        out = {}
        for line in done.stdout.splitlines():
            if line.startswith(REFUSED):
                labels, _, value = line.rpartition(" ")
                out[labels[len(REFUSED):]] = float(value)
        return out

    def window(self, key: str, start: float, end: float, detail: dict) -> dict:
        time.sleep(SETTLE_S)  # the settle window: what ztunnel and the bystander do after the attack
        settled = time.time()
        assert self.bystander is not None
        samples = list(self.sampler.samples)
        record = {"key": key, "start": round(start, 3), "end": round(end, 3), "settled": round(settled, 3),
                  "detail": detail,
                  "ztunnel": report.component_window(samples, "ztunnel", start, settled),
                  "controlplane": report.component_window(samples, "controlplane", start, settled),
                  "daemon": report.component_window(samples, "daemon", start, settled),
                  "bystander": report.bystander_window(self.bystander.snapshot(), start, settled)}
        return record

    # -- the attacks

    def attack_1(self) -> dict:
        start = time.time()
        plain = self.attacker("loop-plain", "--target", self.target, "--seconds", "5", bound=5)
        hbone = self.attacker("loop-hbone", *self.hbone_options("--seconds", "10"), bound=10)
        time.sleep(2.0)  # the loop grew for 12 s: give a loop time to show in the fd samples
        return self.window("1-loop", start, time.time(), {"plain": plain, "hbone": hbone})

    def attack_2(self) -> dict:
        start = time.time()
        detail = self.attacker("continuation", *self.hbone_options("--count", str(CONTINUATION_FRAMES),
                                                                   "--seconds", "15"), bound=15)
        return self.window("2-continuation", start, time.time(), detail)

    def attack_3(self) -> dict:
        start = time.time()
        detail = self.attacker("rapid-reset", *self.hbone_options("--count", str(RAPID_RESETS), "--seconds", "20"),
                               bound=20)
        return self.window("3-rapid-reset", start, time.time(), detail)

    def attack_4(self) -> dict:
        """The issue's flood (64 KiB writes), then the same paced in small writes."""
        start = time.time()
        detail = self.attacker("ping-flood", *self.hbone_options("--count", str(PINGS), "--seconds",
                                                                 f"{PING_SECONDS:g}"), bound=PING_SECONDS + 15)
        paced = ("--count", str(PINGS), "--seconds", f"{PACED_PING_SECONDS:g}", "--batch", str(PACED_PING_BATCH),
                 "--pause", f"{PACED_PING_PAUSE_S:g}")
        detail["paced"] = self.attacker("ping-flood", *self.hbone_options(*paced), bound=PACED_PING_SECONDS + 15)
        return self.window("4-ping-flood", start, time.time(), detail)

    def attack_5(self) -> dict:
        pid = self.sampler.pids.get(f"ztunnel-{TARGET_NODE}")
        limit = fd_limit(pid) if pid else None
        node_cap = node_connection_cap(limit if limit is not None else -1)
        before = self.refused()
        start = time.time()
        detail = self.attacker("plain-flood", "--target", self.target, "--app-port", str(SINK_PORT),
                               "--count", str(PLAIN_CONNECTIONS), "--seconds", f"{PLAIN_OPEN_BOUND_S:g}",
                               "--hold", f"{PLAIN_HOLD_S:g}", bound=PLAIN_OPEN_BOUND_S + PLAIN_HOLD_S)
        end = time.time()
        after = self.refused()
        record = self.window("5-plaintext-inbound", start, end, detail)
        delta = {labels: after[labels] - before.get(labels, 0.0) for labels in after}
        record.update({"fd_limit": limit, "node_cap": node_cap, "pod_cap": pod_connection_cap(node_cap),
                       "refused_by_label": {k: v for k, v in delta.items() if v},
                       "refused": int(sum(delta.values()))})
        return record

    def attack_7(self) -> dict:
        config = self.lab.layout.config_dir
        logs = [self.lab.layout.paths.daemon_log, self.lab.layout.paths.logs / "controlplane.log"]
        offsets = {log: log.stat().st_size if log.exists() else 0 for log in logs}
        bomb = config / "bomb.yaml"
        start = time.time()
        bomb.write_text(BOMB)
        aborted = None
        try:
            while time.time() - start < YAML_BOMB_WATCH_S:
                time.sleep(SAMPLE_PERIOD_S)  # watching RSS: the sampler's period
                for name in ("controlplane", "daemon"):
                    latest = self.sampler.latest(name)
                    if latest and latest["rss_kib"] > YAML_BOMB_ABORT_KIB:
                        aborted = f"{name} passed {YAML_BOMB_ABORT_KIB // 1024} MiB: the bomb was removed at once"
                if aborted:
                    break
        finally:
            bomb.unlink(missing_ok=True)
        end = time.time()
        findings = []
        for log in logs:
            if log.exists():
                with log.open("rb") as f:
                    f.seek(offsets[log])
                    text = f.read(4 * 1024 * 1024).decode(errors="replace")
                findings += [f"{log.name}: {line.strip()[:300]}" for line in text.splitlines() if "bomb.yaml" in line]
        record = self.window("7-yaml-bomb", start, end, {"bytes": len(BOMB.encode()), "aborted": aborted})
        record.update({"findings": findings[:10], "watch_s": round(end - start, 1)})
        return record

    def attack_8(self) -> dict:
        policy = self.lab.layout.config_dir / "allow-bystander.yaml"
        served_before = self.attacker("probe", "--target", self.ips[(MESH, "server")], "--app-port", str(ECHO_PORT),
                                      bound=10)
        start = time.time()
        try:
            policy.write_text(POLICY_HEAD)  # the editor's first save: no rules yet
            time.sleep(HALF_WRITTEN_PAUSE_S)  # the interval between the two saves
            policy.write_text(POLICY_HEAD + POLICY_RULES)
            time.sleep(HALF_WRITTEN_WATCH_S)  # the bystander's requests are what is measured meanwhile
            end = time.time()
            # The policy allows only mesh/default: the plain attacker (no identity) must now be denied.
            served_after = self.attacker("probe", "--target", self.ips[(MESH, "server")], "--app-port",
                                         str(ECHO_PORT), bound=10)
        finally:
            policy.unlink(missing_ok=True)
        record = self.window("8-half-written", start, end, {"probe_before": served_before,
                                                            "probe_after": served_after})
        record["policy_applied"] = served_before.get("served") is True and served_after.get("served") is False
        return record


def log_size(log: Path) -> int:
    return log.stat().st_size if log.exists() else 0


def warnings_since(log: Path, offset: int) -> dict:
    """The WARNING and ERROR lines a component logged after `offset` (access-log lines are JSON and
    skipped): how many, and the first few."""
    if not log.exists():
        return {"count": 0, "first": []}
    with log.open("rb") as f:
        f.seek(offset)
        text = f.read(LOG_READ_BYTES).decode(errors="replace")
    lines = [line.strip() for line in text.splitlines()
             if not line.startswith("{") and (" WARNING " in line or " ERROR " in line)]
    return {"count": len(lines), "first": [line[:300] for line in lines[:LOG_LINES_KEPT]]}


def run(args: argparse.Namespace, lab: Lab, work: Path) -> dict:
    layout = lab.layout
    layout.config_dir.mkdir()
    docs = manifests(layout)
    ips = planned_ips(docs, LAB)
    (layout.config_dir / "pods.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    lab_up_s = lab.up(nodes=2, ready_timeout=READY_TIMEOUT_S)
    status = check_lab(lab, ips)
    print(f"lab up in {lab_up_s:.0f} s; target {ips[(MESH, 'victim')]} on {TARGET_NODE}", flush=True)
    attack = Run(lab, status, ips, work)
    attack.mint_certificate()
    records = []
    try:
        attack.start()
        ztunnel_log = layout.paths.component_log(f"ztunnel-{TARGET_NODE}")
        for key in ATTACK_KEYS:
            if key in args.only:
                offset = log_size(ztunnel_log)
                record = getattr(attack, f"attack_{key}")()
                record["ztunnel_warnings"] = warnings_since(ztunnel_log, offset)
                record["verdict"] = report.verdict(record)
                records.append(record)
                print(f"{record['key']}: {report.after_figure(record)} -> "
                      f"{'PASS' if record['verdict']['pass'] else 'FAIL'}", flush=True)
                if (record.get("detail") or {}).get("aborted"):
                    break
    finally:
        attack.stop()
    final = lab.status()
    restarts = {c["name"]: c["restarts"] for node in final["nodes"] for c in node["components"]}
    return {"lab_up_s": round(lab_up_s, 1), "ips": {f"{ns}/{name}": ip for (ns, name), ip in ips.items()},
            "attacks": records, "notes": attack.notes, "restarts": restarts,
            "controlplane_restarts": final["controlplane"]["restarts"],
            "bystander_requests": attack.bystander.snapshot() if attack.bystander else [],
            "samples": list(attack.sampler.samples)}


def main() -> int:
    args = parse_args()
    problem = preflight()
    if problem:
        print(problem, file=sys.stderr)
        return 1
    exit_on_sigterm()
    started = time.monotonic()
    stem = f"{dt.date.today().isoformat()}-attacks"
    lab, work = temporary_lab(LAB)
    with lab_session(lab, work, ("ztunnel-node-*.log", "controlplane.log", "lab.log")):
        measured = run(args, lab, work)
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "code": code_state(REPO),
        "parameters": {"lab": LAB, "target_node": TARGET_NODE, "attacker_node": ATTACKER_NODE, "only": args.only,
                       "continuation_frames": CONTINUATION_FRAMES, "rapid_resets": RAPID_RESETS, "pings": PINGS,
                       "ping_seconds": PING_SECONDS,
                       "paced_ping_batch": PACED_PING_BATCH, "paced_ping_pause_s": PACED_PING_PAUSE_S,
                       "paced_ping_seconds": PACED_PING_SECONDS, "plain_connections": PLAIN_CONNECTIONS,
                       "plain_hold_s": PLAIN_HOLD_S, "yaml_bomb_watch_s": YAML_BOMB_WATCH_S,
                       "half_written_pause_s": HALF_WRITTEN_PAUSE_S, "settle_s": SETTLE_S,
                       "bystander_rate": BYSTANDER_RATE, "sample_period_s": SAMPLE_PERIOD_S,
                       "thresholds": {"max_bystander_gap_s": report.MAX_BYSTANDER_GAP_S,
                                      "max_fd_growth": report.MAX_FD_GROWTH,
                                      "max_rss_growth_mib": report.MAX_RSS_GROWTH_MIB,
                                      "max_yaml_rss_growth_mib": report.MAX_YAML_RSS_GROWTH_MIB}},
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
    return 0 if all(r["verdict"]["pass"] for r in result["attacks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
