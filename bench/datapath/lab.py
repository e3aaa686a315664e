"""The bench's lab: where it lives, how to drive it, and what its proxies cost.

`LabLayout` (frozen, built once at the edge) names everything that is known before `lab up`: the
lab's name, its private state root (AMBIENT_LAB_ROOT), the YAML directory (also every container's
working directory, so the proxies' and nginx's config files live there), the control plane's CA
address, the root certificate and each node's token that the lab gives its ztunnels
(`lab.components`), and the cgroup of every container or component. `Lab` adds the I/O:
`ambient lab up/status/down`, commands in a pod (`ambient exec`), copying the logs on a failure.

The proxies' cost is read from the kernel, never from the proxies: CPU time from a cgroup's
`cpu.stat` (`usage_usec`, every thread of every process in it), memory as the sum of VmRSS of the
processes in the cgroup (`/proc/<pid>/status`). Each container and each lab component has its own
cgroup (`lab.processes.process_cgroup`); `ambient exec` joins a pod's *first* container, so the
paths put the proxy after the app in every pod and the load generator never counts as the proxy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ca.store import ROOT_CERT
from ca.tokens import TOKEN_FILE
from controlplane.server import CA_SUBDIR
from lab.components import CONTROLPLANE_PORT, CONTROLPLANE_SERVER_NAME, waypoint_name, ztunnel_name
from lab.processes import process_cgroup
from lab.state import LabPaths
from lab.topology import CONTROL_PLANE_ADDRESS
from lab.workloads import container_process_name

COMMAND_TIMEOUT = 120.0  # lab status, down; an exec'd command has its own bound
LOG_TAIL_LINES = 30
NODES = ("node-0", "node-1")  # clients on node-0, servers on node-1


class BenchFailure(RuntimeError):
    """A load run failed (refused, errors, timeout) or the lab misbehaved."""


@dataclass(frozen=True)
class LabLayout:
    name: str
    state_root: Path  # AMBIENT_LAB_ROOT: the lab's state is state_root/name
    config_dir: Path  # the YAML directory; the containers' working directory
    python: str = sys.executable  # runs `-m ambient` (in the lab's containers too)

    @property
    def paths(self) -> LabPaths:
        return LabPaths.of(self.name, self.state_root)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "AMBIENT_LAB_ROOT": str(self.state_root)}

    # What the lab gives each ztunnel to reach the CA (lab.components.node_processes).
    @property
    def ca_address(self) -> str:
        return f"{CONTROL_PLANE_ADDRESS.ip}:{CONTROLPLANE_PORT}"

    @property
    def ca_server_name(self) -> str:
        return CONTROLPLANE_SERVER_NAME

    @property
    def ca_root(self) -> Path:
        return self.paths.controlplane / CA_SUBDIR / ROOT_CERT

    def node_token(self, node: str) -> Path:
        return self.paths.node_dir(node) / "token"

    # What the bench hands its own proxies (stunnel, haproxy) in the YAML directory, which pods see:
    # the lab's state (root certificate, node tokens) is hidden from pods (lab.isolation).
    @property
    def pod_secrets(self) -> Path:
        return self.config_dir / ".bench-secrets"

    @property
    def pod_ca_root(self) -> Path:
        return self.pod_secrets / ROOT_CERT

    def pod_token(self, namespace: str) -> Path:
        return self.pod_secrets / f"{namespace}.token"

    def container_cgroup(self, namespace: str, pod: str, container: str) -> Path:
        return process_cgroup(self.name, container_process_name(namespace, pod, container))

    def ztunnel_cgroup(self, node: str) -> Path:
        return process_cgroup(self.name, ztunnel_name(node))

    def waypoint_cgroup(self, namespace: str, gateway: str) -> Path:
        """The waypoint proxy's cgroup: the lab runs it as a component (`lab.components.waypoint_processes`)."""
        return process_cgroup(self.name, waypoint_name(namespace, gateway))


# -- the kernel's accounting


