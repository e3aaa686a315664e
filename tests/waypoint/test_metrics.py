"""The waypoint's Istio standard metrics: labels from real discovery resources, and the exposition
parsed back with Prometheus's own parser."""

from __future__ import annotations

from dataclasses import replace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mesh.istio_labels import workload_labels
from tests.waypoint.telemetry_world import CLIENT, REQUEST, TUNNEL, WEB, request
from waypoint.metrics import (
    REQUEST_LABEL_NAMES,
    TCP_LABEL_NAMES,
    WaypointMetrics,
    grpc_response_status,
    request_labels,
    response_code,
    tcp_labels,
)

EXPECTED = {
    "reporter": "waypoint",
    "source_workload": "client", "source_canonical_service": "client", "source_canonical_revision": "latest",
    "source_workload_namespace": "shop", "source_principal": "spiffe://cluster.local/ns/shop/sa/client",
    "source_app": "client", "source_version": "latest", "source_cluster": "Kubernetes",
    "destination_workload": "web-v1", "destination_workload_namespace": "shop",
    "destination_principal": "spiffe://cluster.local/ns/shop/sa/web", "destination_app": "web",
    "destination_version": "v1", "destination_service": "web.shop.svc.cluster.local",
    "destination_service_name": "web", "destination_service_namespace": "shop",
    "destination_canonical_service": "web", "destination_canonical_revision": "v1", "destination_cluster": "Kubernetes",
    "request_protocol": "http", "response_code": "200", "grpc_response_status": "", "response_flags": "-",
    "connection_security_policy": "mutual_tls",
}


def families(metrics: WaypointMetrics) -> dict:
    return {family.name: family for family in text_string_to_metric_families(metrics.exposition().decode())}


def test_request_labels_are_istios_waypoint_labels_in_order():
    labels = request_labels(REQUEST)
    assert labels == EXPECTED
    assert tuple(labels) == REQUEST_LABEL_NAMES


def test_workload_labels_are_ztunnels():
    labels = request_labels(REQUEST)
    for side, workload in (("source", CLIENT), ("destination", WEB)):
        for name, value in workload_labels(side, workload).items():
            assert labels.get(name, value) == value  # the same function labels both proxies' series


def test_no_label_comes_from_the_request_content():
    wild = request(method="DELETE", path="/x/" + "y" * 1000, authority="evil.example", request_id="z")
    assert request_labels(wild) == request_labels(REQUEST)


def test_a_pod_addressed_request_and_unknown_peers():
    labels = request_labels(request(destination_service=None, source=None, destination=None,
                                    destination_principal=None, status=0, response_flags="DC"))
    assert labels["destination_service"] == labels["destination_service_name"] == "unknown"
    assert labels["source_workload"] == labels["destination_workload"] == "unknown"
    assert labels["source_principal"] == "spiffe://cluster.local/ns/shop/sa/client"  # verified, so known
    assert labels["destination_principal"] == "unknown"
    assert (labels["response_code"], labels["response_flags"]) == ("0", "DC")


@pytest.mark.parametrize(("status", "label"), [(200, "200"), (0, "0"), (599, "599"), (600, "unknown"),
                                               (99, "unknown"), (-1, "unknown")])
def test_response_code_is_bounded(status, label):
    assert response_code(status) == label


@pytest.mark.parametrize(("status", "label"), [(None, ""), ("0", "0"), ("16", "16"), (" 5 ", "5"), ("17", "unknown"),
                                               ("abc", "unknown"), ("0007", "unknown"), ("", "unknown")])
def test_grpc_status_is_bounded(status, label):
    assert grpc_response_status(status) == label


def test_grpc_request():
    labels = request_labels(request(protocol="grpc", http_version="HTTP/2", grpc_status="14", status=200))
    assert (labels["request_protocol"], labels["grpc_response_status"]) == ("grpc", "14")


def test_tcp_labels():
    labels = tcp_labels(TUNNEL)
    assert tuple(labels) == TCP_LABEL_NAMES
    assert labels == {name: value for name, value in EXPECTED.items()
                      if name not in ("response_code", "grpc_response_status")} | {"request_protocol": "tcp"}


def test_exposition_counts_requests_with_istios_buckets():
    metrics = WaypointMetrics(build_tag="test")
    metrics.request(REQUEST)  # 12 ms, 0 bytes in, 512 out
    metrics.request(request(duration=0.0004, response_bytes=1))
    metrics.request(request(status=403, response_flags="RBAC", policy="shop/deny"))
    parsed = families(metrics)
    requests = {sample.labels["response_code"]: sample.value for sample in parsed["istio_requests"].samples}
    assert requests == {"200": 2, "403": 1}
    assert metrics.requests_total(EXPECTED) == 2
    buckets = {s.labels["le"]: s.value for s in parsed["istio_request_duration_milliseconds"].samples
               if s.name.endswith("_bucket") and s.labels["response_code"] == "200"}
    assert list(buckets) == ["0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000", "10000",
                             "30000", "60000", "300000", "600000", "1.8e+06", "3.6e+06", "+Inf"]
    assert (buckets["0.5"], buckets["10"], buckets["25"], buckets["+Inf"]) == (1, 1, 2, 2)
    sizes = {(s.name, s.labels.get("le")): s.value for s in parsed["istio_response_bytes"].samples
             if s.labels["response_code"] == "200"}
    assert (sizes[("istio_response_bytes_bucket", "1")], sizes[("istio_response_bytes_bucket", "500")],
            sizes[("istio_response_bytes_bucket", "1000")]) == (1, 1, 2)
    assert (sizes[("istio_response_bytes_sum", None)], sizes[("istio_response_bytes_count", None)]) == (513, 2)
    total = [s for s in parsed["istio_request_bytes"].samples
             if s.name == "istio_request_bytes_count" and s.labels["response_code"] == "403"]
    assert [s.value for s in total] == [1]


