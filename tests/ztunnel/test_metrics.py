"""Istio's TCP metrics: labels from the workloads the control plane really sends, and the exposition."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mesh.api import workload_pb2 as wpb
from tests.discovered import discovered
from ztunnel.metrics import (
    FLAG_CONNECT_FAILED,
    FLAG_DENIED,
    LABEL_NAMES,
    MUTUAL_TLS,
    NO_TLS,
    UNKNOWN,
    ZtunnelMetrics,
    tcp_labels,
)

WORLD = """
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
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
CLIENT_ID = "spiffe://cluster.local/ns/shop/sa/client"
WEB_ID = "spiffe://cluster.local/ns/shop/sa/web"


def test_outbound_mtls_labels_from_real_workloads():
    assert WEB.name.startswith("web-v1-")  # a Deployment's pod: the workload is the Deployment
    labels = tcp_labels(reporter="source", source=CLIENT, source_principal=CLIENT_ID, destination=WEB,
                        destination_principal=WEB_ID, destination_service=WEB_SERVICE, mutual_tls=True)
    assert labels == {
        "reporter": "source",
        "source_workload": "client", "source_canonical_service": "client", "source_canonical_revision": "latest",
        "source_workload_namespace": "shop", "source_principal": CLIENT_ID, "source_app": "client",
        "source_version": "latest", "source_cluster": "Kubernetes",
        "destination_service": "web.shop.svc.cluster.local", "destination_service_namespace": "shop",
        "destination_service_name": "web",
        "destination_workload": "web-v1", "destination_canonical_service": "web",
        "destination_canonical_revision": "v1", "destination_workload_namespace": "shop",
        "destination_principal": WEB_ID, "destination_app": "web", "destination_version": "v1",
        "destination_cluster": "Kubernetes",
        "request_protocol": "tcp", "response_flags": "-", "connection_security_policy": "mutual_tls",
        "source_region": UNKNOWN, "source_zone": UNKNOWN, "destination_region": UNKNOWN, "destination_zone": UNKNOWN,
    }
    assert tuple(labels) == LABEL_NAMES


def test_principals_default_to_the_workloads_identity_only_over_mtls():
    labels = tcp_labels(reporter="destination", source=CLIENT, source_principal=None, destination=WEB,
                        destination_principal=None, destination_service=None, mutual_tls=True)
    assert (labels["source_principal"], labels["destination_principal"]) == (CLIENT_ID, WEB_ID)
    plaintext = tcp_labels(reporter="destination", source=CLIENT, source_principal=None, destination=WEB,
                           destination_principal=None, destination_service=None, mutual_tls=False)
    assert (plaintext["source_principal"], plaintext["destination_principal"]) == (UNKNOWN, UNKNOWN)
    assert plaintext["connection_security_policy"] == NO_TLS == "unknown"  # as Istio's ztunnel says
    assert plaintext["source_workload"] == "client"  # known by its IP, though unproven


def test_unknown_peers_are_unknown():
    labels = tcp_labels(reporter="source", source=CLIENT, source_principal=CLIENT_ID, destination=None,
                        destination_principal=None, destination_service=None, mutual_tls=False,
                        response_flags=FLAG_DENIED)
    for name in LABEL_NAMES:
        if name.startswith("destination_"):
            assert labels[name] == UNKNOWN, name
    assert labels["response_flags"] == "DENY"


def test_fallbacks_when_the_proto_is_sparse():
    bare = wpb.Workload(name="pod-1", namespace="ns", cluster_id="east", trust_domain="example.org")
    labels = tcp_labels(reporter="destination", source=None, source_principal=None, destination=bare,
                        destination_principal=None, destination_service=None, mutual_tls=True)
    assert (labels["destination_workload"], labels["destination_canonical_service"], labels["destination_app"],
            labels["destination_version"], labels["destination_cluster"], labels["destination_principal"]) == \
        ("pod-1", "pod-1", "pod-1", UNKNOWN, "east", "spiffe://example.org/ns/ns/sa/default")
    broken = wpb.Workload(name="x", namespace="Not_A_Name")
    labels = tcp_labels(reporter="destination", source=None, source_principal=None, destination=broken,
                        destination_principal=None, destination_service=None, mutual_tls=True)
    assert labels["destination_principal"] == UNKNOWN