def cgroup_pids(cgroup: Path) -> list[int]:
    """Every process in `cgroup` and its descendants."""
    pids = []
    for procs in sorted(cgroup.rglob("cgroup.procs")):
        try:
            pids += [int(pid) for pid in procs.read_text().split()]
        except FileNotFoundError:  # a child cgroup that went away
            continue
    return pids


def cgroup_cpu_usec(cgroup: Path) -> int:
    """CPU time (user + system) of everything that ever ran in `cgroup`, in microseconds."""
    for line in (cgroup / "cpu.stat").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value)
    raise BenchFailure(f"{cgroup}/cpu.stat has no usage_usec")


def _proc_kib(pid: int, file: str, field: str) -> int:
    """The KiB of `field` ("VmRSS:") in /proc/<pid>/<file>; 0 if the process is gone or has none."""
    try:
        text = Path(f"/proc/{pid}/{file}").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    for line in text.splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def rss_kib(pid: int) -> int:
    """VmRSS of one process in KiB; 0 if it is gone or a kernel thread."""
    return _proc_kib(pid, "status", "VmRSS:")




def pss_kib(pid: int) -> int:
    """Pss of one process in KiB (its private pages, plus each shared page divided by the processes
    mapping it: shared library text counts once per node, not once per process); 0 if it is gone."""
    return _proc_kib(pid, "smaps_rollup", "Pss:")


def cgroup_kib(cgroup: Path, per_process=rss_kib) -> int:
    """`per_process` (`rss_kib` or `pss_kib`) summed over every process in `cgroup` (a container's
    processes, a component's)."""
    return sum(per_process(pid) for pid in cgroup_pids(cgroup))


_MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$")


def rss_by_mapping(smaps: str) -> dict[str, int]:
    """Resident KiB of a process by what is mapped (pure, from /proc/<pid>/smaps): each file by its
    name, and "anonymous" for the heap, stacks and anonymous memory (Python's objects)."""
    out: dict[str, int] = {}
    name = "anonymous"
    for line in smaps.splitlines():
        mapping = _MAPPING.match(line)
        if mapping:
            path = mapping[1]
            name = path.rsplit("/", 1)[-1] if path.startswith("/") else "anonymous"
        elif line.startswith("Rss:"):
            out[name] = out.get(name, 0) + int(line.split()[1])
    return out


def process_rss_by_mapping(pid: int) -> dict[str, int]:
    try:
        return rss_by_mapping(Path(f"/proc/{pid}/smaps").read_text())
    except (FileNotFoundError, ProcessLookupError):
        return {}


# -- driving the lab


