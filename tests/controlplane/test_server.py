"""The control plane end to end: YAML directory and pods.json in, discovery and the CA out, over real gRPC/TLS."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import grpc
import pytest
import trio

from ca.client import CaClient, CaRequestFailed
from ca.server import ServeConfig
from ca.tokens import NodeCaller, TokenStore
from controlplane import server as cp
from controlplane.registry import Registry
from controlplane.view import MeshConfig, PodStatus, workload_uid
from lab.launch import run_ambient, start_controlplane
from mesh.api import workload_pb2 as wpb
from mesh.api.types import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL
from mesh.identity import SpiffeId
from mesh.parse import parse_text
from mesh.xds.client import ClientConfig, DiscoveryClient

APP = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  serviceAccountName: web
  containers: [{name: web, command: [sleep, infinity], ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
spec:
  serviceAccountName: db
  containers: [{name: db, command: [sleep, infinity]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"""
POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-from-shop, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  rules: [{from: [{source: {namespaces: [shop]}}]}]
"""
WEB = workload_uid(MeshConfig(), "shop", "web")
DB = workload_uid(MeshConfig(), "shop", "db")
WEB_SERVICE = "shop/web.shop.svc.cluster.local"


def write_pods(state: Path, pods: dict[str, tuple[str, str]]) -> None:
    data = {"pods": {key: {"ip": ip, "node": node} for key, (ip, node) in pods.items()}}
    tmp = state / ".pods.json.tmp"
    tmp.write_text(json.dumps(data))
    tmp.replace(state / "pods.json")  # atomically, as the lab does


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    config, state = tmp_path / "config", tmp_path / "state"
    config.mkdir()
    state.mkdir()
    (config / "app.yaml").write_text(APP)
    (config / "policy.yaml").write_text(POLICY)
    write_pods(state, {"shop/web": ("10.244.1.5", "node-1"), "shop/db": ("10.244.2.7", "node-2")})
    return config, state


async def start(nursery: trio.Nursery, config: Path, state: Path) -> tuple[int, str]:
    settings = cp.ControlPlaneConfig(config, state, ServeConfig(listen="127.0.0.1:0", workers=16), MeshConfig())
    port, _ = await nursery.start(cp.serve, settings)
    token = TokenStore(state / "ca" / "tokens.json").create(NodeCaller("node-1"))
    return port, token


def client_for(state: Path, port: int, token: str) -> DiscoveryClient:
    root = (state / "ca" / "root-cert.pem").read_bytes()
    return DiscoveryClient(ClientConfig(f"127.0.0.1:{port}", root, token,
                                        {ADDRESS_TYPE_URL: None, AUTHORIZATION_TYPE_URL: None},
                                        server_name="localhost"))


async def next_change(changes, type_url: str = ADDRESS_TYPE_URL):
    with trio.fail_after(15):
        async for change in changes:
            if change.type_url == type_url:
                return change


async def test_yaml_and_pod_status_flow_to_discovery_one_resource_at_a_time(dirs):
    config, state = dirs
    async with trio.open_nursery() as nursery:
        port, token = await start(nursery, config, state)
        client = client_for(state, port, token)
        with trio.fail_after(15):
            await nursery.start(client.run)
        addresses = client.view(ADDRESS_TYPE_URL)
        assert set(addresses) == {WEB, DB, WEB_SERVICE}
        web = addresses[WEB].workload
        assert web.tunnel_protocol == wpb.NONE and web.node == "node-1"
        assert web.authorization_policies == ["shop/web-from-shop"]
        port = web.services[WEB_SERVICE].ports[0]
        assert (port.service_port, port.target_port) == (80, 8080)
        assert len(addresses[WEB_SERVICE].service.addresses) == 1  # a VIP was assigned
        assert set(client.view(AUTHORIZATION_TYPE_URL)) == {"shop/web-from-shop"}

        # Enrol the namespace: both pods change, the Service does not.
        changes = client.changes()
        enrolled = "metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}"
        (config / "app.yaml").write_text(APP.replace("metadata: {name: shop}", enrolled))
        change = await next_change(changes)
        assert change.updated == {WEB, DB} and not change.removed
        assert client.view(ADDRESS_TYPE_URL)[WEB].workload.tunnel_protocol == wpb.HBONE

        # A broken edit keeps that file's previous resources; a good edit elsewhere still applies.
        (config / "policy.yaml").write_text(POLICY.replace("rules:", "rules: [oops"))
        write_pods(state, {"shop/web": ("10.244.1.5", "node-1"), "shop/db": ("10.244.2.8", "node-2")})
        change = await next_change(changes)
        assert change.updated == {DB}
        assert set(client.view(AUTHORIZATION_TYPE_URL)) == {"shop/web-from-shop"}

        # A pod that stops running leaves the view through removed_resources.
        write_pods(state, {"shop/web": ("10.244.1.5", "node-1")})
        change = await next_change(changes)
        assert change.removed == {DB} and not change.updated
        nursery.cancel_scope.cancel()


async def test_the_ca_grants_node_impersonation_from_the_live_view(dirs):
    config, state = dirs
    async with trio.open_nursery() as nursery:
        port, token = await start(nursery, config, state)
        root = (state / "ca" / "root-cert.pem").read_bytes()

        def request(identity: SpiffeId):
            with CaClient(f"127.0.0.1:{port}", root, token, server_name="localhost") as ca:
                return ca.create_certificate(identity, 3600)  # always sends ImpersonatedIdentity

        web, db = SpiffeId("cluster.local", "shop", "web"), SpiffeId("cluster.local", "shop", "db")
        issued = await trio.to_thread.run_sync(request, web)  # web runs on node-1, the caller's node
        assert issued.identity == web
        with pytest.raises(CaRequestFailed) as refused:  # db runs on node-2
            await trio.to_thread.run_sync(request, db)
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        nursery.cancel_scope.cancel()


def test_controlplane_command_serves_until_sigterm(dirs, tmp_path):
    config, state = dirs
    with open(tmp_path / "log", "w") as log:
        server = start_controlplane(config, state, metrics=True, stderr=log)
        try:
            assert "discovery" in server.ready_line and server.metrics_url
        finally:
            server.proc.send_signal(signal.SIGTERM)
            assert server.proc.wait(timeout=15) == 0
    text = (tmp_path / "log").read_text()
    assert "view 1: 2 workloads, 1 services, 1 authorizations" in text


def test_controlplane_command_names_a_missing_config_directory(tmp_path):
    result = run_ambient("controlplane", "--config", str(tmp_path / "nope"), "--state", str(tmp_path), check=False)
    assert result.returncode == 1
    assert f"--config {tmp_path / 'nope'}: not a directory" in result.stderr


class Publishes:
    """Counts the control plane's publishes and lets a trio task wait for the next one."""

    def __init__(self, control: cp.ControlPlane) -> None:
        self.count = 0
        self._event = trio.Event()
        token = trio.lowlevel.current_trio_token()
        control.publisher.subscribe(lambda: token.run_sync_soon(self._published))

    def _published(self) -> None:
        self.count += 1
        self._event.set()
        self._event = trio.Event()

    async def next(self) -> None:
        await self._event.wait()


