"""The waypoint in the lab without root: its process, its token, its readiness, its life with its
Gateway, and the WAYPOINTS section of the status."""

from __future__ import annotations

import stat
import sys

import pytest
import trio
import trio.testing

from bpf.agent import pods_to_capture
from ca.service import CertificateService
from ca.tokens import TOKEN_FILE, TokenStore, WorkloadCaller
from controlplane.registry import ConfigDirectory
from controlplane.server import CA_SUBDIR
from controlplane.view import ClusterState, PodStatus, compute_view, waypoint_pod
from lab import components, daemon
from lab.daemon import Lab, LabConfig
from lab.probes import probe_once
from lab.processes import ProcessState, ProcessStatus
from lab.state import LabPaths
from lab.topology import PodSpec, plan_lab
from lab.waypoints import programmed_condition, waypoint_entries
from lab.workloads import desired_pods, pod_sandbox
from mesh import resources as r
from mesh.api import workload_pb2 as wpb
from mesh.identity import SpiffeId
from mesh.parse import parse_text

BOUND = 5  # seconds: every wait here is bounded

GATEWAY = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop, labels: {istio.io/waypoint-for: all}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"""
NAMESPACE = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, labels: {istio.io/use-waypoint: waypoint}}
spec:
  selector: {app: web}
  ports: [{port: 80}]
"""


def state_of(*texts: str, pod_status=None) -> ClusterState:
    resources = []
    for text in texts:
        result = parse_text(text, "t.yaml")
        assert not result.errors, result.errors
        resources += result.resources
    return ClusterState.build(resources, pod_status=pod_status)


def waypoint_plan(paths: LabPaths):
    plan = plan_lab(paths.name, [PodSpec("shop", "waypoint-waypoint")], 1)
    return plan, plan.pod("shop", "waypoint-waypoint")


def test_the_waypoint_process_runs_ambient_waypoint_run_in_its_pod_s_netns(tmp_path):
    paths = LabPaths.of("t", tmp_path)
    plan, pod = waypoint_plan(paths)
    (spec,) = components.waypoint_processes(paths, plan, pod, "debug")
    ca = paths.controlplane / CA_SUBDIR
    assert spec.argv == (
        sys.executable, "-m", "ambient", "--log-level", "debug", "waypoint", "run", "--gateway", "shop/waypoint",
        "--discovery-address", "10.255.0.2:15012", "--server-name", "istiod.istio-system.svc",
        "--ca-root", str(ca / "root-cert.pem"), "--token-file", str(paths.root / "waypoints/shop.waypoint/token"),
        "--trust-domain", "cluster.local", "--state-dir", str(paths.root / "waypoints/shop.waypoint/state"))
    assert spec.name == "waypoint-shop.waypoint"
    assert spec.netns == pod.netns and spec.log_path == paths.logs / "waypoint-shop.waypoint.log"
    assert spec.cgroup.parent.name.startswith("amb-t.") and spec.sandbox is None
    # Its token and state are where no pod looks: the sandbox of every pod hides the lab's state.
    hidden = pod_sandbox(paths, tmp_path / "config").hidden
    assert any(paths.waypoint_dir("shop", "waypoint").is_relative_to(h) for h in hidden)


def test_the_suffix_the_lab_strips_is_the_one_the_view_adds():
    gateway = next(res for res in parse_text(GATEWAY, "t.yaml").resources if isinstance(res, r.Gateway))
    assert waypoint_pod(gateway).meta.name == "waypoint" + components.WAYPOINT_POD_SUFFIX
    plan = plan_lab("t", [PodSpec("shop", "web")], 1)
    with pytest.raises(ValueError, match="not a waypoint's pod"):
        components.waypoint_gateway(plan.pod("shop", "web"))


def test_the_waypoint_token_gets_the_waypoint_s_own_certificate_and_no_other(tmp_path):
    paths = LabPaths.of("t", tmp_path)
    _, pod = waypoint_plan(paths)
    (paths.controlplane / CA_SUBDIR).mkdir(parents=True)
    components.prepare_waypoint(paths, pod)
    token_path = components.waypoint_token_path(paths, "shop", "waypoint")
    assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_path.parent.stat().st_mode) == 0o700
    token = token_path.read_text().strip()
    components.prepare_waypoint(paths, pod)  # minted once: a restart keeps the token
    assert token_path.read_text().strip() == token
    tokens = TokenStore(paths.controlplane / CA_SUBDIR / TOKEN_FILE)
    identity = SpiffeId("cluster.local", "shop", "waypoint")
    caller = tokens.authenticate(token)
    assert caller == WorkloadCaller(identity)
    # The CA's decision (ca.service): its own identity, asked for or not; another one is refused.
    service = CertificateService(authority=None, tokens=tokens, placement=None)  # no signing here
    assert service.authorize(caller, None) == identity
    assert service.authorize(caller, str(identity)) == identity
    with pytest.raises(Exception, match="may not obtain a certificate"):
        service.authorize(caller, "spiffe://cluster.local/ns/shop/sa/web")


def test_the_waypoint_pod_is_never_captured_even_in_an_ambient_namespace():
    pod_status = {("shop", "waypoint-waypoint"): PodStatus("10.244.0.5", "node-0", True)}
    view = compute_view(state_of(GATEWAY, NAMESPACE, pod_status=pod_status))
    (workload,) = [w for w in view.workloads.values() if w.name == "waypoint-waypoint"]
    assert workload.tunnel_protocol == wpb.NONE
    # The node agent's own choice, over what discovery sends it; an ambient pod beside it would be taken.
    assert pods_to_capture({"w": wpb.Address(workload=workload)}, "node-0") == {}
    web = wpb.Workload()
    web.CopyFrom(workload)
    web.tunnel_protocol = wpb.HBONE
    assert len(pods_to_capture({"w": wpb.Address(workload=web)}, "node-0")) == 1


