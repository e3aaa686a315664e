"""What the control plane writes back to the cluster for a waypoint Gateway: pure functions, no I/O.

For each Gateway of class ``istio-waypoint`` istiod's deployment controller renders a ServiceAccount,
a Deployment and a Service from its waypoint template (``manifests/charts/istio-control/istio-discovery/
files/waypoint.yaml``) and applies them; this module renders the same shapes, with the mesh's own
waypoint process (``ambient waypoint run``) in place of Envoy:

- names: all three are named after the Gateway (istiod's default name for a waypoint), so the
  waypoint's identity is ``spiffe://<td>/ns/<ns>/sa/<gateway>`` and its Service
  ``<gateway>.<ns>.svc.<domain>``, as ``controlplane.view`` expects;
- labels ``gateway.networking.k8s.io/gateway-name`` (the Deployment's selector and the Service's),
  ``istio.io/gateway-name``, ``gateway.networking.k8s.io/gateway-class-name``; the pods also
  ``istio.io/dataplane-mode: none`` (a waypoint is never captured) and the canonical name;
- ``ownerReferences`` to the Gateway (by uid), so that deleting the Gateway deletes them (the
  cluster's garbage collector does it, not the control plane);
- ports 15008 (HBONE, ``mesh``), 15021 (readiness, ``status-port``), 15020 (metrics);
- the pod gets a projected token of audience ``istio-ca`` (what the CA verifies with TokenReview)
  and the mesh root from the ConfigMap ``istio-ca-root-cert``, which ``root_cert_config_map`` renders
  for the Gateway's namespace (istiod's namespace controller writes it into every namespace);
- secure by default: non-root (1337), read-only root filesystem, no privilege escalation, every
  capability dropped, the RuntimeDefault seccomp profile, no API token mounted (the waypoint never
  calls the API server).

``gateway_status`` renders the Gateway's ``status`` (server-side applied on the status subresource):
``Accepted`` (False with the parser's findings if the Gateway is invalid), ``Programmed`` (True once its
Service has a cluster IP), and ``addresses`` (that IP). A condition keeps its ``lastTransitionTime``
while its status does not change.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from mesh.ports import HBONE_PORT

GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
ISTIO_GATEWAY_NAME_LABEL = "istio.io/gateway-name"
GATEWAY_CLASS_LABEL = "gateway.networking.k8s.io/gateway-class-name"
MANAGED_LABEL = "gateway.istio.io/managed"
MANAGED_VALUE = "istio.io-mesh-controller"  # istiod's value for the waypoints it deploys
GATEWAY_API_VERSION = "gateway.networking.k8s.io/v1"
READINESS_PORT = 15021
METRICS_PORT = 15020
WAYPOINT_UID = 1337  # as Istio's proxies: a fixed non-root user and group
ROOT_CERT_CONFIG_MAP = "istio-ca-root-cert"
ROOT_CERT_KEY = "root-cert.pem"
TOKEN_AUDIENCE = "istio-ca"
TOKEN_SECONDS = 43200  # the projected token's lifetime, as Istio's waypoint template; the kubelet renews it
MAX_MESSAGE_CHARS = 1024  # a condition's message (the API allows 32768); findings past it are cut

_CA_DIR = "/var/run/secrets/istio"
_TOKEN_DIR = "/var/run/secrets/tokens"
_STATE_DIR = "/var/lib/ambient"


@dataclass(frozen=True)
class WaypointTemplate:
    """What every waypoint Deployment shares, from the control plane's flags."""

    image: str = "ambient-mesh:latest"
    discovery_address: str = "istiod.istio-system.svc:15012"
    server_name: str = "istiod.istio-system.svc"
    trust_domain: str = "cluster.local"
    domain_suffix: str = "cluster.local"
    image_pull_policy: str = "IfNotPresent"

    def __post_init__(self) -> None:
        if not self.image or any(c.isspace() for c in self.image):
            raise ValueError(f"waypoint image {self.image!r}: expected an image reference without spaces")
        host, sep, port = self.discovery_address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"waypoint discovery address {self.discovery_address!r}: expected HOST:PORT")
        if self.image_pull_policy not in ("Always", "IfNotPresent", "Never"):
            raise ValueError(f"image pull policy {self.image_pull_policy!r}: expected Always, IfNotPresent or Never")


