"""Write-back against ``kube_fake_api`` (an in-test HTTP server standing in for the API server): a waypoint
Gateway in the API gets its ServiceAccount, Service and Deployment by server-side apply, and its status
(Accepted, Programmed, the Service's cluster IP) on the status subresource."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import trio

from controlplane import kube_client as kc
from controlplane.kube_source import KubeSource
from controlplane.kube_waypoints import WaypointTemplate
from controlplane.kube_writeback import WaypointWriter
from controlplane.registry import Registry
from controlplane.view import compute_view
from tests.controlplane.kube_fake_api import FakeApi
from tests.controlplane.test_kube_source import FAST, kube_api, namespace, server_saw

KINDS = (kc.NAMESPACE, kc.POD, kc.SERVICE, kc.GATEWAY)


def gateway(name: str = "waypoint", ns: str = "shop", *, listeners: list | None = None, generation: int = 1) -> dict:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": ns, "generation": generation,
                         "labels": {"istio.io/waypoint-for": "service"}},
            "spec": {"gatewayClassName": "istio-waypoint",
                     "listeners": listeners if listeners is not None else [
                         {"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}


@pytest.fixture
def fake() -> FakeApi:
    api = FakeApi(KINDS)
    with api.running():
        yield api


@pytest.fixture
async def writer(fake: FakeApi) -> AsyncIterator[WaypointWriter]:
    fake.put(namespace("shop", {"istio.io/dataplane-mode": "ambient"}))
    registry = Registry()
    api = kube_api(fake)
    source = KubeSource(api, registry, KINDS, backoff=FAST)
    writer = WaypointWriter(api, source, WaypointTemplate(image="registry.example/ambient-mesh:1.0"), "ROOT PEM",
                            backoff=FAST, clock=lambda: datetime(2026, 1, 1, tzinfo=UTC))
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run)
        await nursery.start(writer.run)
        yield writer
        nursery.cancel_scope.cancel()


def applied_paths(fake: FakeApi) -> list[str]:
    with fake._lock:
        return [path for path, _, _ in fake.applied]


async def test_a_waypoint_gateway_gets_its_deployment_and_status(writer, fake):
    fake.put(gateway())
    deployment_path = kc.DEPLOYMENT.object_path("shop", "waypoint")
    await server_saw(fake, lambda: deployment_path in [p for p, _, _ in fake.applied])
    paths = applied_paths(fake)
    for kind in (kc.CONFIG_MAP, kc.SERVICE_ACCOUNT, kc.SERVICE):
        name = "istio-ca-root-cert" if kind is kc.CONFIG_MAP else "waypoint"
        assert kind.object_path("shop", name) in paths
    _, query, body = next(a for a in fake.applied if a[0] == deployment_path)
    assert query == {"fieldManager": "ambient-controlplane", "force": "true"}
    uid = fake.get(kc.GATEWAY, "shop", "waypoint")["metadata"]["uid"]
    assert body["metadata"]["ownerReferences"][0]["uid"] == uid
    assert fake.get(kc.CONFIG_MAP, "shop", "istio-ca-root-cert")["data"] == {"root-cert.pem": "ROOT PEM"}
    # The applied Service comes back through the watch with a cluster IP: the status says so.
    status_path = kc.GATEWAY.object_path("shop", "waypoint") + "/status"

    def programmed() -> bool:
        status = (fake.objects[kc.GATEWAY.collection_path()][("shop", "waypoint")]).get("status", {})
        return any(c["type"] == "Programmed" and c["status"] == "True" for c in status.get("conditions", []))

    await server_saw(fake, programmed)
    status = fake.get(kc.GATEWAY, "shop", "waypoint")["status"]
    cluster_ip = fake.get(kc.SERVICE, "shop", "waypoint")["spec"]["clusterIP"]
    assert status["addresses"] == [{"type": "IPAddress", "value": cluster_ip}]
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"Accepted": "True", "Programmed": "True"}
    assert status_path in applied_paths(fake)
    # The waypoint's real Service replaces the one the view would make up for it.
    view = compute_view(writer.source.registry.state())
    assert "shop/waypoint.shop.svc.cluster.local" in view.services and "shop/waypoint" in view.waypoints


async def test_nothing_is_applied_again_when_nothing_changed(writer, fake):
    fake.put(gateway())
    await server_saw(fake, lambda: any(p.endswith("/status") and b["status"].get("addresses")
                                       for p, _, b in fake.applied))
    count = len(applied_paths(fake))
    fake.put(namespace("other"))  # an unrelated change: a round that writes nothing
    fake.put(gateway(generation=2))  # the Gateway's spec changed: only its status (observedGeneration)
    await server_saw(fake, lambda: any(p.endswith("/status") and b["status"]["conditions"][0]["observedGeneration"] == 2
                                       for p, _, b in fake.applied))
    assert [p for p in applied_paths(fake)[count:]] == [kc.GATEWAY.object_path("shop", "waypoint") + "/status"]


async def test_an_invalid_gateway_is_reported_in_its_status(writer, fake):
    fake.put(gateway(listeners=[{"name": "http", "port": 80, "protocol": "HTTP"}]))
    await server_saw(fake, lambda: any(p.endswith("/status") for p, _, _ in fake.applied))
    _, _, body = next(a for a in fake.applied if a[0].endswith("/status"))
    accepted = body["status"]["conditions"][0]
    assert (accepted["type"], accepted["status"], accepted["reason"]) == ("Accepted", "False", "Invalid")
    assert "15008" in accepted["message"]
    assert kc.DEPLOYMENT.object_path("shop", "waypoint") not in applied_paths(fake)
