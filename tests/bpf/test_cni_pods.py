"""Whether a pod is captured: the label rule (the control plane's, property-checked), and the official
`kubernetes` client asking an API server. No API server runs here: a small HTTP server of the test, on
127.0.0.1 and an ephemeral port, answers the two GETs with the API's JSON (shapes as a real v1.31
server returns them) and records the requests."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes import client

from bpf.cni_pods import KubernetesPodLookup, PodLookupError
from mesh.resources import DATAPLANE_MODE, is_enrolled

TOKEN = "test-bearer-token-not-a-secret"


def labels(mode):
    return {} if mode is None else {DATAPLANE_MODE: mode, "app": "web"}


@pytest.mark.parametrize(("pod", "namespace", "captured"), [
    (None, "ambient", True), ("ambient", None, True), ("none", "ambient", False), (None, None, False),
    ("Ambient", None, False),
])
def test_the_pods_label_wins_and_only_ambient_enrolls(pod, namespace, captured):
    assert is_enrolled(labels(pod), labels(namespace)) is captured


def pod_json(namespace: str, name: str, pod_labels: dict) -> dict:
    return {"kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": namespace, "uid": "8c3b0a4e-0d5f-4a53-9a4e-2f1c9e0d7b11",
                         "resourceVersion": "48213", "creationTimestamp": "2026-12-01T10:00:00Z",
                         "labels": pod_labels},
            "spec": {"nodeName": "node-0", "serviceAccountName": "default",
                     "containers": [{"name": "web", "image": "nginx"}]},
            "status": {"phase": "Pending"}}


def namespace_json(name: str, ns_labels: dict) -> dict:
    return {"kind": "Namespace", "apiVersion": "v1",
            "metadata": {"name": name, "uid": "0e1d2c3b-4a59-6877-8695-a4b3c2d1e0f9", "resourceVersion": "112",
                         "labels": {"kubernetes.io/metadata.name": name, **ns_labels}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}


def status_json(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


class FakeApiServer:
    """Serves GET /api/v1/namespaces/<ns> and /api/v1/namespaces/<ns>/pods/<name> from ``objects``."""

    def __init__(self) -> None:
        self.objects: dict[str, dict] = {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests.append((self.path, self.headers.get("Authorization")))
                body = server.objects.get(self.path.split("?")[0])
                code = 200 if body is not None else 404
                if body is None:
                    body = status_json(404, "NotFound", f"{self.path} not found")
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def add(self, namespace: str, name: str, pod_labels: dict, ns_labels: dict) -> None:
        self.objects[f"/api/v1/namespaces/{namespace}"] = namespace_json(namespace, ns_labels)
        self.objects[f"/api/v1/namespaces/{namespace}/pods/{name}"] = pod_json(namespace, name, pod_labels)


@pytest.fixture
def api():
    server = FakeApiServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def lookup_for(url: str) -> KubernetesPodLookup:
    configuration = client.Configuration(host=url, api_key={"authorization": TOKEN},
                                         api_key_prefix={"authorization": "Bearer"})
    return KubernetesPodLookup(api_client=client.ApiClient(configuration))


@pytest.mark.parametrize(("pod", "namespace", "captured"), [
    ({}, {DATAPLANE_MODE: "ambient"}, True),
    ({DATAPLANE_MODE: "none"}, {DATAPLANE_MODE: "ambient"}, False),
    ({DATAPLANE_MODE: "ambient"}, {}, True),
    ({}, {}, False),
])
def test_the_lookup_reads_the_pod_and_its_namespace_with_the_bearer_token(api, pod, namespace, captured):
    api.add("shop", "web-0", pod, namespace)
    assert lookup_for(api.url).captured("shop", "web-0") is captured
    assert [path for path, _ in api.requests] == ["/api/v1/namespaces/shop/pods/web-0", "/api/v1/namespaces/shop"]
    assert {auth for _, auth in api.requests} == {f"Bearer {TOKEN}"}


def test_a_pod_the_api_does_not_know_is_an_error_without_the_token(api):
    with pytest.raises(PodLookupError) as caught:
        lookup_for(api.url).captured("shop", "gone")
    assert "404" in str(caught.value) and "shop/gone" in str(caught.value)
    assert TOKEN not in str(caught.value)


def test_an_unreachable_api_server_is_an_error(api):
    url = api.url
    api.httpd.shutdown()
    api.httpd.server_close()  # the port is closed: connections are refused
    with pytest.raises(PodLookupError, match="cannot reach the API server"):
        lookup_for(url).captured("shop", "web-0")


def test_missing_in_cluster_credentials_are_a_clear_error(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(PodLookupError, match="cannot configure the Kubernetes API client"):
        KubernetesPodLookup()
