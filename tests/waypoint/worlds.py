"""YAML the waypoint's table tests share: namespace ``apps`` in the mesh, using its waypoint Gateway
``waypoint`` (each test adds its Services, pods, routes and policies)."""

APPS_WITH_WAYPOINT = """
apiVersion: v1
kind: Namespace
metadata: {name: apps, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: apps}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"""
