"""The control plane's handle on the Kubernetes API: the kinds it reads and writes, and blocking calls
(list a page, open a watch stream, server-side apply) through the official ``kubernetes`` client.

Every call is synchronous (the official client is): the trio side runs each in a worker thread
(``controlplane.kube_source``, ``controlplane.kube_writeback``). Requests go through the generic
``ApiClient.param_serialize`` / ``call_api`` with the response unread (``preload_content=False``):
objects stay plain JSON dicts, the form the mesh's parsers read, and a body is read with a bound
(``controlplane.kube_watch``'s MAX_LIST_PAGE_BYTES) instead of whole.

Configuration (``connect``): a kubeconfig file when one is given (``--kubeconfig``), else the pod's
service account (``/var/run/secrets/kubernetes.io/serviceaccount``: token, CA, namespace), whose
token the client re-reads as the kubelet rotates it. The bearer token is never logged: an error
names the request's method and path only.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import kubernetes.client
import kubernetes.config
import urllib3

from controlplane.kube_watch import LIST_PAGE_SIZE, MAX_LIST_PAGE_BYTES, WATCH_TIMEOUT_SECONDS

FIELD_MANAGER = "ambient-controlplane"  # server-side apply's owner of every field the control plane writes
CONNECT_TIMEOUT = 10.0  # seconds to reach the API server
REQUEST_TIMEOUT = 60.0  # seconds a list page or an apply may take
WATCH_READ_SLACK = 60.0  # beyond the watch's own timeoutSeconds, before a silent stream counts as dead
READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class ApiKind:
    """A kind as the API serves it: ``/api/v1/pods`` or ``/apis/<group>/<version>/<plural>``."""

    kind: str
    group: str
    version: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def collection_path(self, namespace: str = "") -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if namespace and self.namespaced:
            base += f"/namespaces/{quote(namespace, safe='')}"
        return f"{base}/{self.plural}"

    def object_path(self, namespace: str, name: str) -> str:
        return f"{self.collection_path(namespace)}/{quote(name, safe='')}"


GATEWAY_API = "gateway.networking.k8s.io"
NAMESPACE = ApiKind("Namespace", "", "v1", "namespaces", namespaced=False)
NODE = ApiKind("Node", "", "v1", "nodes", namespaced=False)
POD = ApiKind("Pod", "", "v1", "pods")
SERVICE = ApiKind("Service", "", "v1", "services")
SERVICE_ACCOUNT = ApiKind("ServiceAccount", "", "v1", "serviceaccounts")
CONFIG_MAP = ApiKind("ConfigMap", "", "v1", "configmaps")
DEPLOYMENT = ApiKind("Deployment", "apps", "v1", "deployments")
GATEWAY_CLASS = ApiKind("GatewayClass", GATEWAY_API, "v1", "gatewayclasses", namespaced=False)
GATEWAY = ApiKind("Gateway", GATEWAY_API, "v1", "gateways")
HTTP_ROUTE = ApiKind("HTTPRoute", GATEWAY_API, "v1", "httproutes")
GRPC_ROUTE = ApiKind("GRPCRoute", GATEWAY_API, "v1", "grpcroutes")
AUTHORIZATION_POLICY = ApiKind("AuthorizationPolicy", "security.istio.io", "v1", "authorizationpolicies")
PEER_AUTHENTICATION = ApiKind("PeerAuthentication", "security.istio.io", "v1", "peerauthentications")
WASM_PLUGIN = ApiKind("WasmPlugin", "extensions.istio.io", "v1alpha1", "wasmplugins")

KINDS_READ = (NAMESPACE, NODE, POD, SERVICE, GATEWAY_CLASS, GATEWAY, HTTP_ROUTE, GRPC_ROUTE,
              AUTHORIZATION_POLICY, PEER_AUTHENTICATION, WASM_PLUGIN)
"""Every kind the view reads (``mesh.parse`` accepts them), cluster-wide. Not Deployments: on a
cluster their Pods are in the API; not EndpointSlices: the view selects a Service's pods itself;
not ServiceAccounts or ConfigMaps: nothing of the view depends on them."""
KINDS_WRITTEN = (DEPLOYMENT, SERVICE, SERVICE_ACCOUNT, CONFIG_MAP)  # the waypoints' objects, applied
BY_KIND = {k.kind: k for k in KINDS_READ + KINDS_WRITTEN}


class ApiError(Exception):
    """A request the API server refused (``status``: its HTTP status) or never answered (status 0)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status}: {reason}" if status else reason)
        self.status = status
        self.reason = reason


def connect(kubeconfig: Path | None = None) -> kubernetes.client.ApiClient:
    """An API client from ``kubeconfig``, else from the pod's service account (in-cluster)."""
    configuration = kubernetes.client.Configuration()
    try:
        if kubeconfig is not None:
            kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration,
                                               persist_config=False)
        else:
            kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException as exc:
        where = f"kubeconfig {kubeconfig}" if kubeconfig else "in-cluster service account"
        raise ValueError(f"cannot configure the Kubernetes client from the {where}: {exc}") from None
    return kubernetes.client.ApiClient(configuration)


def _status_reason(body: bytes, fallback: str) -> str:
    """The message of a ``Status`` body, else the HTTP reason."""
    try:
        status = json.loads(body)
        message = status.get("message") if isinstance(status, dict) else None
        return message if isinstance(message, str) and message else fallback
    except ValueError:
        return fallback


