"""A pod's processes cannot reach the node's secrets (root: netns, cgroups, mount namespaces).

Pods are started the way the lab starts them: the container's ProcessSpec from ``container_plans``
under a ``Supervisor``; the node's components from ``components.node_processes``, with a command that
reports what it can open instead of the real one. The probe prints one JSON object, path -> "ok" or
the errno name, into the process's log; the tests await the process's end, never sleep.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import replace
from pathlib import Path

import pytest
import trio
from pyroute2 import netns as pyroute2_netns

from ca.store import CA_KEY
from controlplane.server import CA_SUBDIR
from controlplane.view import ClusterState
from lab import components
from lab.isolation import MAX_ID, POD_CAPABILITIES, PodSandbox
from lab.processes import Supervisor, cleanup_cgroups
from lab.state import LabPaths
from lab.topology import PodSpec, netns_prefix, plan_lab
from lab.workloads import container_plans, desired_pods, pod_sandbox
from mesh.parse import parse_text
from tests.lab.test_processes import BOUND, root_only

# Tries each path given on its command line (files are read, directories listed) and a few ways
# around a hidden directory; prints {what: "ok" | errno name} and its uid, gid and effective caps.
PROBE = r"""
import errno, json, os, sys
result = {}
def attempt(name, action):
    try:
        action()
        result[name] = "ok"
    except OSError as exc:
        result[name] = errno.errorcode.get(exc.errno, str(exc.errno))
for path in sys.argv[1:]:
    attempt(path, (lambda p=path: os.listdir(p)) if path.endswith("/") else (lambda p=path: open(p).read()))
attempt("via /proc/1/root", lambda: open("/proc/1/root" + sys.argv[2]).read())
attempt("via the parent's root", lambda: open(f"/proc/{os.getppid()}/root" + sys.argv[2]).read())
caps = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("CapEff"))
print(json.dumps({"open": result, "uid": os.getuid(), "gid": os.getgid(), "caps": int(caps, 16)}), flush=True)
"""

YAML = """
apiVersion: v1
kind: Pod
metadata: {name: thief, namespace: shop}
spec:
  nodeName: node-0
  containers: [{name: c, command: [python3]}]
"""


def test_a_sandbox_validates_its_fields(tmp_path):
    assert PodSandbox(hidden=(str(tmp_path),)).hidden == (tmp_path,)
    for bad in ("relative", "/"):
        with pytest.raises(ValueError, match="absolute path below /"):
            PodSandbox(hidden=(Path(bad),))
    for value in (-1, MAX_ID + 1, True, "0"):
        with pytest.raises(ValueError, match="run_as_user must be a number"):
            PodSandbox(hidden=(), run_as_user=value)


def test_pods_hide_every_lab_state_but_not_their_yaml_directory(tmp_path):
    paths = LabPaths.of("shop", tmp_path / "labs")
    assert pod_sandbox(paths, tmp_path / "config").hidden == (tmp_path / "labs",)
    # A YAML directory among the labs' state: only this lab's own is hidden, the pods still run there.
    assert pod_sandbox(paths, tmp_path / "labs" / "config").hidden == (paths.root,)


@pytest.fixture
def lab_name():
    name = f"iso-{secrets.token_hex(4)}"
    yield name
    for netns in pyroute2_netns.listnetns():
        if netns.startswith(netns_prefix(name)):
            pyroute2_netns.remove(netns)
    cleanup_cgroups(name)


@pytest.fixture
def secrets_on_disk(lab_name, tmp_path):
    """A lab's state as the daemon lays it out, with a CA key and a node token in it."""
    paths = LabPaths.of(lab_name, tmp_path / "labs")
    plan = plan_lab(lab_name, [PodSpec("shop", "thief", node=0)], node_count=1)
    node = plan.nodes[0]
    key = paths.controlplane / CA_SUBDIR / CA_KEY
    token = components.node_token_path(paths, node)
    for path in (key, token):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("secret\n")
    for netns in (node.netns, plan.pod("shop", "thief").netns):
        pyroute2_netns.create(netns)
    config = tmp_path / "config"
    config.mkdir()
    return paths, plan, [str(paths.root) + "/", str(token), str(key), str(paths.root.parent) + "/"], config


async def run_to_end(spec, lab_name) -> dict:
    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(lab_name, grace_period=2)
        await nursery.start(supervisor.run)
        with trio.fail_after(BOUND):
            await supervisor.start(spec)
            await supervisor.wait_for(spec.name, lambda status: status.state.finished)
        nursery.cancel_scope.cancel()
    lines = [line for line in spec.log_path.read_text().splitlines() if line.startswith("{")]
    assert lines, spec.log_path.read_text()
    return json.loads(lines[-1])


def thief_spec(paths, plan, targets, config):
    state = ClusterState.build(parse_text(YAML, "apps.yaml").resources)
    lab_pod = desired_pods(state, node_count=1)[("shop", "thief")]
    (container,) = container_plans(paths, lab_pod, plan.pod("shop", "thief"), config)
    assert container.process is not None, container.problem
    return replace(container.process, argv=("python3", "-c", PROBE, *targets), restart_policy="Never")


@root_only
async def test_a_pod_cannot_open_the_lab_state_the_node_token_or_the_ca_key(secrets_on_disk, lab_name):
    paths, plan, targets, config = secrets_on_disk
    seen = await run_to_end(thief_spec(paths, plan, targets, config), lab_name)
    assert seen["open"] == {
        targets[0]: "ENOENT", targets[1]: "ENOENT", targets[2]: "ENOENT",
        targets[3]: "ok",  # the cover itself: an empty directory
        "via /proc/1/root": "EACCES", "via the parent's root": "EACCES",
    }, seen
    assert seen["uid"] == 0 and seen["caps"] == sum(1 << cap for cap in POD_CAPABILITIES.values())


@root_only
async def test_a_pod_runs_as_the_user_and_group_it_asks_for(secrets_on_disk, lab_name):
    paths, plan, targets, config = secrets_on_disk
    spec = thief_spec(paths, plan, targets, config)
    spec = replace(spec, sandbox=replace(spec.sandbox, run_as_user=65534, run_as_group=65533))
    seen = await run_to_end(spec, lab_name)
    assert (seen["uid"], seen["gid"], seen["caps"]) == (65534, 65533, 0)
    assert seen["open"][targets[1]] in ("ENOENT", "EACCES")  # its tmp_path is 0700 to this user


@root_only
async def test_the_node_components_still_read_their_token_and_the_ca_key(secrets_on_disk, lab_name):
    paths, plan, targets, config = secrets_on_disk
    agent = components.node_processes(paths, plan, plan.nodes[0], ztunnel=True)
    controlplane = components.controlplane_process(paths, plan, config)
    for spec in (*agent, controlplane):
        if spec.netns not in pyroute2_netns.listnetns():
            pyroute2_netns.create(spec.netns)
        probe = replace(spec, argv=("python3", "-c", PROBE, *targets), restart_policy="Never")
        seen = await run_to_end(probe, lab_name)
        assert [seen["open"][target] for target in targets] == ["ok"] * 4, (spec.name, seen)
