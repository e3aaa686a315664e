"""The Kubernetes API source against ``kube_fake_api`` (an in-test HTTP server on 127.0.0.1 that speaks
the list/watch protocol: no API server can run here), through the official client, feeding a real
Registry; plus the pure parts (projection, pod status) as tables.

Waiting is on events, never on time: ``Progress.until`` wakes on each batch the source applies, and
``server_saw`` blocks (in a worker thread) on the fake server's condition variable."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import AsyncIterator, Callable

import kubernetes.client
import pytest
import trio

from controlplane import kube_client as kc
from controlplane.kube_client import ApiError, KubeApi
from controlplane.kube_source import KubeSource, parse_object, pod_owner, pod_status, project, registry_name
from controlplane.registry import Registry
from controlplane.view import MeshConfig, PodStatus, compute_view, workload_uid
from mesh import resources as r
from mesh.api import workload_pb2 as wpb
from mesh.backoff import Backoff
from tests.controlplane.kube_fake_api import TOKEN, FakeApi

FAST = Backoff(initial=0.01, cap=0.05, jitter=0)
CORE = (kc.NAMESPACE, kc.NODE, kc.POD, kc.SERVICE)
ISTIO = (kc.AUTHORIZATION_POLICY, kc.PEER_AUTHENTICATION)


def namespace(name: str, labels: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}


def pod(name: str, ns: str = "shop", *, ip: str = "10.244.1.5", node: str = "node-1", ready: bool = True,
        labels: dict | None = None) -> dict:
    """A Pod as the API server returns it: with the fields the kubelet and admission fill in."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name, **(labels or {})},
                     "uid": f"uid-{name}", "creationTimestamp": "2026-01-01T00:00:00Z",
                     "managedFields": [{"manager": "kubectl", "operation": "Update"}]},
        "spec": {"serviceAccountName": name, "nodeName": node, "enableServiceLinks": True, "priority": 0,
                 "preemptionPolicy": "PreemptLowerPriority", "initContainers": [{"name": "init", "image": "busybox"}],
                 "containers": [{"name": name, "image": "registry.k8s.io/e2e-test-images/agnhost:2.45",
                                 "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                                 "readinessProbe": {"httpGet": {"path": "/", "port": 8080, "scheme": "HTTPS"}},
                                 "resources": {}, "terminationMessagePath": "/dev/termination-log"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "192.168.0.2",
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"},
                                  {"type": "PodScheduled", "status": "True"}]},
    }


def service(name: str, ns: str = "shop", cluster_ip: str = "10.96.5.5") -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "ipFamilies": ["IPv4"],
                     "ipFamilyPolicy": "SingleStack", "sessionAffinity": "None", "selector": {"app": name},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]},
            "status": {"loadBalancer": {}}}


def policy(name: str, ns: str = "shop", *, port: object = "8080") -> dict:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                     "rules": [{"to": [{"operation": {"ports": [port]}}]}]}}


def kube_api(fake: FakeApi, token: str = TOKEN) -> KubeApi:
    configuration = kubernetes.client.Configuration(host=fake.url, api_key={"BearerToken": token},
                                                    api_key_prefix={"BearerToken": "Bearer"})
    return KubeApi(kubernetes.client.ApiClient(configuration), page_size=2)


class Progress:
    """Wakes a test on each batch the source applies."""

    def __init__(self, source: KubeSource) -> None:
        self._event = trio.Event()
        source.on_change(self._poke)

    def _poke(self) -> None:
        self._event.set()

    async def until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        with trio.fail_after(timeout):
            while not predicate():
                await self._event.wait()
                self._event = trio.Event()


async def server_saw(fake: FakeApi, predicate: Callable[[], bool]) -> None:
    await trio.to_thread.run_sync(fake.wait_for, predicate)


def names(registry: Registry, kind: type) -> set[str]:
    return {f"{res.meta.namespace}/{res.meta.name}" for res in registry.resources() if isinstance(res, kind)}


@pytest.fixture
def fake() -> FakeApi:
    api = FakeApi(CORE + ISTIO)
    with api.running():
        yield api


@pytest.fixture
async def running(fake: FakeApi) -> AsyncIterator[tuple[KubeSource, Registry, Progress]]:
    fake.put(namespace("shop", {"istio.io/dataplane-mode": "ambient"}))
    fake.put(pod("web"))
    fake.put(pod("db", ip="10.244.2.7", node="node-2"))
    fake.put(service("web"))
    registry = Registry()
    source = KubeSource(kube_api(fake), registry, CORE + ISTIO + (kc.WASM_PLUGIN,), backoff=FAST, absent_retry=0.05)
    progress = Progress(source)
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run)
        # Every served kind is being watched before the test changes anything (a watch opened after a
        # test's end_watches would not end).
        served = {k.collection_path() for k in CORE + ISTIO}
        await server_saw(fake, lambda: {c for c, _ in fake.watch_requests} >= served)
        yield source, registry, progress
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- list and watch