@dataclass(frozen=True)
class KubeOptions:
    """``ambient controlplane --kubernetes``: where the API is, and what to write back (here, not
    beside the client, so that the control plane loads the ``kubernetes`` package only when used)."""

    kubeconfig: Path | None = None  # None: in-cluster (the pod's service account)
    waypoints: WaypointTemplate | None = field(default_factory=WaypointTemplate)  # None: no write-back


@dataclass(frozen=True)
class WaypointGateway:
    namespace: str
    name: str
    uid: str
    gateway_class: str = "istio-waypoint"


def _labels(gw: WaypointGateway) -> dict[str, str]:
    return {GATEWAY_NAME_LABEL: gw.name, ISTIO_GATEWAY_NAME_LABEL: gw.name, GATEWAY_CLASS_LABEL: gw.gateway_class}


def _meta(gw: WaypointGateway, labels: dict[str, str]) -> dict:
    return {"name": gw.name, "namespace": gw.namespace, "labels": labels,
            "ownerReferences": [{"apiVersion": GATEWAY_API_VERSION, "kind": "Gateway", "name": gw.name,
                                 "uid": gw.uid}]}


def waypoint_command(gw: WaypointGateway, t: WaypointTemplate) -> list[str]:
    """``ambient waypoint run`` with the flags the lab gives it (``lab.components.waypoint_processes``),
    the paths being the pod's mounts."""
    return ["ambient", "waypoint", "run", "--gateway", f"{gw.namespace}/{gw.name}",
            "--discovery-address", t.discovery_address, "--server-name", t.server_name,
            "--ca-root", f"{_CA_DIR}/{ROOT_CERT_KEY}", "--token-file", f"{_TOKEN_DIR}/istio-token",
            "--trust-domain", t.trust_domain, "--state-dir", f"{_STATE_DIR}/waypoint"]


def render_waypoint(gw: WaypointGateway, t: WaypointTemplate) -> tuple[dict, dict, dict]:
    """(ServiceAccount, Service, Deployment) of a waypoint Gateway, in the order they are applied."""
    labels = _labels(gw)
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(gw, labels)}
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": _meta(gw, labels),
        "spec": {"type": "ClusterIP", "selector": {GATEWAY_NAME_LABEL: gw.name},
                 "ports": [{"name": "status-port", "port": READINESS_PORT, "protocol": "TCP", "appProtocol": "tcp"},
                           {"name": "mesh", "port": HBONE_PORT, "protocol": "TCP", "appProtocol": "all"}]},
    }
    pod_labels = {"sidecar.istio.io/inject": "false", "istio.io/dataplane-mode": "none",
                  "service.istio.io/canonical-name": gw.name, "service.istio.io/canonical-revision": "latest",
                  **labels, MANAGED_LABEL: MANAGED_VALUE}
    probe = {"httpGet": {"path": "/healthz/ready", "port": READINESS_PORT, "scheme": "HTTP"}, "timeoutSeconds": 1}
    container = {
        "name": "waypoint", "image": t.image, "imagePullPolicy": t.image_pull_policy,
        "command": waypoint_command(gw, t),
        "ports": [{"name": "mesh", "containerPort": HBONE_PORT, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
                  {"name": "status-port", "containerPort": READINESS_PORT, "protocol": "TCP"}],
        "env": [{"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "readinessProbe": {**probe, "periodSeconds": 15, "failureThreshold": 4},
        "startupProbe": {**probe, "periodSeconds": 1, "failureThreshold": 30},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}},
        "securityContext": {"runAsUser": WAYPOINT_UID, "runAsGroup": WAYPOINT_UID, "runAsNonRoot": True,
                            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "privileged": False,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "istio-token", "mountPath": _TOKEN_DIR, "readOnly": True},
                         {"name": "istiod-ca-cert", "mountPath": _CA_DIR, "readOnly": True},
                         {"name": "state", "mountPath": _STATE_DIR}],
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(gw, {**labels, MANAGED_LABEL: MANAGED_VALUE}),
        "spec": {
            "selector": {"matchLabels": {GATEWAY_NAME_LABEL: gw.name}},
            "template": {
                "metadata": {"labels": pod_labels,
                             "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT),
                                             "prometheus.io/path": "/metrics"}},
                "spec": {
                    "serviceAccountName": gw.name,
                    "automountServiceAccountToken": False,
                    "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}, "fsGroup": WAYPOINT_UID},
                    "containers": [container],
                    "volumes": [
                        {"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {
                            "audience": TOKEN_AUDIENCE, "expirationSeconds": TOKEN_SECONDS, "path": "istio-token"}}]}},
                        {"name": "istiod-ca-cert", "configMap": {"name": ROOT_CERT_CONFIG_MAP}},
                        {"name": "state", "emptyDir": {}},
                    ],
                },
            },
        },
    }
    return account, service, deployment


