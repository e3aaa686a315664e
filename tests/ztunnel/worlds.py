"""Worlds shared by the ztunnel planner tests: Kubernetes YAML run through the control plane's own
pipeline (``mesh.parse`` → ``ClusterState`` with pod IPs and VIPs → ``compute_view`` → the packed
resources discovery serves → unpacked again), so the tests see exactly the protos ztunnel receives.
"""

from __future__ import annotations

from controlplane.view import ClusterState, MeshConfig, PodStatus, compute_view, workload_uid
from mesh.api.types import unpack
from mesh.parse import parse_text

# An ambient namespace with a waypoint for all traffic, which the pod "db" uses; "impostor" runs as
# the waypoint's service account but is not its pod. Tests add their Services or policies.
WAYPOINT_PODS = """
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: shop, labels: {istio.io/waypoint-for: all}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec: {serviceAccountName: client, containers: [{name: app}]}
---
apiVersion: v1
kind: Pod
metadata: {name: impostor, namespace: shop, labels: {app: impostor}}
spec: {serviceAccountName: wp, containers: [{name: app}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop, labels: {app: web}}
spec: {serviceAccountName: web, containers: [{name: app}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db, istio.io/use-waypoint: wp}}
spec: {serviceAccountName: db, containers: [{name: app}]}
"""
WAYPOINT_IPS = {"shop/client": "10.244.0.10", "shop/web-0": "10.244.0.11", "shop/db": "10.244.0.20",
                "shop/impostor": "10.244.0.30", "shop/wp-waypoint": "10.244.0.50"}


def _key(text: str) -> tuple[str, str]:
    namespace, _, name = text.partition("/")
    return namespace, name


def discovery_view(docs: str, ips: dict[str, str], vips: dict[str, str],
                   unready: frozenset[str] = frozenset(), nodes: dict[str, str] | None = None) -> dict[str, dict]:
    """type URL → name → unpacked resource: what discovery sends for ``docs`` (pods at ``ips``,
    "<ns>/<name>" → IP; Services at ``vips``; ``unready`` pods not ready; pods on ``nodes``,
    "<ns>/<name>" → node, else on node-a)."""
    parsed = parse_text(docs, "world.yaml")
    assert [str(p) for p in parsed.errors] == []
    status = {_key(key): PodStatus(ip, (nodes or {}).get(key, "node-a"), ready=key not in unready)
              for key, ip in ips.items()}
    state = ClusterState.build(parsed.resources, status, {_key(k): v for k, v in vips.items()})
    return {type_url: {name: unpack(message, type_url) for name, message in resources.items()}
            for type_url, resources in compute_view(state).resources().items()}


def uid(key: str) -> str:
    ns, name = key.split("/")
    return workload_uid(MeshConfig(), ns, name)
