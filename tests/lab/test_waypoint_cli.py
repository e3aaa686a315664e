"""`ambient waypoint apply|list|delete|status` over a configuration directory (no root, no lab
processes: a running lab is its lock held and its status.json written)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ambient.cli import main
from lab import cli as lab_cli
from lab.admin_client import ConfigFetchError, NetnsAccessError
from lab.state import LabLock, LabPaths, write_record
from lab.waypoint_cli import (
    FETCH_TIMEOUT,
    MIN_FETCH_TIMEOUT,
    POLL_INTERVAL,
    Target,
    wait_usable,
    workload_gap,
    ztunnel_nodes,
)
from mesh import resources as r
from mesh.parse import parse_paths

NAMESPACE_FILE = """\
# The shop's namespace: enrolled.
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    istio.io/dataplane-mode: ambient   # every pod
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{port: 80}]
"""
USER_GATEWAY = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: mine, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"""


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.setenv("AMBIENT_LAB_ROOT", str(tmp_path / "labs"))  # no lab unless a test starts one
    # Labs are also found by their netns and cgroups: another lab on this machine is not this test's.
    monkeypatch.setattr("lab.state._names_from_netns", lambda: set())
    monkeypatch.setattr("lab.state._names_from_cgroups", lambda: set())
    directory = tmp_path / "config"
    directory.mkdir()
    return directory


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["waypoint", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def resources(directory):
    result = parse_paths([directory])
    assert not result.errors, result.errors
    return result.resources


def gateways(directory) -> dict[tuple[str, str], r.Gateway]:
    return {(g.meta.namespace, g.meta.name): g for g in resources(directory) if isinstance(g, r.Gateway)}


def namespace_labels(directory, name: str) -> dict[str, str]:
    (ns,) = [n for n in resources(directory) if isinstance(n, r.Namespace) and n.meta.name == name]
    return dict(ns.meta.labels)


def test_apply_writes_istioctl_s_gateway_and_applying_again_updates_it(config, capsys):
    code, out, _ = run(capsys, "apply", "-n", "shop", "--for", "workload", "--config", str(config))
    assert code == 0 and out == "✅ waypoint shop/waypoint applied\n"
    gateway = gateways(config)[("shop", "waypoint")]
    assert gateway.is_waypoint and gateway.gateway_class == "istio-waypoint"
    assert [(lis.name, lis.port, lis.protocol) for lis in gateway.listeners] == [("mesh", 15008, "HBONE")]
    assert dict(gateway.meta.labels) == {"istio.io/waypoint-for": "workload"}
    assert (config / "waypoint.shop.waypoint.yaml").exists()
    # Again, as istioctl's server-side apply: what it owns is replaced, no --overwrite needed.
    assert run(capsys, "apply", "-n", "shop", "--for", "all", "--config", str(config))[0] == 0
    assert dict(gateways(config)[("shop", "waypoint")].meta.labels) == {"istio.io/waypoint-for": "all"}
    assert run(capsys, "apply", "-n", "shop", "--config", str(config))[0] == 0
    assert dict(gateways(config)[("shop", "waypoint")].meta.labels) == {}  # the default comes from istiod
    assert sorted(p.name for p in config.iterdir()) == ["waypoint.shop.waypoint.yaml"]  # no temporary left


def test_apply_leaves_a_waypoint_declared_in_a_user_s_file_alone(config, capsys):
    (config / "mesh.yaml").write_text(USER_GATEWAY)
    code, out, err = run(capsys, "apply", "-n", "shop", "--name", "mine", "--config", str(config))
    assert code == 1 and out == ""
    assert err == (f"ambient: error: Gateway shop/mine is declared in {config / 'mesh.yaml'} (line 1), which this "
                   "command did not write: change it there\n")
    assert sorted(p.name for p in config.iterdir()) == ["mesh.yaml"]


@pytest.mark.parametrize("argv, message", [
    (("--for", "bogus"), "invalid traffic type: bogus. Valid options are: [all none service workload]"),
    (("--name", "none"), "invalid name provided for waypoint, 'none' is a reserved value"),
    (("-n", "Shop"), "--namespace 'Shop' is not a valid Kubernetes name"),
])
def test_bad_flags_are_one_line_and_exit_1(config, capsys, argv, message):
    assert run(capsys, "apply", *argv, "--config", str(config)) == (1, "", f"ambient: error: {message}\n")
    assert list(config.iterdir()) == []


def test_without_a_lab_or_a_directory_the_command_says_what_to_do(config, capsys):
    code, _, err = run(capsys, "list")
    assert code == 1 and err == ("ambient: error: no lab is running; start one with `ambient lab up DIR`, "
                                 "or name a configuration directory with --config DIR\n")


def test_enroll_namespace_writes_only_the_label_into_the_user_s_namespace_document(config, capsys):
    (config / "shop.yaml").write_text(NAMESPACE_FILE)
    code, out, _ = run(capsys, "apply", "-n", "shop", "--enroll-namespace", "--config", str(config))
    assert code == 0
    assert out == ('✅ waypoint shop/waypoint applied\n'
                   '✅ namespace shop labeled with "istio.io/use-waypoint: waypoint"\n')
    assert (config / "shop.yaml").read_text() == NAMESPACE_FILE.replace(
        "# every pod\n", "# every pod\n    istio.io/use-waypoint: waypoint\n")
    assert namespace_labels(config, "shop") == {"istio.io/dataplane-mode": "ambient",
                                                 "istio.io/use-waypoint": "waypoint"}
    # Another waypoint for the namespace: istioctl warns and applies nothing without --overwrite.
    code, out, _ = run(capsys, "apply", "-n", "shop", "--name", "other", "--enroll-namespace", "--config", str(config))
    assert code == 0 and out == ("⚠️ Warning: namespace (shop) already has an enrolled Waypoint. Consider adding the "
                                 "`--overwrite` flag to your apply command.\n")
    assert ("shop", "other") not in gateways(config)
    code, _, _ = run(capsys, "apply", "-n", "shop", "--name", "other", "--enroll-namespace", "--overwrite",
                     "--config", str(config))
    assert code == 0 and namespace_labels(config, "shop")["istio.io/use-waypoint"] == "other"
    assert ("shop", "other") in gateways(config)


def test_enroll_namespace_declares_a_namespace_no_file_declares_and_warns_it_is_not_ambient(config, capsys):
    code, out, _ = run(capsys, "apply", "-n", "shop", "--enroll-namespace", "--config", str(config))
    assert code == 0 and out.startswith("⚠️ Warning: namespace is not enrolled in ambient. Consider running\t"
                                        "`kubectl label namespace shop istio.io/dataplane-mode=ambient`\n")
    assert namespace_labels(config, "shop") == {"istio.io/use-waypoint": "waypoint"}
    assert (config / "namespace.shop.yaml").exists()


def test_enroll_namespace_refuses_an_edit_it_cannot_make_safely(config, capsys):
    text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels: !!null\n"
    (config / "shop.yaml").write_text(text)
    code, _, err = run(capsys, "apply", "-n", "shop", "--enroll-namespace", "--config", str(config))
    assert code == 1 and "add `istio.io/use-waypoint: waypoint` to metadata.labels of Namespace shop" in err
    assert err.count("\n") == 1 and (config / "shop.yaml").read_text() == text


def start_lab(tmp_path, config, waypoints: list[dict], nodes: list[dict] | None = None) -> LabLock:
    """A lab as the commands see one: its lock held, its record and status.json written (with
    ``nodes``, entries of ``lab_node``; none: no node runs a ztunnel to ask)."""
    paths = LabPaths.of("ambient", tmp_path / "labs")
    lock = LabLock(paths)
    lock.acquire()
    write_record(paths, {"name": "ambient", "config_dir": str(config), "pid": 1})
    pods = [{"namespace": w["namespace"], "name": f"{w['name']}-waypoint", "ready": "1/1" if w["ready"] else "0/1",
             "all_ready": w["ready"], "state": "Running", "message": None if w["ready"] else w.get("why"),
             "node": "node-0", "ip": w.get("ip", WAYPOINT_IP)}
            for w in waypoints]
    paths.status.write_text(json.dumps({"lab": "ambient", "config_dir": str(config), "pods": pods,
                                        "nodes": nodes or []}))
    return lock


WAYPOINT_IP = "10.244.0.7"


def lab_node(name: str, ztunnel: bool = True) -> dict:
    """A node entry of the lab's status; ``lab up --no-ztunnel`` runs only the node agent."""
    components = [f"node-agent-{name}", *([f"ztunnel-{name}"] if ztunnel else [])]
    return {"name": name, "netns": f"amb-ambient.{name}",
            "components": [{"name": c, "state": "running"} for c in components]}


def dump_listing(status: str | None, ip: str = WAYPOINT_IP, namespace: str = "shop") -> dict:
    """A ztunnel's /config_dump (ztunnel/dump.py's shape) that lists the waypoint pod with ``status``
    (None: does not list it), beside a workload of another namespace with the same name."""
    other = {"uid": "Kubernetes//Pod/else/waypoint-waypoint", "name": "waypoint-waypoint", "namespace": "else",
             "workloadIps": [ip], "status": "Healthy"}
    mine = {"uid": f"Kubernetes//Pod/{namespace}/waypoint-waypoint", "name": "waypoint-waypoint",
            "namespace": namespace, "workloadIps": [ip], "status": status}
    return {"workloads": [other, *([mine] if status is not None else [])], "services": []}


class FakeZtunnels:
    """The nodes' ztunnels as the wait sees them: per node, the answers to its successive fetches
    (a dump, or an exception to raise); the last answer repeats. A fake clock that only ``sleep``
    moves, so that a wait's rounds and its deadline are exact, with no real time passing."""

    def __init__(self, monkeypatch, answers: dict[str, list]):
        self.answers = answers
        self.asked: list[tuple[str, float]] = []
        self.now = 0.0
        self.slept: list[float] = []
        monkeypatch.setattr("lab.admin_client.fetch_config_dump", self.fetch)

    def fetch(self, target, timeout: float) -> dict:
        node = target.where.split()[2]  # "in node node-1 of lab 'ambient'"
        assert target.netns_path == f"/var/run/netns/amb-ambient.{node}" and target.port == 15000
        self.asked.append((node, timeout))
        queue = self.answers[node]
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_list_reports_programmed_from_the_lab_s_waypoint_pods(tmp_path, config, capsys):
    (config / "mesh.yaml").write_text(USER_GATEWAY)
    assert run(capsys, "apply", "-n", "shop", "--for", "all", "--config", str(config))[0] == 0
    assert run(capsys, "apply", "-n", "default", "--config", str(config))[0] == 0
    lock = start_lab(tmp_path, config, [{"namespace": "shop", "name": "waypoint", "ready": True},
                                        {"namespace": "shop", "name": "mine", "ready": False}])
    try:
        code, out, _ = run(capsys, "list", "-n", "shop")
        assert code == 0 and out == ("NAME         REVISION     TRAFFIC TYPE     PROGRAMMED\n"
                                     "mine         default      service          False\n"
                                     "waypoint     default      all              True\n")
        code, out, _ = run(capsys, "list", "-A")
        assert out.splitlines()[0].split() == ["NAMESPACE", "NAME", "REVISION", "TRAFFIC", "TYPE", "PROGRAMMED"]
        assert [line.split()[:2] for line in out.splitlines()[1:]] == [
            ["default", "waypoint"], ["shop", "mine"], ["shop", "waypoint"]]
    finally:
        lock.release()
    assert run(capsys, "list", "-n", "shop", "--config", str(config))[1].splitlines()[1].split()[-1] == "Unknown"
    assert run(capsys, "list", "-n", "nowhere", "--config", str(config))[1] == "No waypoints found.\n"


def test_status_prints_the_programmed_condition_and_wait_times_out(tmp_path, config, capsys):
    assert run(capsys, "apply", "-n", "shop", "--config", str(config))[0] == 0
    why = "waypoint: GET http://10.244.0.5:15021/healthz/ready returned 503"
    lock = start_lab(tmp_path, config, [{"namespace": "shop", "name": "waypoint", "ready": False, "why": why}])
    try:
        code, out, _ = run(capsys, "status", "-n", "shop")
        assert code == 0
        assert out.splitlines()[0].split() == ["NAME", "STATUS", "TYPE", "REASON", "MESSAGE"]
        assert out.splitlines()[1].split(None, 4) == [
            "waypoint", "False", "Programmed", "NoResources",
            f"waypoint pod shop/waypoint-waypoint is not ready: {why}"]
        code, _, err = run(capsys, "status", "-n", "shop", "--wait", "--waypoint-timeout", "0")
        assert (code, err) == (1, "ambient: error: timed out while retrieving status for waypoint shop/waypoint: "
                                  f"waypoint pod shop/waypoint-waypoint is not ready: {why}\n")
    finally:
        lock.release()
    lock = start_lab(tmp_path, config, [{"namespace": "shop", "name": "waypoint", "ready": True}])
    try:
        code, out, _ = run(capsys, "apply", "-n", "shop", "--wait", "--waypoint-timeout", "0")
        assert code == 0 and out.splitlines()[-1] == "✅ waypoint shop/waypoint is ready!"
    finally:
        lock.release()


def test_delete_removes_what_apply_wrote_and_refuses_a_user_s_file(config, capsys):
    (config / "mesh.yaml").write_text(USER_GATEWAY)
    assert run(capsys, "apply", "-n", "shop", "--config", str(config))[0] == 0
    code, out, err = run(capsys, "delete", "-n", "shop", "waypoint", "nope", "mine", "--config", str(config))
    assert out == "waypoint shop/waypoint deleted\nwaypoint shop/nope not found\n"
    assert code == 1 and err == (f"ambient: error: waypoint shop/mine is declared in {config / 'mesh.yaml'} (line 1), "
                                 "which `ambient waypoint apply` did not write: remove it there\n")
    assert sorted(p.name for p in config.iterdir()) == ["mesh.yaml"]
    assert run(capsys, "delete", "--all", "x", "--config", str(config))[2] == (
        "ambient: error: cannot specify waypoint names when deleting all waypoints\n")
    assert run(capsys, "delete", "--config", str(config))[2] == (
        "ambient: error: must specify a waypoint name or delete all using --all\n")
    assert run(capsys, "apply", "-n", "shop", "--name", "a", "--config", str(config))[0] == 0
    assert run(capsys, "apply", "-n", "shop", "--name", "b", "--config", str(config))[0] == 0
    code, out, _ = run(capsys, "delete", "-n", "shop", "--all", "--config", str(config))
    assert out.splitlines()[:2] == ["waypoint shop/a deleted", "waypoint shop/b deleted"] and code == 1  # mine stays


def test_lab_status_lists_the_waypoints(tmp_path, config, capsys, monkeypatch):
    paths = LabPaths.of("ambient", tmp_path / "labs")
    paths.root.mkdir(parents=True)
    status = {"lab": "ambient", "config_dir": str(config), "state_dir": str(paths.root),
              "controlplane": {"state": "running", "address": "10.255.0.2:15012", "restarts": 0},
              "nodes": [], "pods": [], "services": [],
              "waypoints": [{"namespace": "shop", "name": "waypoint", "for": "service", "pod": "waypoint-waypoint",
                             "ready": "1/1", "used_by": ["namespace shop", "service shop/a", "service shop/b",
                                                         "pod shop/c"]}]}
    paths.status.write_text(json.dumps(status))
    monkeypatch.setattr(lab_cli, "load_status", lambda paths: (status, True))
    assert main(["lab", "status"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2].split() == ["NAMESPACE", "NAME", "FOR", "POD", "READY", "AGE", "USED", "BY"]
    assert out[-1].split(None, 6) == ["shop", "waypoint", "service", "waypoint-waypoint", "1/1", "<unknown>",
                                      "namespace shop, service shop/a, service shop/b (+1 more)"]


def test_the_waypoint_proxy_command_loads_none_of_the_lab():
    code = ("import sys; from ambient.cli import build_parser; "
            "build_parser(['--log-level', 'debug', 'waypoint', 'run', '--help'][:4]); "
            "print(sorted(m for m in sys.modules if m == 'lab' or m.startswith('lab.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# -- --wait: until every node's ztunnel lists the waypoint's workload Healthy


def test_a_workload_gap_says_why_a_ztunnel_would_still_refuse_the_waypoint():
    pod = {"namespace": "shop", "name": "waypoint-waypoint", "ip": WAYPOINT_IP}
    assert workload_gap(dump_listing("Healthy"), pod) is None
    assert workload_gap(dump_listing(None), pod) == "does not list pod shop/waypoint-waypoint yet"
    assert workload_gap({}, pod) == "does not list pod shop/waypoint-waypoint yet"  # an empty dump
    assert workload_gap(dump_listing("Unhealthy"), pod) == (
        "lists pod shop/waypoint-waypoint as Unhealthy, not Healthy")
    # A restarted pod at a new address: the old entry does not count.
    assert workload_gap(dump_listing("Healthy", ip="10.244.0.99"), pod) == (
        f"lists pod shop/waypoint-waypoint at 10.244.0.99, not at {WAYPOINT_IP}")
    # The same name in another namespace is another workload.
    assert workload_gap(dump_listing("Healthy", namespace="else"), pod) == (
        "does not list pod shop/waypoint-waypoint yet")


def test_nodes_without_a_ztunnel_are_not_asked():
    status = {"nodes": [lab_node("node-0"), lab_node("node-1", ztunnel=False), lab_node("node-2")]}
    assert [n["name"] for n in ztunnel_nodes(status)] == ["node-0", "node-2"]
    assert ztunnel_nodes({}) == []


def test_wait_returns_once_every_ztunnel_lists_the_waypoint_healthy(tmp_path, config, capsys, monkeypatch):
    assert run(capsys, "apply", "-n", "shop", "--config", str(config))[0] == 0
    nodes = [lab_node("node-0"), lab_node("node-1"), lab_node("node-2", ztunnel=False)]
    lock = start_lab(tmp_path, config, [{"namespace": "shop", "name": "waypoint", "ready": True}], nodes)
    try:
        # node-0 knows it at once; node-1 is restarting, then has not heard of it, then has it
        # Unhealthy (the view before the pod's readiness), then Healthy.
        ztunnels = FakeZtunnels(monkeypatch, {
            "node-0": [dump_listing("Healthy")],
            "node-1": [ConfigFetchError("ztunnel admin at 127.0.0.1:15000 in node node-1: connection refused"),
                       dump_listing(None), dump_listing("Unhealthy"), dump_listing("Healthy")]})
        target = Target(config, LabPaths.of("ambient", tmp_path / "labs").status)
        missing = wait_usable(target, "shop", "waypoint", 90, clock=ztunnels.clock, sleep=ztunnels.sleep)
        assert missing == []
        assert ztunnels.slept == [POLL_INTERVAL] * 3  # four looks, one poll interval apart
        assert [node for node, _ in ztunnels.asked] == ["node-0", "node-1"] * 4  # node-2 runs no ztunnel
        assert {timeout for _, timeout in ztunnels.asked} == {FETCH_TIMEOUT}
    finally:
        lock.release()


def test_wait_times_out_within_its_timeout_and_says_what_is_missing(tmp_path, config, capsys, monkeypatch):
    assert run(capsys, "apply", "-n", "shop", "--config", str(config))[0] == 0
    lock = start_lab(tmp_path, config, [{"namespace": "shop", "name": "waypoint", "ready": True}],
                     [lab_node("node-0"), lab_node("node-1")])
    try:
        ztunnels = FakeZtunnels(monkeypatch, {"node-0": [dump_listing("Healthy")], "node-1": [dump_listing(None)]})
        target = Target(config, LabPaths.of("ambient", tmp_path / "labs").status)
        missing = wait_usable(target, "shop", "waypoint", 2.5, clock=ztunnels.clock, sleep=ztunnels.sleep)
        assert missing == ["ztunnel-node-1 does not list pod shop/waypoint-waypoint yet"]
        assert ztunnels.slept == [1.0, 1.0, 0.5] and ztunnels.now == 2.5  # bounded by the timeout
        # The last look's requests get what is left of the timeout, and at least MIN_FETCH_TIMEOUT.
        assert [t for _, t in ztunnels.asked] == [2.5, 2.5, 1.5, 1.5, 0.5, 0.5, MIN_FETCH_TIMEOUT, MIN_FETCH_TIMEOUT]
        # Through the command: the message says the same.
        code, _, err = run(capsys, "apply", "-n", "shop", "--wait", "--waypoint-timeout", "0")
        assert (code, err) == (1, "ambient: error: timed out while waiting for waypoint shop/waypoint: "
                                  "ztunnel-node-1 does not list pod shop/waypoint-waypoint yet\n")
        code, _, err = run(capsys, "status", "-n", "shop", "--wait", "--waypoint-timeout", "0")
        assert code == 1 and err.endswith(": ztunnel-node-1 does not list pod shop/waypoint-waypoint yet\n")
    finally:
        lock.release()


def test_apply_wait_reports_ready_once_the_ztunnels_have_it(tmp_path, config, capsys, monkeypatch):
    lock = start_lab(tmp_path, config, [{"namespace": "shop", "name": "waypoint", "ready": True}],
                     [lab_node("node-0"), lab_node("node-1")])
    try:
        FakeZtunnels(monkeypatch, {"node-0": [dump_listing("Healthy")], "node-1": [dump_listing("Healthy")]})
        code, out, _ = run(capsys, "apply", "-n", "shop", "--wait", "--waypoint-timeout", "0")
        assert code == 0 and out.splitlines()[-1] == "✅ waypoint shop/waypoint is ready!"
        code, out, _ = run(capsys, "status", "-n", "shop", "--wait", "--waypoint-timeout", "0")
        assert code == 0 and out.splitlines()[1].split()[:2] == ["waypoint", "True"]
    finally:
        lock.release()


def test_wait_without_root_fails_at_once_rather_than_at_the_timeout(tmp_path, config, capsys, monkeypatch):
    lock = start_lab(tmp_path, config, [{"namespace": "shop", "name": "waypoint", "ready": True}],
                     [lab_node("node-0")])
    try:
        ztunnels = FakeZtunnels(monkeypatch, {"node-0": [NetnsAccessError(
            "entering the network namespace /var/run/netns/amb-ambient.node-0 needs root")]})
        code, _, err = run(capsys, "apply", "-n", "shop", "--wait", "--waypoint-timeout", "30")
        assert (code, err) == (1, "ambient: error: --wait: entering the network namespace "
                                  "/var/run/netns/amb-ambient.node-0 needs root\n")
        assert len(ztunnels.asked) == 1
    finally:
        lock.release()
