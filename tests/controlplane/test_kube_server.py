"""``ambient controlplane --kubernetes --kubeconfig FILE`` end to end, against ``kube_fake_api`` (an
in-test HTTP server on 127.0.0.1 speaking the API's list/watch protocol: no API server runs here):
the cluster's objects reach discovery over real gRPC/TLS, and the waypoint is written back."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import trio

from ca.server import ServeConfig
from ca.tokens import NodeCaller, TokenStore
from controlplane import kube_client as kc, server as cp
from controlplane.kube_waypoints import KubeOptions, WaypointTemplate
from controlplane.view import MeshConfig, workload_uid
from mesh.api import workload_pb2 as wpb
from mesh.api.types import ADDRESS_TYPE_URL
from mesh.errors import UsageError
from tests.controlplane.kube_fake_api import TOKEN, FakeApi
from tests.controlplane.test_kube_source import namespace, pod, server_saw, service
from tests.controlplane.test_kube_writeback import gateway
from tests.controlplane.test_server import client_for

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: "{url}"}}}}]
users: [{{name: controlplane, user: {{token: "{token}"}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: controlplane}}}}]
current-context: fake
"""


@pytest.fixture
def fake() -> FakeApi:
    api = FakeApi(kc.KINDS_READ[:6])  # not the routes' or Istio's CRDs: absent, which must not matter
    with api.running():
        yield api


def kubeconfig(tmp_path: Path, fake: FakeApi) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG.format(url=fake.url, token=TOKEN))
    return path


async def test_the_cluster_reaches_discovery_and_the_waypoint_is_deployed(tmp_path, fake):
    fake.put(namespace("shop", {"istio.io/dataplane-mode": "ambient"}))
    fake.put(pod("web"))
    fake.put(service("web"))
    fake.put(gateway())
    state = tmp_path / "state"
    state.mkdir()
    settings = cp.ControlPlaneConfig(None, state, ServeConfig(listen="127.0.0.1:0", workers=16), MeshConfig(),
                                     kubernetes=KubeOptions(kubeconfig(tmp_path, fake), WaypointTemplate()))
    web = workload_uid(MeshConfig(), "shop", "web")
    async with trio.open_nursery() as nursery:
        port, _ = await nursery.start(cp.serve, settings)
        token = TokenStore(state / "ca" / "tokens.json").create(NodeCaller("node-1"))
        client = client_for(state, port, token)
        with trio.fail_after(15):
            await nursery.start(client.run)
        addresses = client.view(ADDRESS_TYPE_URL)  # the first view already holds the cluster
        workload = addresses[web].workload
        assert (workload.tunnel_protocol, workload.node) == (wpb.HBONE, "node-1")
        assert "shop/web.shop.svc.cluster.local" in addresses
        # The waypoint was written back, with this control plane's root for its pods.
        await server_saw(fake, lambda: fake.get(kc.DEPLOYMENT, "shop", "waypoint") is not None)
        root = fake.get(kc.CONFIG_MAP, "shop", "istio-ca-root-cert")["data"]["root-cert.pem"]
        assert root == (state / "ca" / "root-cert.pem").read_text()
        nursery.cancel_scope.cancel()


async def test_service_account_tokens_reach_discovery_and_the_ca_through_token_review(tmp_path, fake):
    """With --kubernetes a workload presents its projected service-account token (audience istio-ca),
    as a waypoint pod does: reviewed by the API, it is good for discovery and for its own identity's
    certificate, and for nothing else; a token the API does not vouch for is refused by both."""
    from ca.client import CaClient, CaRequestFailed
    from ca.kube_auth import KubeAuthConfig
    from mesh.identity import SpiffeId

    fake.put(namespace("shop", {"istio.io/dataplane-mode": "ambient"}))
    state = tmp_path / "state"
    state.mkdir()
    settings = cp.ControlPlaneConfig(None, state, ServeConfig(listen="127.0.0.1:0", workers=16), MeshConfig(),
                                     kubernetes=KubeOptions(kubeconfig(tmp_path, fake), None),
                                     kube_auth=KubeAuthConfig("cluster.local"))
    waypoint = fake.issue("shop", "waypoint")
    async with trio.open_nursery() as nursery:
        port, _ = await nursery.start(cp.serve, settings)
        client = client_for(state, port, waypoint)
        with trio.fail_after(15):
            await nursery.start(client.run)  # discovery took the reviewed token
        root = (state / "ca" / "root-cert.pem").read_bytes()

        def certificates() -> tuple[SpiffeId, str]:
            with CaClient(f"127.0.0.1:{port}", root, waypoint, server_name="localhost") as ca:
                own = ca.create_certificate(SpiffeId("cluster.local", "shop", "waypoint")).identity
                with pytest.raises(CaRequestFailed) as other:
                    ca.create_certificate(SpiffeId("cluster.local", "shop", "web"))
            with CaClient(f"127.0.0.1:{port}", root, fake.issue("shop", "web") + "x", server_name="localhost") as ca:
                with pytest.raises(CaRequestFailed) as forged:
                    ca.create_certificate(SpiffeId("cluster.local", "shop", "web"))
            return own, f"{other.value} / {forged.value}"

        own, refusals = await trio.to_thread.run_sync(certificates)
        assert own == SpiffeId("cluster.local", "shop", "waypoint")
        assert "PERMISSION_DENIED" in refusals.split(" / ")[0] and "UNAUTHENTICATED" in refusals.split(" / ")[1]
        assert fake.reviews >= 2
        nursery.cancel_scope.cancel()


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cp.register(parser.add_subparsers())
    return parser.parse_args(["controlplane", *argv])


@pytest.mark.parametrize(("argv", "message"), [
    (("--state", "s"), "give --config DIR, --kubernetes, or both"),
    (("--state", "s", "--config", ".", "--kubeconfig", "k"), "--kubeconfig needs --kubernetes"),
    (("--state", "s", "--kubernetes", "--kubeconfig", "/nonexistent/kubeconfig"), "not a file"),
    (("--state", "s", "--kubernetes", "--waypoint-discovery-address", "istiod"), "expected HOST:PORT"),
    (("--state", "s", "--config", ".", "--token-audience", "istio-ca"), "--token-audience needs --kubernetes"),
    (("--state", "s", "--kubernetes", "--node-service-account", "ztunnel"), "node service account 'ztunnel'"),
])
def test_the_command_names_what_is_wrong(argv, message):
    with pytest.raises(UsageError, match=message):
        cp.cmd_controlplane(parse(*argv))


def test_kubernetes_flags_build_the_options(tmp_path):
    args = parse("--state", "s", "--kubernetes", "--waypoint-image", "reg.example/ambient:2")
    assert args.config is None and args.kubernetes and args.kubeconfig is None  # in-cluster
    assert args.waypoint_image == "reg.example/ambient:2"
