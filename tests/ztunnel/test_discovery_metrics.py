"""ztunnel's discovery and workload-manager metrics as Istio's ztunnel exports them
(``src/xds/metrics.rs``, ``src/inpod/metrics.rs``): a real discovery client against a real control
plane (the fixtures of tests/controlplane/xds/test_discovery.py), and a real ``PodSet``."""

from __future__ import annotations

import socket

import trio

from mesh.api import zds_pb2
from mesh.xds.client import ClientConfig, DiscoveryClient
from mesh.zds import ZdsServer
from tests.controlplane.xds import test_discovery as xds_tests
from tests.controlplane.xds.helpers import ADDRESS, AUTHZ
from tests.controlplane.xds.test_discovery import BOUND, FAST_BACKOFF, running
from tests.ztunnel.test_metrics import key, samples
from ztunnel.metrics import ZtunnelMetrics
from ztunnel.pods import PodSet

# The real control plane of the discovery tests, and their check that no discovery thread outlives a test.
authority, plane, token, no_leaked_threads = (xds_tests.authority, xds_tests.plane, xds_tests.token,
                                              xds_tests.no_leaked_threads)

TERMINATIONS = "istio_xds_connection_terminations_total"
MESSAGES = "istio_message_types_total"
SIZE = "istio_total_messages_size_total"


def discovery_samples(metrics: ZtunnelMetrics) -> dict[tuple[str, tuple], float]:
    return {k: v for k, v in samples(metrics).items()
            if k[0] in (TERMINATIONS, MESSAGES, SIZE) or k[0].startswith("istio_inpod_")}


async def test_messages_are_counted_per_type_url_and_a_server_restart_is_a_reconnect(plane, token):
    client = DiscoveryClient(plane.config(token))
    metrics = ZtunnelMetrics()
    metrics.follow(discovery=client)
    assert discovery_samples(metrics) == {key(SIZE, {}): 0}  # the pods are not followed: no inpod families
    async with running(client):
        found = discovery_samples(metrics)
        # One response per type on connecting: the plane's two workloads, then its policy.
        assert found[key(MESSAGES, {"url": ADDRESS})] == 1 and found[key(MESSAGES, {"url": AUTHZ})] == 1
        assert found[key(SIZE, {})] > 0
        assert not any(k[0] == TERMINATIONS for k in found)
        with trio.fail_after(BOUND):
            plane.stop()
            await client.wait_until(lambda: sum(client.terminations.values()) >= 1)
    found = discovery_samples(metrics)
    assert {k: v for k, v in found.items() if k[0] == TERMINATIONS} == {key(TERMINATIONS, {"reason": "Reconnect"}): 1}


async def test_an_unreachable_control_plane_is_a_connection_error():
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    pem = b"-----BEGIN CERTIFICATE-----\n(a mesh root)\n-----END CERTIFICATE-----\n"
    client = DiscoveryClient(ClientConfig(target=f"127.0.0.1:{port}", root_pem=pem, token="t",
                                          subscriptions={ADDRESS: None}, backoff=FAST_BACKOFF))
    metrics = ZtunnelMetrics()
    metrics.follow(discovery=client)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run)
        with trio.fail_after(BOUND):
            await client.wait_until(lambda: client.terminations.get("ConnectionError", 0) >= 2)
        nursery.cancel_scope.cancel()
    found = discovery_samples(metrics)
    assert found[key(TERMINATIONS, {"reason": "ConnectionError"})] >= 2
    assert [k for k in found if k[0] == TERMINATIONS] == [key(TERMINATIONS, {"reason": "ConnectionError"})]
    assert not any(k[0] == MESSAGES for k in found)


class StandInPod:
    """What ``PodSet`` needs of a pod, without a netns and capture maps (those need a lab)."""

    def __init__(self, request) -> None:
        self.uid = request.add.uid
        self.key = f"{request.add.workload_info.namespace}/{request.add.workload_info.name}"
        self.scope = trio.CancelScope()
        self.done = trio.Event()

    def release(self) -> None:
        pass


def inpod(metrics: ZtunnelMetrics) -> dict[str, float]:
    return {k[0].removeprefix("istio_inpod_"): v for k, v in samples(metrics).items()
            if k[0].startswith("istio_inpod_")}


async def test_workload_manager_gauges_follow_the_pods_the_node_agent_sends(tmp_path, monkeypatch):
    metrics = ZtunnelMetrics()
    changed = [trio.Event()]

    def notify() -> None:  # PodSet calls it after each request of the agent is done
        changed[0].set()
        changed[0] = trio.Event()

    async def until(predicate) -> None:
        with trio.fail_after(BOUND):
            while not predicate():
                await changed[0].wait()

    pods = PodSet(str(tmp_path / "zds.sock"), changed=notify)
    metrics.follow(pods=pods)
    during_add: list[dict[str, float]] = []

    def pod_from_request(request, fds, dns=False):
        during_add.append(inpod(metrics))  # scraped while the pod's listeners are being made
        return StandInPod(request)

    monkeypatch.setattr("ztunnel.pods.pod_from_request", pod_from_request)
    server = ZdsServer(tmp_path / "zds.sock")

    async def serve(pod) -> None:
        await trio.sleep_forever()

    async def added(*uids: str) -> None:
        for uid in uids:
            await server.add(uid, zds_pb2.WorkloadInfo(name=uid, namespace="shop", service_account="sa"))
        with trio.fail_after(BOUND):
            for uid in uids:
                await server.wait_acknowledged(uid)

    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        nursery.start_soon(pods.run, serve)
        await added("a", "b")
        assert inpod(metrics) == {"active_proxy_count": 2, "pending_proxy_count": 0,
                                  "proxies_started_total": 2, "proxies_stopped_total": 0}
        assert during_add[0] == {"active_proxy_count": 0, "pending_proxy_count": 1,
                                 "proxies_started_total": 0, "proxies_stopped_total": 0}
        await server.remove("a")
        await until(lambda: "a" not in pods.pods)
        await added("c")
        assert inpod(metrics) == {"active_proxy_count": 2, "pending_proxy_count": 0,
                                  "proxies_started_total": 3, "proxies_stopped_total": 1}
        await server.aclose()
        nursery.cancel_scope.cancel()
