"""The ambient-cni plugin as a container runtime runs it: the binary `make cni-plugin` builds, executed with
the network configuration on stdin and CNI_COMMAND/CNI_NETNS/... in its environment, against the node
agent's CNI socket served by the test, for a pod netns of a real lab network (root): the capture is
attached (link, pins, routing) before the plugin exits, the result is prevResult; DEL releases it.
The pod-label lookup is the test's (bpf/cni_pods.py is tested against an API server in test_cni_pods.py)."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import cast

import pytest
import trio

from bpf.agent import NodeAgent, pin_name
from bpf.capture import LINK_PIN, MAPS
from bpf.cni_agent import KubernetesPods
from bpf.cni_pods import PodLookupError
from bpf.cni_protocol import SUPPORTED_VERSIONS
from bpf.enrollment import MARK_RULE_PRIORITY, TCP_RULE_PRIORITY
from lab import network
from lab.topology import PodSpec, plan_lab
from mesh.api import workload_pb2 as wpb
from mesh.xds.client import DiscoveryClient
from tests.bpf.test_agent import capture_rules
from tests.bpf.test_capture import netns_links

REPO = Path(__file__).resolve().parents[2]
NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces and eBPF")
KEY = pin_name("default", "web")


@pytest.fixture(scope="session")
def plugin() -> Path:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler: `make cni-plugin` cannot build the plugin")
    subprocess.run(["make", "-s", "cni-plugin"], cwd=REPO, check=True)
    return REPO / "build" / "ambient-cni"


@pytest.fixture
def short_dir():
    """A directory with a short path: a Unix socket's path is at most 107 bytes, pytest's tmp_path is long."""
    path = Path(tempfile.mkdtemp(prefix="cni-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Lookup:
    """The pod-label lookup: these (namespace, name) are ambient; every call recorded."""

    def __init__(self, ambient: set[tuple[str, str]], error: str | None = None) -> None:
        self.ambient, self.error = ambient, error
        self.calls: list[tuple[str, str]] = []

    def captured(self, namespace: str, name: str) -> bool:
        self.calls.append((namespace, name))
        if self.error:
            raise PodLookupError(self.error)
        return (namespace, name) in self.ambient


class Discovery:
    """What reconcile reads of the discovery client: the view of Addresses."""

    change_seq = 0
    connected = True

    def __init__(self) -> None:
        self.addresses: dict[str, wpb.Address] = {}

    def view(self, _type_url: str) -> dict[str, wpb.Address]:
        return self.addresses


def workload(pod, ip: str | None = None) -> wpb.Address:
    return wpb.Address(workload=wpb.Workload(
        uid=f"cluster/pod/{pod.namespace}/{pod.name}", name=pod.name, namespace=pod.namespace,
        service_account="web", node="node-0", tunnel_protocol=wpb.HBONE,
        addresses=[ipaddress.ip_address(ip or str(pod.ip)).packed]))


def make_agent(state: Path, bpffs: Path | None, lookup: Lookup) -> tuple[NodeAgent, Discovery]:
    pods = KubernetesPods(lookup, state / "cni.sock")
    discovery = Discovery()
    agent = NodeAgent("node-0", state, lambda ns, name: pods.netns_of(pin_name(ns, name)),
                      cast(DiscoveryClient, discovery), kubernetes=pods)
    if bpffs is not None:
        agent.bpffs = bpffs
    return agent, discovery


def prev_result(ip: str, netns: str) -> dict:
    return {"cniVersion": "1.0.0",
            "interfaces": [{"name": "veth0a1b2c", "mac": "aa:bb:cc:00:00:01"},
                           {"name": "eth0", "mac": "aa:bb:cc:00:00:02", "sandbox": netns}],
            "ips": [{"address": f"{ip}/24", "gateway": "10.244.0.1", "interface": 1}],
            "dns": {}}


def config(socket: Path, prev: dict | None = None, **extra) -> dict:
    conf = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "ambient-cni", "agent_socket": str(socket),
            **extra}
    if prev is not None:
        conf["prevResult"] = prev
    return conf


async def run_plugin(plugin: Path, command: str, stdin: dict | bytes, netns: str = "/var/run/netns/none",
                     namespace: str = "default", name: str = "web") -> tuple[int, str]:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c0ffee" * 4, "CNI_NETNS": netns, "CNI_IFNAME": "eth0",
           "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}",
           "CNI_PATH": "/opt/cni/bin"}
    data = stdin if isinstance(stdin, bytes) else json.dumps(stdin).encode()
    done = await trio.run_process([str(plugin)], stdin=data, capture_stdout=True, capture_stderr=True,
                                  check=False, env=env)
    return done.returncode, done.stdout.decode()


def cni_error(out: str) -> dict:
    error = json.loads(out)
    assert set(error) <= {"cniVersion", "code", "msg", "details"}
    return error


# Without an agent: what the plugin answers itself.


async def test_version_is_answered_by_the_plugin(plugin, short_dir):
    status, out = await run_plugin(plugin, "VERSION", {"cniVersion": "0.4.0"})
    assert status == 0
    assert json.loads(out) == {"cniVersion": "0.4.0", "supportedVersions": list(SUPPORTED_VERSIONS)}


@pytest.mark.parametrize("stdin", [b"", b"not json", b'{"cniVersion": "1.0.0",', b'["a"]', b'{"a": 1} trailing'])
async def test_malformed_stdin_is_a_decoding_error(plugin, stdin):
    status, out = await run_plugin(plugin, "ADD", stdin)
    assert status != 0
    assert cni_error(out)["code"] == 6


async def test_with_the_agent_down_add_fails_naming_the_socket_and_del_and_check_succeed(plugin, short_dir):
    socket = short_dir / "cni.sock"
    conf = config(socket, prev_result("10.244.0.9", "/var/run/netns/x"))
    status, out = await run_plugin(plugin, "ADD", conf)
    error = cni_error(out)
    assert status != 0 and error["code"] == 11 and str(socket) in error["details"]
    assert error["cniVersion"] == "1.0.0"
    assert await run_plugin(plugin, "DEL", conf) == (0, "")
    assert await run_plugin(plugin, "CHECK", conf) == (0, "")


async def test_an_excluded_namespace_passes_through_without_the_agent(plugin, short_dir):
    prev = prev_result("10.244.0.9", "/var/run/netns/x")
    status, out = await run_plugin(plugin, "ADD", config(short_dir / "cni.sock", prev), namespace="kube-system")
    assert (status, json.loads(out)) == (0, prev)
    conf = config(short_dir / "cni.sock", prev, exclude_namespaces=["default"])
    status, out = await run_plugin(plugin, "ADD", conf)
    assert (status, json.loads(out)) == (0, prev)


# With the agent's CNI socket served by the test.


@pytest.fixture
async def serving(nursery, short_dir):
    """Start the CNI socket of an agent made with ``make``; the agent."""

    async def start(lookup: Lookup, bpffs: Path | None = None) -> tuple[NodeAgent, Discovery]:
        agent, discovery = make_agent(short_dir, bpffs, lookup)
        assert agent.cni is not None
        await nursery.start(agent.cni.serve)
        return agent, discovery

    return start


async def test_the_agent_relays_its_own_refusal_with_the_spec_error(plugin, serving, short_dir):
    agent, _ = await serving(Lookup(set()))
    status, out = await run_plugin(plugin, "ADD", {"cniVersion": "0.2.0", "agent_socket": str(short_dir / "cni.sock")})
    assert status != 0 and cni_error(out)["code"] == 1 and "0.2.0" in cni_error(out)["details"]
    assert os.stat(short_dir / "cni.sock").st_mode & 0o777 == 0o600


async def test_a_pod_whose_labels_cannot_be_read_fails_the_add(plugin, serving, short_dir):
    agent, _ = await serving(Lookup({("default", "web")}, error="the API server answered 503 Service Unavailable"))
    status, out = await run_plugin(plugin, "ADD", config(short_dir / "cni.sock", prev_result("10.244.0.9", "/x")))
    error = cni_error(out)
    assert status != 0 and error["code"] == 11 and "503" in error["details"]
    assert agent.pods == {}


@pytest.fixture
def lab_pod():
    plan = plan_lab(f"cni{uuid.uuid4().hex[:6]}", [PodSpec("default", "web", 0)], 1)
    network.create(plan)
    yield plan.pod("default", "web")
    network.destroy(plan.name)


def captured_in(netns: str, bpffs: Path) -> bool:
    """The capture as the kernel shows it: a netns link, the pins, the policy rules."""
    inode = os.stat(network.netns_path(netns)).st_ino
    links, rules, pinned = netns_links(inode), capture_rules(netns), (bpffs / KEY).exists()
    if links or rules or pinned:
        assert len(links) == 1 and rules == [MARK_RULE_PRIORITY, TCP_RULE_PRIORITY]
        assert sorted(os.listdir(bpffs / KEY)) == sorted([LINK_PIN, *MAPS])
        return True
    return False


@NEEDS_ROOT
async def test_add_of_an_ambient_pod_captures_it_before_the_plugin_exits_and_del_releases_it(
        plugin, serving, short_dir, lab_pod, bpffs):
    lookup = Lookup({("default", "web")})
    agent, discovery = await serving(lookup, bpffs)
    path = network.netns_path(lab_pod.netns)
    prev = prev_result(str(lab_pod.ip), path)
    conf = config(short_dir / "cni.sock", prev)
    status, out = await run_plugin(plugin, "ADD", conf, netns=path)
    assert captured_in(lab_pod.netns, bpffs)  # nothing awaited since the plugin exited
    assert (status, json.loads(out)) == (0, prev)
    assert lookup.calls == [("default", "web")]
    assert not agent.pods[KEY].handed  # waiting for its Workload

    await agent.reconcile()  # no Workload yet: the pending capture stays
    assert captured_in(lab_pod.netns, bpffs) and KEY in agent.pods
    discovery.addresses = {"w": workload(lab_pod)}
    await agent.reconcile()  # its Workload: handed to ztunnel (ZDS), same capture
    assert agent.pods[KEY].handed
    [pod_status] = agent.status()["pods"]
    assert (pod_status["captured"], pod_status["uid"]) == (True, "cluster/pod/default/web")

    status, out = await run_plugin(plugin, "ADD", conf, netns=path)  # the runtime repeats an ADD
    assert (status, json.loads(out)) == (0, prev) and agent.pods[KEY].handed

    assert await run_plugin(plugin, "DEL", conf, netns=path) == (0, "")
    assert not captured_in(lab_pod.netns, bpffs)
    assert KEY not in agent.pods and agent.kubernetes is not None and KEY not in agent.kubernetes.netns


@NEEDS_ROOT
async def test_add_of_a_pod_that_is_not_ambient_captures_nothing_and_passes_prev_result(
        plugin, serving, short_dir, lab_pod, bpffs):
    agent, _ = await serving(Lookup(set()), bpffs)
    path = network.netns_path(lab_pod.netns)
    prev = prev_result(str(lab_pod.ip), path)
    status, out = await run_plugin(plugin, "ADD", config(short_dir / "cni.sock", prev), netns=path)
    assert (status, json.loads(out)) == (0, prev)
    assert not captured_in(lab_pod.netns, bpffs) and agent.pods == {}


@NEEDS_ROOT
async def test_a_pending_capture_whose_workload_never_comes_is_released(plugin, serving, short_dir, lab_pod, bpffs):
    agent, _ = await serving(Lookup({("default", "web")}), bpffs)
    path = network.netns_path(lab_pod.netns)
    status, _ = await run_plugin(plugin, "ADD", config(short_dir / "cni.sock", prev_result(str(lab_pod.ip), path)),
                                 netns=path)
    assert status == 0 and captured_in(lab_pod.netns, bpffs)
    assert agent.kubernetes is not None
    agent.kubernetes.pending[KEY] = trio.current_time()  # its CNI_WORKLOAD_WAIT is over
    await agent.reconcile()
    assert not captured_in(lab_pod.netns, bpffs) and agent.pods == {}
    assert KEY not in agent.kubernetes.netns  # the netns fd closed


@NEEDS_ROOT
async def test_a_running_pod_is_found_in_proc_and_captured_without_a_cni_event(short_dir, lab_pod, bpffs):
    agent, discovery = make_agent(short_dir, bpffs, Lookup(set()))
    # Every lab's pods are in 10.244.N.0/24, and another lab may be up on this machine: the scan rightly
    # leaves an IP held by two netns alone. So the pod gets an address no other netns has.
    ip = f"10.253.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}"
    subprocess.run(["ip", "-n", lab_pod.netns, "addr", "add", f"{ip}/32", "dev", "eth0"], check=True)
    sleeper = await trio.lowlevel.open_process(["ip", "netns", "exec", lab_pod.netns, "sleep", "60"])
    try:
        inode = os.stat(network.netns_path(lab_pod.netns)).st_ino
        while os.stat(f"/proc/{sleeper.pid}/ns/net").st_ino != inode:  # exec'd into the netns yet?
            await trio.lowlevel.checkpoint()
        discovery.addresses = {"w": workload(lab_pod, ip)}
        await agent.reconcile()
        assert captured_in(lab_pod.netns, bpffs) and agent.pods[KEY].handed
    finally:
        sleeper.kill()
        await sleeper.wait()
    discovery.addresses = {}
    await agent.reconcile()  # the pod left the mesh: released, its netns forgotten
    assert not captured_in(lab_pod.netns, bpffs)
    assert agent.kubernetes is not None and KEY not in agent.kubernetes.netns


# The plugin's own bounds, against a raw socket of the test standing in for a misbehaving agent.


@pytest.fixture
async def fake_agent(nursery, short_dir):
    """A Unix socket that reads the request to EOF, then answers ``answer`` (None: never answers)."""
    path = short_dir / "agent.sock"
    listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await listener.bind(str(path))
    listener.listen(8)

    scope = trio.CancelScope()

    async def serve(answer: bytes | None) -> None:
        with scope:
            while True:
                sock, _ = await listener.accept()
                with sock:
                    while await sock.recv(65536):
                        pass
                    if answer is None:
                        await trio.sleep_forever()
                    try:
                        await _send(sock, answer)
                    except (BrokenPipeError, ConnectionResetError):  # the plugin stopped reading: its bound
                        pass

    def start(answer: bytes | None) -> Path:
        nursery.start_soon(serve, answer)
        return path

    yield start
    scope.cancel()
    await trio.lowlevel.checkpoint()
    listener.close()


async def _send(sock, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[await sock.send(view):]


async def test_a_silent_agent_fails_the_add_at_the_configured_deadline_and_del_still_succeeds(plugin, fake_agent):
    path = fake_agent(None)
    conf = config(path, prev_result("10.244.0.9", "/x"), agent_timeout=1)
    started = trio.current_time()
    status, out = await run_plugin(plugin, "ADD", conf)
    error = cni_error(out)
    assert status != 0 and error["code"] == 11 and "read the answer" in error["details"]
    assert "timed out" in error["details"] and trio.current_time() - started >= 1
    assert await run_plugin(plugin, "DEL", conf) == (0, "")


@pytest.mark.parametrize(("answer", "words"), [
    pytest.param(b"0\n" + b"x" * (300 * 1024), "too large", id="answer over the bound"),
    pytest.param(b"no status line", "malformed answer", id="no status"),
    pytest.param(b"999\n{}", "malformed answer", id="status out of range"),
])
async def test_a_bad_answer_is_an_io_error_not_passed_on(plugin, fake_agent, answer, words):
    path = fake_agent(answer)
    status, out = await run_plugin(plugin, "ADD", config(path, prev_result("10.244.0.9", "/x")))
    assert status != 0 and cni_error(out)["code"] == 5 and words in cni_error(out)["msg"]


@pytest.mark.parametrize("timeout", [0, 301, "5", 1.5])
async def test_agent_timeout_must_be_whole_seconds_in_range(plugin, short_dir, timeout):
    status, out = await run_plugin(plugin, "ADD", config(short_dir / "s", agent_timeout=timeout))
    assert status != 0 and cni_error(out)["code"] == 7


async def test_stdin_over_the_bound_is_refused(plugin):
    status, out = await run_plugin(plugin, "ADD", b'{"x": "' + b"a" * (200 * 1024) + b'"}')
    assert status != 0 and cni_error(out)["code"] == 6 and "too large" in cni_error(out)["msg"]