def test_locality_labels_are_the_workloads_locality():
    east = wpb.Workload(name="a", namespace="ns", locality=wpb.Locality(region="eu-west", zone="eu-west-1b"))
    labels = tcp_labels(reporter="source", source=east, source_principal=None, destination=None,
                        destination_principal=None, destination_service=None, mutual_tls=False)
    assert {k: labels[k] for k in ("source_region", "source_zone", "destination_region", "destination_zone")} == {
        "source_region": "eu-west", "source_zone": "eu-west-1b", "destination_region": UNKNOWN,
        "destination_zone": UNKNOWN}


def test_reporter_is_checked():
    with pytest.raises(ValueError, match="reporter"):
        tcp_labels(reporter="inbound", source=None, source_principal=None, destination=None,
                   destination_principal=None, destination_service=None, mutual_tls=False)


def samples(metrics: ZtunnelMetrics) -> dict[tuple[str, tuple], float]:
    """Every sample of the exposition, parsed back by prometheus_client's parser: (name, sorted labels) → value."""
    text = metrics.exposition().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def key(name: str, labels: dict[str, str]) -> tuple[str, tuple]:
    return name, tuple(sorted(labels.items()))


def test_exposition_has_istios_names_and_values():
    metrics = ZtunnelMetrics(build_tag="1.2.3")
    outbound = tcp_labels(reporter="source", source=CLIENT, source_principal=CLIENT_ID, destination=WEB,
                          destination_principal=WEB_ID, destination_service=WEB_SERVICE, mutual_tls=True)
    inbound = {**outbound, "reporter": "destination"}
    metrics.opened(outbound)
    metrics.opened(outbound)
    metrics.opened(inbound)
    assert samples(metrics)[key("istio_tcp_sent_bytes_total", outbound)] == 0  # exists from the start
    metrics.add_bytes(outbound, sent=100, received=10)
    metrics.closed(outbound, sent=5, received=1)
    metrics.closed(outbound, sent=1, received=0, response_flags=FLAG_CONNECT_FAILED)
    metrics.closed(inbound, response_flags=FLAG_DENIED)  # opened under "-", closed under DENY
    denied = {**inbound, "response_flags": "DENY"}
    failed = {**outbound, "response_flags": "CONNECT"}
    values = samples(metrics)
    assert values == {
        key("istio_tcp_connections_opened_total", outbound): 2,
        key("istio_tcp_connections_opened_total", inbound): 1,
        key("istio_tcp_connections_closed_total", outbound): 1,
        key("istio_tcp_connections_closed_total", failed): 1,
        key("istio_tcp_connections_closed_total", denied): 1,
        key("istio_tcp_connections_failed_total", failed): 1,
        key("istio_tcp_sent_bytes_total", outbound): 106,  # bytes stay under the labels opened with
        key("istio_tcp_received_bytes_total", outbound): 11,
        key("istio_tcp_sent_bytes_total", inbound): 0,
        key("istio_tcp_received_bytes_total", inbound): 0,
        ("istio_build", (("component", "ztunnel"), ("tag", "1.2.3"))): 1,
    }
    text = metrics.exposition().decode()
    for name in ("istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total",
                 "istio_tcp_connections_failed_total", "istio_tcp_sent_bytes_total",
                 "istio_tcp_received_bytes_total"):
        assert f"# TYPE {name} counter" in text
    assert "_created" not in text
    assert outbound["connection_security_policy"] == MUTUAL_TLS


def test_label_sets_other_than_tcp_labels_are_refused():
    metrics = ZtunnelMetrics()
    labels = tcp_labels(reporter="source", source=None, source_principal=None, destination=None,
                        destination_principal=None, destination_service=None, mutual_tls=False)
    with pytest.raises(ValueError, match="missing \\['reporter'\\]"):
        metrics.opened({k: v for k, v in labels.items() if k != "reporter"})
    with pytest.raises(ValueError, match="unexpected \\['pod'\\]"):
        metrics.closed({**labels, "pod": "x"})
    with pytest.raises(ValueError, match="negative"):
        metrics.add_bytes(labels, sent=-1, received=0)
    with pytest.raises(ValueError, match="response_flags"):
        metrics.closed(labels, response_flags="UF")


def test_label_values_are_escaped_for_any_text():
    metrics = ZtunnelMetrics(build_tag='v"1\\')
    labels = tcp_labels(reporter="source", source=None, source_principal=None, destination=None,
                        destination_principal=None, destination_service=None, mutual_tls=False)
    odd = {**labels, "source_workload": 'a"b\\c\nd}', "source_app": "ünï"}
    metrics.opened(odd)
    values = samples(metrics)
    assert values[key("istio_tcp_connections_opened_total", odd)] == 1
    assert values[("istio_build", (("component", "ztunnel"), ("tag", 'v"1\\')))] == 1
