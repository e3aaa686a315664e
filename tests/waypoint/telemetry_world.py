"""A small mesh for the waypoint's telemetry tests, through the real parse → view → pack pipeline:
the workloads and services exactly as discovery sends them, and records of requests between them."""

from __future__ import annotations

from dataclasses import replace

from mesh.identity import SpiffeId
from tests.discovered import discovered
from waypoint.records import RequestRecord, TcpRecord

WORLD = """
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web-v1, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web, version: v1}}
    spec: {serviceAccountName: web, containers: [{name: web, ports: [{containerPort: 8080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop}
spec: {serviceAccountName: client, containers: [{name: app}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
"""


WORKLOADS, SERVICES = discovered(WORLD, {("shop", "web"): "10.96.0.10"})
CLIENT, WEB, WEB_SERVICE = WORKLOADS["client"], WORKLOADS["web-v1"], SERVICES["web"]
CLIENT_ID = SpiffeId("cluster.local", "shop", "client")
WEB_ID = SpiffeId("cluster.local", "shop", "web")

REQUEST = RequestRecord(
    start=100.0, duration=0.012, protocol="http", http_version="HTTP/1.1", method="GET", path="/items?id=7",
    authority="web.shop.svc.cluster.local", status=200, response_flags="-", request_bytes=0, response_bytes=512,
    source_address=("10.244.0.11", 40000), source=CLIENT, source_principal=CLIENT_ID,
    destination_service=WEB_SERVICE, destination=WEB, destination_principal=WEB_ID,
    upstream_address=("10.244.0.12", 8080), route="shop/web", request_id="req-1")

TUNNEL = TcpRecord(
    start=100.0, duration=2.5, sent_bytes=300, received_bytes=100, source_address=("10.244.0.11", 40001),
    source=CLIENT, source_principal=CLIENT_ID, destination_service=WEB_SERVICE, destination=WEB,
    destination_principal=WEB_ID, upstream_address=("10.244.0.12", 8080))


def request(**changes) -> RequestRecord:
    return replace(REQUEST, **changes)