def web_ip(control: cp.ControlPlane) -> bytes | None:
    web = control.view.workloads.get(WEB) if control.view else None
    return web.addresses[0] if web else None


@pytest.fixture
def control() -> cp.ControlPlane:
    registry = Registry()
    registry.set_file("app.yaml", parse_text(APP, "app.yaml").resources)

    async def inline(fn):  # no virtual time passes while the view is computed
        return fn()

    return cp.ControlPlane(registry, offload=inline)


async def test_a_burst_of_changes_is_computed_and_published_once(control, autojump_clock):
    async with trio.open_nursery() as nursery:
        await nursery.start(control.run)
        publishes = Publishes(control)
        for i in range(1, 21):  # 20 changes, each well inside the quiet window of the one before
            control.registry.set_pod_status("shop", "web", PodStatus(f"10.244.1.{i}", "node-1"))
            await trio.sleep(cp.DEBOUNCE_QUIET / 4)
        with trio.fail_after(10):
            while web_ip(control) != bytes([10, 244, 1, 20]):
                await publishes.next()
        assert publishes.count == 1
        nursery.cancel_scope.cancel()


async def test_a_steady_stream_of_changes_is_still_published_every_debounce_max(control, autojump_clock):
    async with trio.open_nursery() as nursery:
        await nursery.start(control.run)
        publishes = Publishes(control)
        started = trio.current_time()
        i = 0
        while trio.current_time() - started < 3 * cp.DEBOUNCE_MAX:  # never quiet for DEBOUNCE_QUIET
            i += 1
            control.registry.set_pod_status("shop", "web", PodStatus(f"10.244.{i // 250}.{i % 250 + 1}", "node-1"))
            await trio.sleep(cp.DEBOUNCE_QUIET / 2)
        assert publishes.count >= 2  # not starved until the stream of changes ends
        nursery.cancel_scope.cancel()