async def test_the_waypoint_pod_is_ready_when_its_proxy_answers_200_on_15021():
    probe, container = components.WAYPOINT_READINESS, r.Container("waypoint")

    async def answering(status: bytes):
        async def connect(ip: str, port: int):
            assert (ip, port) == ("10.244.0.5", 15021)
            client, server = trio.testing.memory_stream_pair()

            async def serve() -> None:
                request = await server.receive_some()
                assert request.startswith(b"GET /healthz/ready HTTP/1.1")
                await server.send_all(b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\n\r\n")

            nursery.start_soon(serve)
            return client
        return await probe_once(probe, container, "10.244.0.5", connect=connect, run_command=None)

    async def refused(ip: str, port: int):
        raise ConnectionRefusedError(111, "Connection refused")

    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            assert (await answering(b"200 OK")).ok
            not_yet = await answering(b"503 Service Unavailable")
            assert not not_yet.ok and not_yet.message == "GET http://10.244.0.5:15021/healthz/ready returned 503"
            down = await probe_once(probe, container, "10.244.0.5", connect=refused, run_command=None)
            assert not down.ok and down.message == "connect to 10.244.0.5:15021 refused"


def test_the_status_lists_each_waypoint_its_pod_readiness_and_its_users():
    state = state_of(GATEWAY, NAMESPACE)
    pods = [{"namespace": "shop", "name": "waypoint-waypoint", "ready": "0/1", "all_ready": False,
             "state": "Running", "message": "waypoint: GET http://10.244.0.5:15021/healthz/ready returned 503"}]
    (entry,) = waypoint_entries(state, pods)
    assert entry["for"] == "all" and entry["pod"] == "waypoint-waypoint" and not entry["programmed"]
    assert entry["used_by"] == ["namespace shop", "service shop/web"]
    assert programmed_condition(entry)[:2] == ("False", "NoResources")
    (ready,) = waypoint_entries(state, [{**pods[0], "ready": "1/1", "all_ready": True}])
    assert ready["programmed"] and programmed_condition(ready)[:2] == ("True", "Programmed")
    assert waypoint_entries(state_of(NAMESPACE), pods) == []


class FakeSupervisor:
    def __init__(self) -> None:
        self.started: dict[str, object] = {}
        self.stopped: list[str] = []

    async def start(self, spec):
        self.started[spec.name] = spec
        return self.status()[spec.name]

    async def stop(self, name: str, timeout=None):
        self.stopped.append(name)

    def status(self):
        return {name: ProcessStatus(name, ProcessState.RUNNING, 4242, 0, None)
                for name in self.started if name not in self.stopped}


async def test_the_lab_starts_a_waypoint_once_its_ca_exists_and_stops_it_with_its_gateway(tmp_path, monkeypatch):
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "gw.yaml").write_text(GATEWAY)
    paths = LabPaths.of("t", tmp_path / "state")
    (paths.controlplane / CA_SUBDIR).mkdir(parents=True)
    lab = Lab(LabConfig("t", config_dir, node_count=1), paths)
    lab.supervisor = FakeSupervisor()
    now = [0.0]
    lab.directory = ConfigDirectory(config_dir, lab.registry, clock=lambda: now[0])
    lab.directory.scan()
    desired = desired_pods(lab.registry.state(), 1)
    lab.plan = plan_lab("t", lab._pod_specs(desired), 1)
    probed = []

    async def ready_at_once(ready, placed, container, plan):
        probed.append(plan.readiness_probe)
        ready[plan.name] = (True, "GET http://10.244.0.2:15021/healthz/ready returned 200")
        lab._notify()
        await trio.sleep_forever()

    monkeypatch.setattr(lab.probes, "readiness", ready_at_once)
    monkeypatch.setattr(daemon.network, "remove_pod", lambda plan, pod: None)
    runtime = lab.pods[("shop", "waypoint-waypoint")] = daemon._PodRuntime(desired[("shop", "waypoint-waypoint")])
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            lab._nursery = nursery
            await lab._start_pod(runtime)
            await trio.testing.wait_all_tasks_blocked()
            assert lab.supervisor.started == {}  # the control plane's CA first: it mints the token
            assert lab.status()["pods"][0]["state"] == "ContainerCreating"
            lab._controlplane_up = True
            lab._notify()
            await lab._wait_until(lambda: runtime.ready.get("waypoint", (False,))[0])
            assert list(lab.supervisor.started) == ["waypoint-shop.waypoint"] and probed == [
                components.WAYPOINT_READINESS]
            assert components.waypoint_token_path(paths, "shop", "waypoint").exists()
            status = lab.status()
            assert status["pods"][0]["ready"] == "1/1" and status["pods"][0]["dataplane_mode"] == "none"
            assert status["waypoints"][0]["programmed"] and status["waypoints"][0]["for"] == "all"
            # The Gateway goes: its pod, and so its proxy, goes with it.
            (config_dir / "gw.yaml").unlink()
            lab.directory.scan()
            now[0] += 60  # the deletion has settled
            assert lab.directory.scan()
            await lab.reconcile()
            assert lab.supervisor.stopped == ["waypoint-shop.waypoint"] and lab.pods == {}
            assert lab.status()["waypoints"] == []
            nursery.cancel_scope.cancel()