class WatchStream:
    """An open watch response: ``read()`` the next chunk (b"" at the end), ``close()`` from any thread."""

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self._response = response

    def read(self) -> bytes:
        try:
            return self._response.read1(READ_CHUNK)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiError(0, f"watch stream broken: {exc}") from None

    def close(self) -> None:
        """Unblocks a ``read()`` in another thread (shutdown of the socket), then releases it."""
        try:
            self._response.shutdown()
        except (OSError, RuntimeError):  # RuntimeError: the stream ended and went back to the pool
            pass
        self._response.close()


class KubeApi:
    """Blocking calls on the API server; one instance is shared by every worker thread (urllib3's
    pool is thread-safe)."""

    def __init__(self, client: kubernetes.client.ApiClient, *, page_size: int = LIST_PAGE_SIZE,
                 max_page_bytes: int = MAX_LIST_PAGE_BYTES) -> None:
        self._client = client
        self.page_size = page_size
        self.max_page_bytes = max_page_bytes

    def _request(self, method: str, path: str, query: list[tuple[str, Any]] | None = None,
                 body: str | None = None, content_type: str = "", timeout: Any = None,
                 ) -> urllib3.BaseHTTPResponse:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        method, url, headers, _, _ = self._client.param_serialize(
            method, path, query_params=query or [], header_params=headers, auth_settings=["BearerToken"])
        try:
            response = self._client.call_api(method, url, header_params=headers, body=body,
                                             _request_timeout=timeout or (CONNECT_TIMEOUT, REQUEST_TIMEOUT))
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiError(0, f"{method} {path}: {exc}") from None
        except kubernetes.client.ApiException as exc:  # the client's TLS failures
            raise ApiError(0, f"{method} {path}: {exc.reason}") from None
        raw = response.response
        if response.status >= 300:
            try:
                reason = _status_reason(raw.read(64 * 1024), response.reason or "")
            except (urllib3.exceptions.HTTPError, OSError):
                reason = response.reason or ""
            finally:
                raw.release_conn()
            raise ApiError(response.status, f"{method} {path}: {reason}")
        return raw

    def _json(self, raw: urllib3.BaseHTTPResponse, what: str, limit: int) -> dict:
        try:
            body = raw.read(limit + 1)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiError(0, f"{what}: reading the response: {exc}") from None
        finally:
            raw.release_conn()
        if len(body) > limit:
            raise ApiError(0, f"{what}: response larger than {limit} bytes; refused")
        try:
            data = json.loads(body)
        except ValueError:
            raise ApiError(0, f"{what}: response is not JSON") from None
        if not isinstance(data, dict):
            raise ApiError(0, f"{what}: response is not a JSON object")
        return data

    def list_page(self, kind: ApiKind, continue_token: str = "") -> tuple[list[dict], str, str]:
        """One page of every object of ``kind``: (items, the list's resourceVersion, continue token)."""
        query: list[tuple[str, Any]] = [("limit", self.page_size)]
        if continue_token:
            query.append(("continue", continue_token))
        path = kind.collection_path()
        data = self._json(self._request("GET", path, query), f"GET {path}", self.max_page_bytes)
        items, meta = data.get("items"), data.get("metadata")
        if not isinstance(items, list) or not isinstance(meta, dict):
            raise ApiError(0, f"GET {path}: not a list (no items or metadata)")
        for item in items:  # a list's items carry neither: the events' objects do
            if isinstance(item, dict):
                item.setdefault("kind", kind.kind)
                item.setdefault("apiVersion", kind.api_version)
        return ([i for i in items if isinstance(i, dict)], str(meta.get("resourceVersion", "")),
                str(meta.get("continue", "") or ""))

    def list_all(self, kind: ApiKind) -> tuple[list[dict], str]:
        """Every page; the resourceVersion is the first page's (a paged list is one snapshot)."""
        items, version, token = self.list_page(kind)
        while token:
            more, _, token = self.list_page(kind, token)
            items += more
        return items, version

    def open_watch(self, kind: ApiKind, resource_version: str, timeout_seconds: int | None = None) -> WatchStream:
        """A watch of ``kind`` from ``resource_version``, with bookmarks. The server ends it after
        ``timeout_seconds`` (default: WATCH_TIMEOUT_SECONDS scaled by up to 2, as client-go spreads them)."""
        if timeout_seconds is None:
            timeout_seconds = int(WATCH_TIMEOUT_SECONDS * random.uniform(1, 2))
        query: list[tuple[str, Any]] = [("watch", "true"), ("allowWatchBookmarks", "true"),
                                        ("resourceVersion", resource_version), ("timeoutSeconds", timeout_seconds)]
        raw = self._request("GET", kind.collection_path(), query,
                            timeout=(CONNECT_TIMEOUT, timeout_seconds + WATCH_READ_SLACK))
        return WatchStream(raw)

    def apply(self, obj: dict, *, subresource: str = "", force: bool = True) -> dict:
        """Server-side apply of ``obj`` (or of its ``status`` with ``subresource="status"``) as
        FIELD_MANAGER; returns the object the server holds afterwards."""
        kind = BY_KIND.get(obj.get("kind", ""))
        meta = obj.get("metadata", {})
        if kind is None or not meta.get("name"):
            raise ValueError(f"cannot apply {obj.get('kind')!r} {meta.get('name')!r}: "
                             "not a kind the control plane writes")
        path = kind.object_path(meta.get("namespace", ""), meta["name"]) + (f"/{subresource}" if subresource else "")
        query: list[tuple[str, Any]] = [("fieldManager", FIELD_MANAGER)]
        if force:
            query.append(("force", "true"))
        raw = self._request("PATCH", path, query, body=json.dumps(obj), content_type="application/apply-patch+yaml")
        return self._json(raw, f"PATCH {path}", self.max_page_bytes)