async def test_initial_list_fills_the_registry_through_pages(running, fake):
    source, registry, _ = running
    assert names(registry, r.Pod) == {"shop/web", "shop/db"}
    assert names(registry, r.Service) == {"shop/web"}
    assert names(registry, r.Namespace) == {"/shop"}
    assert registry.pod_statuses() == {("shop", "web"): PodStatus("10.244.1.5", "node-1", True),
                                       ("shop", "db"): PodStatus("10.244.2.7", "node-2", True)}
    assert fake.list_requests.count(kc.POD.collection_path()) == 1  # one list, two pages (page_size 2 ... 2 pods)
    assert source.watches["Pod"].synced


async def test_watch_events_add_modify_and_delete(running, fake):
    _, registry, progress = running
    fake.put(pod("cart", ip="10.244.1.9"))
    await progress.until(lambda: "shop/cart" in names(registry, r.Pod))
    fake.put(pod("cart", ip="10.244.1.9", ready=False, labels={"version": "v2"}))
    await progress.until(lambda: registry.pod_statuses().get(("shop", "cart")) == PodStatus("10.244.1.9", "node-1",
                                                                                              False))
    cart = next(p for p in registry.resources() if isinstance(p, r.Pod) and p.meta.name == "cart")
    assert cart.meta.labels["version"] == "v2"
    fake.delete(kc.POD, "shop", "cart")
    await progress.until(lambda: "shop/cart" not in names(registry, r.Pod))
    assert ("shop", "cart") not in registry.pod_statuses()


async def test_a_bookmark_advances_the_version_the_next_watch_resumes_from(running, fake):
    version = fake.bookmark(kc.POD)
    await server_saw(fake, lambda: fake.events[-1][0] == int(version))
    # The bookmark reached the source once the server has nothing older to send: end the stream, and
    # the re-watch must ask for the bookmark's version (not the list's).
    fake.end_watches()
    await server_saw(fake, lambda: (kc.POD.collection_path(), version) in fake.watch_requests)


async def test_410_relists_and_objects_deleted_meanwhile_disappear(running, fake):
    _, registry, progress = running
    fake.delete(kc.POD, "shop", "db", quietly=True)  # no watch saw it
    fake.put(pod("new", ip="10.244.1.20"))
    fake.compact()
    fake.send_error(kc.POD, 410)
    await progress.until(lambda: names(registry, r.Pod) == {"shop/web", "shop/new"})
    assert ("shop", "db") not in registry.pod_statuses()
    assert fake.list_requests.count(kc.POD.collection_path()) == 2


async def test_http_410_on_the_watch_call_relists(running, fake):
    _, registry, progress = running
    fake.gone_as_http = True
    fake.delete(kc.POD, "shop", "web", quietly=True)
    fake.compact()
    fake.drop_watches()
    await progress.until(lambda: names(registry, r.Pod) == {"shop/db"})


async def test_a_dropped_stream_resumes_from_the_last_version(running, fake):
    _, registry, progress = running
    stored = fake.put(pod("cart", ip="10.244.1.9"))
    await progress.until(lambda: "shop/cart" in names(registry, r.Pod))
    lists = fake.list_requests.count(kc.POD.collection_path())
    fake.drop_watches()  # mid-stream: no final chunk
    await server_saw(fake, lambda: (kc.POD.collection_path(), stored["metadata"]["resourceVersion"])
                     in fake.watch_requests)
    fake.put(pod("late", ip="10.244.1.10"))
    await progress.until(lambda: "shop/late" in names(registry, r.Pod))
    assert fake.list_requests.count(kc.POD.collection_path()) == lists  # resumed, not re-listed


async def test_an_absent_crd_is_not_fatal_and_is_picked_up_once_installed(running, fake, caplog):
    source, registry, progress = running
    assert not source.watches["WasmPlugin"].synced and source.watches["WasmPlugin"].absent
    fake.put(pod("cart", ip="10.244.1.9"))  # the other kinds flow meanwhile
    await progress.until(lambda: "shop/cart" in names(registry, r.Pod))
    fake.serve(kc.WASM_PLUGIN)
    await server_saw(fake, lambda: any(c == kc.WASM_PLUGIN.collection_path() for c, _ in fake.watch_requests))
    assert source.watches["WasmPlugin"].synced  # listed (empty), then watched


async def test_a_malformed_object_gets_a_problem_and_the_rest_flows(running, fake, caplog):
    _, registry, progress = running
    caplog.set_level(logging.ERROR, "ambient.kube")
    fake.put(policy("bad", port="http"))
    fake.put(policy("good"))  # after the bad one, on the same stream
    fake.put(pod("cart", ip="10.244.1.9"))
    await progress.until(lambda: "shop/cart" in names(registry, r.Pod) and "shop/good" in names(
        registry, r.AuthorizationPolicy))
    assert "shop/bad" not in names(registry, r.AuthorizationPolicy)
    assert any("AuthorizationPolicy shop/bad: spec.rules[0].to[0].operation.ports[0]" in m and "port" in m
               for m in caplog.messages)
    # A bad edit of a good object keeps its previous version, as a broken file does.
    fake.put(policy("good", port="http"))
    fake.put(policy("later"))
    await progress.until(lambda: "shop/later" in names(registry, r.AuthorizationPolicy))
    assert "shop/good" in names(registry, r.AuthorizationPolicy)