class Lab:
    def __init__(self, layout: LabLayout) -> None:
        self.layout = layout
        self.started = False  # set before `lab up` runs: from then on, always `lab down`

    def ambient(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> str:
        argv = [self.layout.python, "-m", "ambient", *args]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, env=self.layout.env, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchFailure(f"`ambient {' '.join(args)}` did not end within {timeout:g} s") from None
        if done.returncode != 0:
            raise BenchFailure(f"`ambient {' '.join(args)}` exited {done.returncode}:\n{done.stdout}{done.stderr}")
        return done.stdout

    def up(self, nodes: int = 2, ready_timeout: float = 90.0, workload_tokens: tuple[str, ...] = ()) -> float:
        """`ambient lab up`; returns its wall time in seconds (it returns once every pod is ready).

        ``workload_tokens``: SPIFFE IDs whose pods obtain their own certificate (the bench's stunnel and
        haproxy). Once the lab's CA exists, a workload token for each (``ambient ca token create``) and the
        root certificate are put in ``pod_secrets``, where those pods wait for them."""
        self.started = True
        start = time.perf_counter()
        argv = [self.layout.python, "-m", "ambient", "lab", "up", str(self.layout.config_dir), "--name",
                self.layout.name, "--nodes", str(nodes), "--timeout", f"{ready_timeout:g}"]
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=self.layout.env) as up:
            try:
                if workload_tokens:
                    self._hand_out_tokens(workload_tokens, deadline=time.monotonic() + ready_timeout)
                output, _ = up.communicate(timeout=ready_timeout + 60)
            except BaseException:
                up.kill()
                raise
        if up.returncode != 0:
            raise BenchFailure(f"`ambient lab up` exited {up.returncode}:\n{output}")
        return time.perf_counter() - start

    def _hand_out_tokens(self, identities: tuple[str, ...], deadline: float) -> None:
        ca_dir = self.layout.ca_root.parent
        while not (ca_dir / TOKEN_FILE).exists() or not self.layout.ca_root.exists():  # the CA is being made
            if time.monotonic() > deadline:
                raise BenchFailure(f"the lab's CA did not appear in {ca_dir}")
            time.sleep(0.1)
        secrets = self.layout.pod_secrets
        secrets.mkdir(mode=0o700, exist_ok=True)
        shutil.copyfile(self.layout.ca_root, self.layout.pod_ca_root)
        for identity in identities:
            token = self.ambient("ca", "token", "create", "--dir", str(ca_dir), "--identity", identity).strip()
            namespace = identity.split("/ns/", 1)[1].split("/", 1)[0]
            path = self.layout.pod_token(namespace)
            path.write_text(token + "\n")
            path.chmod(0o600)

    def status(self) -> dict:
        return json.loads(self.ambient("lab", "status", "--name", self.layout.name, "-o", "json"))

    def exec_argv(self, namespace: str, pod: str, *command: str) -> list[str]:
        """argv that runs `command` in the pod's netns and its first container's cgroup."""
        return [self.layout.python, "-m", "ambient", "exec", "--name", self.layout.name, f"{namespace}/{pod}", "--",
                *command]

    def run_in(self, namespace: str, pod: str, *command: str, timeout: float) -> str:
        """Run `command` in a pod, bounded by `timeout`; its stdout, or BenchFailure."""
        argv = self.exec_argv(namespace, pod, *command)
        try:
            done = subprocess.run(argv, capture_output=True, text=True, env=self.layout.env, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchFailure(f"`{' '.join(command)}` in {namespace}/{pod} did not end within {timeout:g} s") \
                from None
        if done.returncode != 0:
            raise BenchFailure(f"`{' '.join(command)}` in {namespace}/{pod} exited {done.returncode}: "
                               f"{(done.stderr or done.stdout).strip()[-2000:]}")
        return done.stdout

    def save_logs(self, tails: tuple[str, ...] = ("ztunnel-node-*.log", "waypoint-*.log", "pods/*_stunnel.log",
                                                  "pods/*_haproxy.log")
                  ) -> Path | None:
        """Copy the lab's logs before `lab down` removes them; print the end of the proxies' logs."""
        logs = self.layout.paths.logs
        if not logs.is_dir():
            return None
        kept = Path(tempfile.mkdtemp(prefix=f"ambient-{self.layout.name}-logs-"))
        shutil.copytree(logs, kept, dirs_exist_ok=True)
        for pattern in tails:
            for log in sorted(kept.glob(pattern)):
                lines = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
                if lines:
                    print(f"--- the end of {log.relative_to(kept)}:", *lines, sep="\n", file=sys.stderr)
        return kept

    def down(self) -> bool:
        """`ambient lab down`; if that fails, SIGTERM to the lab's daemon (its pid from lab.json, checked
        against its command line), which stops its processes and removes its network. True when the lab
        is gone."""
        try:
            self.ambient("lab", "down", "--name", self.layout.name)
            return True
        except BenchFailure as exc:
            print(f"`ambient lab down` failed: {exc}", file=sys.stderr)
        name = self.layout.name
        try:
            pid = json.loads(self.layout.paths.record.read_text())["pid"]
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, KeyError):
            pid, cmdline = None, []
        if pid and b"lab" in cmdline and name.encode() in cmdline:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 60
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)  # not our child: no wait(); bounded by the deadline
        netns_dir = "/var/run/netns"
        left = [n for n in (os.listdir(netns_dir) if os.path.isdir(netns_dir) else []) if n.startswith(f"amb-{name}.")]
        gone = not (pid and _alive(pid)) and not left
        print(f"the lab's daemon {'stopped' if gone else 'did not stop'} on SIGTERM; namespaces left: {left or 'none'}",
              file=sys.stderr)
        return gone


