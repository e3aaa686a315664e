"""A synthetic mesh for the discovery benchmark: N pods, M services, P policies, as YAML + pod status.

Namespaces of 100 pods each (half of them enrolled), one Deployment per Service (pods split evenly),
policies cycling through the shapes users write (namespace allow-lists, principals with ports,
DENY by IP block, namespace-wide allow, one with L7 fields), and a mesh-wide STRICT
PeerAuthentication. Pods get IPs from 10.128.0.0/9 and are spread over ``nodes`` nodes.
"""

from __future__ import annotations

import ipaddress

from controlplane.view import PodStatus

POD_NETWORK = ipaddress.ip_network("10.128.0.0/9")


def manifests(pods: int, services: int, policies: int, per_namespace: int = 100) -> dict[str, str]:
    """``{file name: YAML}``: one file per namespace, plus ``mesh.yaml``."""
    namespaces = max(1, pods // per_namespace)
    replicas = max(1, pods // services)
    files: dict[str, list[str]] = {f"ns-{n:03d}.yaml": [] for n in range(namespaces)}
    names = list(files)
    for n, name in enumerate(names):
        mode = "\n  labels: {istio.io/dataplane-mode: ambient}" if n % 2 == 0 else ""
        files[name].append(f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns-{n:03d}{mode}\n")
    for s in range(services):
        n = s % namespaces
        ns = f"ns-{n:03d}"
        files[names[n]].append(f"""apiVersion: apps/v1
kind: Deployment
metadata: {{name: app-{s:04d}, namespace: {ns}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: app-{s:04d}}}}}
  template:
    metadata: {{labels: {{app: app-{s:04d}, version: v1}}}}
    spec:
      serviceAccountName: sa-{s:04d}
      containers:
      - name: app
        command: [python3, -m, http.server, "8080"]
        ports: [{{containerPort: 8080, name: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: app-{s:04d}, namespace: {ns}}}
spec:
  selector: {{app: app-{s:04d}}}
  ports: [{{name: http, port: 80, targetPort: http}}, {{name: metrics, port: 9090, targetPort: 9090}}]
""")
    for p in range(policies):
        n = p % namespaces
        ns = f"ns-{n:03d}"
        # a Service of the policy's own namespace (service s lives in namespace s % namespaces)
        target = f"app-{(n + namespaces * ((p // namespaces) % max(1, services // namespaces))) % services:04d}"
        shape = p % 5
        if shape == 0:
            spec = f"""  selector: {{matchLabels: {{app: {target}}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{namespaces: [{ns}, ns-{(n + 1) % namespaces:03d}]}}}}]"""
        elif shape == 1:
            spec = f"""  selector: {{matchLabels: {{app: {target}}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/{ns}/sa/sa-{p % services:04d}]}}}}]
    to: [{{operation: {{ports: ["8080"]}}}}]"""
        elif shape == 2:
            spec = f"""  action: DENY
  rules:
  - from: [{{source: {{ipBlocks: [192.168.{p % 256}.0/24]}}}}]"""
        elif shape == 3:
            spec = """  action: ALLOW
  rules:
  - from: [{source: {namespaces: ["ns-*"]}}]"""
        else:
            spec = f"""  selector: {{matchLabels: {{app: {target}}}}}
  action: ALLOW
  rules:
  - to: [{{operation: {{methods: [GET], ports: ["8080"]}}}}]"""
        files[names[n]].append(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
            f"metadata: {{name: policy-{p:04d}, namespace: {ns}}}\nspec:\n{spec}\n")
    mesh = ("apiVersion: v1\nkind: Namespace\nmetadata: {name: istio-system}\n---\n"
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
            "metadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n")
    result = {name: "---\n".join(docs) for name, docs in files.items()}
    result["mesh.yaml"] = mesh
    return result


def statuses(pod_keys, nodes: int) -> dict[tuple[str, str], PodStatus]:
    """A running status for every pod: consecutive IPs, round-robin over the nodes."""
    base = int(POD_NETWORK.network_address)
    return {key: PodStatus(str(ipaddress.ip_address(base + i + 1)), f"node-{i % nodes:02d}")
            for i, key in enumerate(sorted(pod_keys))}