def test_tcp_tunnels_are_counted_opened_and_closed_with_their_bytes():
    metrics = WaypointMetrics()
    metrics.tcp(TUNNEL)
    metrics.tcp(replace(TUNNEL, sent_bytes=1, received_bytes=2, response_flags="UF"))
    parsed = families(metrics)
    by_flag = {(family, s.labels["response_flags"]): s.value
               for family in ("istio_tcp_connections_opened", "istio_tcp_connections_closed",
                              "istio_tcp_sent_bytes", "istio_tcp_received_bytes")
               for s in parsed[family].samples}
    assert by_flag == {("istio_tcp_connections_opened", "-"): 1, ("istio_tcp_connections_opened", "UF"): 1,
                       ("istio_tcp_connections_closed", "-"): 1, ("istio_tcp_connections_closed", "UF"): 1,
                       ("istio_tcp_sent_bytes", "-"): 300, ("istio_tcp_sent_bytes", "UF"): 1,
                       ("istio_tcp_received_bytes", "-"): 100, ("istio_tcp_received_bytes", "UF"): 2}
    assert all(s.labels["reporter"] == "waypoint" and s.labels["request_protocol"] == "tcp"
               for s in parsed["istio_tcp_connections_opened"].samples)


class Open:
    open_tunnels = 3
    open_requests = 5

    def __init__(self, samples=()):
        self.samples = list(samples)

    def plugin_samples(self):
        return iter(self.samples)


def test_gauges_only_when_followed_and_the_build():
    metrics = WaypointMetrics(build_tag='v"1')
    assert "ambient_waypoint_open_tunnels" not in families(metrics)
    metrics.follow(Open())
    parsed = families(metrics)
    assert parsed["ambient_waypoint_open_tunnels"].samples[0].value == 3
    assert parsed["ambient_waypoint_open_requests"].samples[0].value == 5
    assert parsed["istio_build"].samples[0].labels == {"component": "proxy", "tag": 'v"1'}


def test_wasm_plugin_metrics_are_exported_by_plugin_with_names_the_format_allows():
    metrics = WaypointMetrics()
    metrics.follow(Open([
        ("shop/a", "wasm_requests_total", "counter", 7), ("shop/b", "wasm_requests_total", "counter", 2),
        ("shop/a", "wasmcustom.queue-depth", "gauge", -3), ("shop/a", "9lives", "counter", 1),
        ("shop/a", "latency", "histogram", (4, 10)),
        ("shop/b", "latency", "counter", 5),  # another kind under a name already taken: left out
    ]))
    parsed = families(metrics)
    assert {(s.labels["plugin"], s.value) for s in parsed["wasm_requests"].samples} == {("shop/a", 7), ("shop/b", 2)}
    assert parsed["wasmcustom_queue_depth"].samples[0].value == -3
    assert parsed["_9lives"].type == "counter"
    latency = {s.name: s.value for s in parsed["latency"].samples}
    assert latency == {"latency_bucket": 4, "latency_sum": 10, "latency_count": 4}


@pytest.mark.parametrize("changes", [
    {}, {"status": 503, "response_flags": "UF,URX"}, {"protocol": "grpc", "grpc_status": "7"},
    {"source": None, "source_principal": None}, {"destination": None, "destination_principal": None},
    {"destination_service": None, "status": 0, "response_flags": "DC"},
])
def test_the_series_key_is_the_label_values_in_order(changes):
    from waypoint.metrics import _request_key

    record = request(**changes)
    assert _request_key(record) == tuple(request_labels(record).values())


def test_a_series_is_one_whatever_finds_it(monkeypatch):
    """Requests are counted into their series as found by the objects they come from: equal labels from
    other objects (a new view), an out-of-range status, or a dropped cache still count into one series."""
    import waypoint.metrics as module

    metrics = WaypointMetrics()
    metrics.request(REQUEST)
    metrics.request(replace(REQUEST, source=replace_workload(CLIENT)))  # the same labels, another object
    monkeypatch.setattr(module, "_SERIES_CACHE_SIZE", 1)  # every new find drops the cache
    metrics.request(replace(REQUEST, response_flags=None))  # "-" as the label
    metrics.request(REQUEST)
    metrics.request(request(status=999))
    metrics.request(request(status=1000))
    assert metrics.requests_total(EXPECTED) == 4
    assert metrics.requests_total(EXPECTED | {"response_code": "unknown"}) == 2
    parsed = families(metrics)
    assert len(parsed["istio_requests"].samples) == 2
    counts = {s.labels["response_code"]: s.value for s in parsed["istio_request_duration_milliseconds"].samples
              if s.name.endswith("_count")}
    assert counts == {"200": 4, "unknown": 2}


def replace_workload(workload):
    copy = type(workload)()
    copy.CopyFrom(workload)
    return copy