def _alive(pid: int) -> bool:
    """Running, not a zombie (the lab's daemon is not our child, so nothing here reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def ztunnel_pids(status: dict) -> dict[str, int]:
    """{"ztunnel-node-0": pid, ...} from `lab status -o json`."""
    pids = {c["name"]: c["pid"] for node in status["nodes"] for c in node["components"]
            if c["name"].startswith("ztunnel-")}
    if sorted(pids) != [ztunnel_name(n) for n in NODES] or not all(pids.values()):
        raise BenchFailure(f"expected the ztunnels of {', '.join(NODES)} with their pids, got {pids}")
    return pids


def only_pid(cgroup: Path) -> int:
    """The one process of a component's cgroup (a waypoint's proxy), or BenchFailure."""
    pids = cgroup_pids(cgroup)
    if len(pids) != 1:
        raise BenchFailure(f"expected one process in {cgroup}, found {pids}")
    return pids[0]


def container_pids(status: dict) -> dict[str, int | None]:
    """{"namespace/pod/container": pid} of every container, to notice a restart during the run."""
    return {container_process_name(p["namespace"], p["name"], c["name"]): c["pid"]
            for p in status["pods"] for c in p["containers"]}


# -- what every lab bench does around its run


MESH_SOURCES = ("ztunnel", "waypoint", "mesh", "ca", "bpf", "hbone", "controlplane", "lab")


def code_state(repo: Path, sources: tuple[str, ...] = MESH_SOURCES) -> dict:
    """The commit measured, and the files of the mesh that differ from it (what runs is the working
    tree's)."""
    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""
    changed = git("status", "--porcelain", "--", *sources)
    return {"commit": git("rev-parse", "HEAD") or None,
            "modified": [line[3:] for line in changed.splitlines()]}


@contextmanager
def lab_session(lab: Lab, work: Path, logs: tuple[str, ...] | None = None) -> Iterator[Lab]:
    """Run a bench's lab: on a failure its logs (``logs``: glob patterns, None for all) are copied and
    their place printed; at the end the lab is taken down and ``work`` removed, or what is left said."""
    try:
        yield lab
    except BaseException as exc:
        if lab.started:
            kept = lab.save_logs(logs) if logs is not None else lab.save_logs()
            if kept:
                print(f"{type(exc).__name__}: {exc}\nthe lab's logs are kept in {kept}", file=sys.stderr)
        raise
    finally:
        if not lab.started or lab.down():
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"the lab may still be running: `AMBIENT_LAB_ROOT={lab.layout.state_root} ambient lab down "
                  f"--name {lab.layout.name}`, then remove {work}", file=sys.stderr)


def lab_preflight(repo: Path, tools: Iterable[str], also_missing: Iterable[str] = (), hint: str = "") -> str | None:
    """Why a lab bench cannot run on this machine (not root, no eBPF object, tools not on PATH or
    ``also_missing``), or None. ``hint`` follows the list of what is missing (how to install it)."""
    if os.geteuid() != 0:
        return "the lab needs root"
    if not (repo / "bpf" / "capture.bpf.o").is_file():
        return "needs bpf/capture.bpf.o (`make bpf`)"
    missing = [tool for tool in tools if shutil.which(tool) is None] + list(also_missing)
    return f"missing: {', '.join(missing)}{hint}" if missing else None


def exit_on_sigterm() -> None:
    """SIGTERM ends the bench through its finally blocks, as Ctrl-C does: its processes end, the lab
    goes down."""
    def terminate(signum, frame) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)


def temporary_lab(name: str) -> tuple[Lab, Path]:
    """A lab whose state and YAML directory live in a new temporary directory (returned: remove it
    after, as ``lab_session`` does)."""
    work = Path(tempfile.mkdtemp(prefix=f"ambient-{name}-"))
    return Lab(LabLayout(name, work / "state", work / "config")), work
