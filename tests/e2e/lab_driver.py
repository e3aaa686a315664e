"""Driving labs from tests, through the commands a user types: ``ambient lab up/status/logs/down`` and
``ambient exec`` as subprocesses, each lab with its own YAML directory, name and state root; and
what the machine looks like, read independently of the lab's code (/proc, /var/run/netns, cgroups)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "samples"
COMMAND_TIMEOUT = 120

# "mesh" is in the mesh (ambient), "plain" is not.
NAMESPACES = """
apiVersion: v1
kind: Namespace
metadata: {name: mesh, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
"""

# Service "server" in "mesh", in front of an echo_pod named "server" (port 80 → its 8080).
SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: server, namespace: mesh}
spec:
  selector: {app: server}
  ports: [{name: http, port: 80, targetPort: http}]
"""


def echo_pod(namespace: str, name: str, node: str) -> str:
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}, labels: {{app: {name}}}}}
spec:
  nodeName: {node}
  containers:
  - name: echo
    command: [python3, echo_server.py, --port, "8080"]
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe:
      httpGet: {{path: /healthz, port: http}}
      periodSeconds: 1
"""


def client_pod(namespace: str, name: str, node: str) -> str:
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  nodeName: {node}
  containers:
  - name: client
    command: [sleep, infinity]
"""


class Lab:
    """One lab's commands, with its own state root."""

    def __init__(self, name: str, config_dir: Path, state_root: Path) -> None:
        self.name, self.config_dir, self.state_root = name, config_dir, state_root

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, "AMBIENT_LAB_ROOT": str(self.state_root)}
        result = subprocess.run([sys.executable, "-m", "ambient", *args], capture_output=True, text=True, env=env,
                                timeout=COMMAND_TIMEOUT)
        if check and result.returncode != 0:
            pytest.fail(f"ambient {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def up(self, nodes: int = 2, ztunnel: bool = True) -> subprocess.CompletedProcess:
        return self.run("lab", "up", str(self.config_dir), "--name", self.name, "--nodes", str(nodes),
                        *(() if ztunnel else ("--no-ztunnel",)))

    def down(self) -> subprocess.CompletedProcess:
        return self.run("lab", "down", "--name", self.name)

    def status(self) -> dict:
        return json.loads(self.run("lab", "status", "--name", self.name, "-o", "json").stdout)

    def pod(self, namespace: str, name: str) -> dict:
        (pod,) = [p for p in self.status()["pods"] if (p["namespace"], p["name"]) == (namespace, name)]
        return pod

    def exec(self, pod: str, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("exec", "--name", self.name, pod, "--", *command, check=check)

    def get(self, client: str, ip: str, path: str = "/") -> dict:
        out = self.exec(client, "curl", "-sS", "--max-time", "10", f"http://{ip}:8080{path}").stdout
        return json.loads(out)

    def wait_for(self, predicate, what: str, timeout: float = 30.0) -> dict:
        """The status once ``predicate(status)`` holds; re-checked each time status.json changes
        (its content: two rewrites can share inode number, size and mtime)."""
        path = self.state_root / self.name / "status.json"
        deadline = time.monotonic() + timeout
        seen, status = None, None
        while time.monotonic() < deadline:
            content = path.read_bytes()
            if content != seen:
                seen = content
                status = json.loads(content)
                if predicate(status):
                    return status
            time.sleep(0.02)  # a file has no change event here; bounded by the deadline
        pytest.fail(f"lab {self.name}: {what} did not happen within {timeout:g} s; last status {status}")


def new_lab(root: Path, documents: list[str], suffix: str = "") -> Lab:
    """A lab with a unique name under ``root``: its YAML directory holds ``documents`` (as apps.yaml)
    and the echo server; nothing runs until ``up``."""
    name = f"t{uuid.uuid4().hex[:6]}{suffix}"
    config = root / name / "config"
    config.mkdir(parents=True)
    shutil.copy(SAMPLES / "echo_server.py", config)
    (config / "apps.yaml").write_text("---".join(documents))
    return Lab(name, config, root / name / "state")


def find_pod(status: dict, namespace: str, name: str) -> dict | None:
    return next((p for p in status["pods"] if (p["namespace"], p["name"]) == (namespace, name)), None)


def lab_netns_inodes(lab_name: str) -> set[int]:
    prefix = f"amb-{lab_name}."
    return {os.stat(f"/var/run/netns/{n}").st_ino for n in os.listdir("/var/run/netns") if n.startswith(prefix)}


def living_processes() -> dict[int, tuple[str, int | None]]:
    """pid -> (cmdline, netns inode) of every process that is not a zombie (PID 1 here reaps nothing)."""
    processes = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        try:
            netns = os.stat(f"/proc/{entry}/ns/net").st_ino
        except PermissionError:  # a process outside this container (PID 1 of the sandbox)
            netns = None
        except (FileNotFoundError, ProcessLookupError):
            continue
        processes[int(entry)] = (cmdline, netns)
    return processes


def netns_names() -> set[str]:
    return set(os.listdir("/var/run/netns")) if os.path.isdir("/var/run/netns") else set()


def without_other_labs(names: set[str], lab_name: str) -> set[str]:
    """``names`` (netns or cgroups) less those of other labs (``amb-<other lab>.``): tests that run
    beside this one, by other hands, make and remove labs of their own meanwhile."""
    return {n for n in names if not n.startswith("amb-") or "." not in n or n.startswith(f"amb-{lab_name}.")}


def cgroup_dirs() -> set[str]:
    from lab.processes import find_cgroup2_root

    return {p.name for p in find_cgroup2_root().iterdir() if p.is_dir()}