def root_cert_config_map(namespace: str, root_pem: str) -> dict:
    """The mesh root for the pods of ``namespace`` (istiod's ``istio-ca-root-cert``): not owned by any
    Gateway, since every waypoint of the namespace mounts it."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": ROOT_CERT_CONFIG_MAP, "namespace": namespace, "labels": {"istio.io/config": "true"}},
            "data": {ROOT_CERT_KEY: root_pem}}


def digest(obj: dict) -> str:
    """A rendering's fingerprint: applied again only when it changes."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ---------------------------------------------------------------- Gateway status


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True" | "False"
    reason: str
    message: str

    def render(self, generation: int, since: str) -> dict:
        return {"type": self.type, "status": self.status, "reason": self.reason, "message": self.message,
                "observedGeneration": generation, "lastTransitionTime": since}


def gateway_conditions(problems: tuple[str, ...], cluster_ip: str, hostname: str) -> tuple[Condition, Condition]:
    """(Accepted, Programmed) as istiod reports them for a waypoint."""
    if problems:
        message = "; ".join(problems)
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[:MAX_MESSAGE_CHARS - 3] + "..."
        return (Condition("Accepted", "False", "Invalid", message),
                Condition("Programmed", "False", "Invalid", "the Gateway is not accepted"))
    accepted = Condition("Accepted", "True", "Accepted", "Resource accepted")
    if not cluster_ip:
        return accepted, Condition("Programmed", "False", "AddressNotAssigned",
                                   f"waiting for the waypoint's Service {hostname} to get a cluster IP")
    return accepted, Condition("Programmed", "True", "Programmed",
                               f"Resource programmed, assigned to service(s) {hostname}:{HBONE_PORT}")


def gateway_status(gw: WaypointGateway, generation: int, conditions: tuple[Condition, ...], cluster_ip: str,
                   previous: dict | None, now: str) -> dict:
    """The apply body for the Gateway's status subresource. ``previous``: the last body applied (its
    conditions' transition times are kept while their status is unchanged); ``now``: RFC 3339."""
    before = {c["type"]: c for c in (previous or {}).get("status", {}).get("conditions", [])}
    rendered = []
    for condition in conditions:
        old = before.get(condition.type)
        since = old["lastTransitionTime"] if old and old.get("status") == condition.status else now
        rendered.append(condition.render(generation, since))
    status: dict = {"conditions": rendered}
    if cluster_ip:
        status["addresses"] = [{"type": "IPAddress", "value": cluster_ip}]
    return {"apiVersion": GATEWAY_API_VERSION, "kind": "Gateway",
            "metadata": {"name": gw.name, "namespace": gw.namespace}, "status": status}