async def test_pod_status_reaches_the_view_as_an_hbone_workload(running, fake):
    """End to end: a Namespace labelled ambient and a Pod with an IP on a node → an HBONE Workload."""
    _, registry, progress = running
    fake.put(namespace("pay", {"istio.io/dataplane-mode": "ambient"}))
    fake.put(pod("api", "pay", ip="10.244.3.3", node="node-3"))
    uid = workload_uid(MeshConfig(), "pay", "api")

    def hbone() -> bool:  # the Namespace and the Pod come on two streams, in either order
        workload = compute_view(registry.state()).workloads.get(uid)
        return workload is not None and workload.tunnel_protocol == wpb.HBONE

    await progress.until(hbone)
    workload = compute_view(registry.state()).workloads[uid]
    assert (workload.node, workload.status) == ("node-3", wpb.HEALTHY)
    assert bytes(workload.addresses[0]) == bytes([10, 244, 3, 3])
    web = compute_view(registry.state()).workloads[workload_uid(MeshConfig(), "shop", "web")]
    assert "shop/web.shop.svc.cluster.local" in web.services  # the Service selects it, targetPort by name
    # Unlabelling the namespace takes the pod out of the mesh.
    fake.put(namespace("pay"))
    await progress.until(lambda: compute_view(registry.state()).workloads[uid].tunnel_protocol == wpb.NONE)


async def test_a_wrong_token_is_refused_and_never_logged(fake, caplog):
    caplog.set_level(logging.DEBUG)
    api = kube_api(fake, token="wrong-secret-token")
    with pytest.raises(ApiError) as info:
        await trio.to_thread.run_sync(api.list_all, kc.POD)
    assert info.value.status == 401
    assert "wrong-secret-token" not in str(info.value) and "wrong-secret-token" not in caplog.text


# ---------------------------------------------------------------- pure parts


def test_projection_keeps_what_the_mesh_reads_and_drops_what_only_the_lab_runs():
    projected = project("Pod", pod("web"))
    assert projected["spec"] == {"serviceAccountName": "web", "nodeName": "node-1", "containers": [
        {"name": "web", "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}]}]}
    assert "status" not in projected and "managedFields" not in projected["metadata"]
    resources, problems = parse_object("Pod", pod("web"))
    assert [p for p in problems] == [] and isinstance(resources[0], r.Pod)
    external = copy.deepcopy(service("ext"))
    external["spec"] = {"type": "ExternalName", "externalName": "example.com"}
    assert project("Service", external) is None


@pytest.mark.parametrize(("change", "expected"), [
    ({}, PodStatus("10.244.1.5", "node-1", True)),
    ({"status": {"phase": "Pending", "conditions": []}}, None),
    ({"status": {"phase": "Succeeded", "podIP": "10.244.1.5"}}, None),
    ({"spec": {"nodeName": "node-1", "hostNetwork": True}}, None),
    ({"status": {"phase": "Running", "podIP": "fd00::5", "podIPs": [{"ip": "fd00::5"}, {"ip": "10.244.1.6"}]}},
     PodStatus("10.244.1.6", "node-1", False)),
])
def test_pod_status_from_the_api(change, expected):
    obj = pod("web")
    obj.update(change)
    assert pod_status(obj) == expected


def test_a_replicaset_pod_is_named_after_its_deployment():
    obj = pod("web-5d8f7c9b6-x2x2x", labels={"pod-template-hash": "5d8f7c9b6"})
    obj["metadata"]["ownerReferences"] = [{"kind": "ReplicaSet", "name": "web-5d8f7c9b6", "apiVersion": "apps/v1"}]
    assert pod_owner(obj) == "Deployment/web"
    resources, _ = parse_object("Pod", obj)
    assert resources[0].owner == "Deployment/web"


def test_registry_names_say_kind_namespace_and_name():
    assert registry_name("Pod", ("shop", "web")) == "kubernetes:Pod/shop/web"
    assert registry_name("Namespace", ("", "shop")) == "kubernetes:Namespace/shop"


async def test_a_list_page_past_its_bound_is_refused(fake):
    fake.put(pod("web"))
    configuration = kubernetes.client.Configuration(host=fake.url, api_key={"BearerToken": TOKEN},
                                                    api_key_prefix={"BearerToken": "Bearer"})
    api = KubeApi(kubernetes.client.ApiClient(configuration), max_page_bytes=512)
    with pytest.raises(ApiError, match="larger than 512 bytes"):
        await trio.to_thread.run_sync(api.list_all, kc.POD)
    assert len(json.dumps(fake.get(kc.POD, "shop", "web"))) > 512  # one pod: the page is over the bound
