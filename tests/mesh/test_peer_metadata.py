"""The baggage and traceparent of HBONE CONNECTs (``mesh.peer_metadata``), as Istio's ztunnel writes them."""

from __future__ import annotations

import re

from mesh.api import workload_pb2 as wpb
from mesh.peer_metadata import Baggage, baggage_header, new_traceparent, parse_baggage


def test_a_deployments_pod_is_written_as_istios_ztunnel_writes_it():
    workload = wpb.Workload(name="web-v1-abc-0", namespace="shop", workload_name="web-v1", canonical_name="web",
                            canonical_revision="v1", workload_type=wpb.DEPLOYMENT, cluster_id="east",
                            locality=wpb.Locality(region="eu", zone="eu-1"))
    assert baggage_header(workload) == ("k8s.cluster.name=east,k8s.namespace.name=shop,k8s.deployment.name=web-v1,"
                                        "service.name=web,service.version=v1,cloud.region=eu,"
                                        "cloud.availability_zone=eu-1")
    assert parse_baggage(baggage_header(workload)) == Baggage("east", "shop", "web-v1", "web", "v1", "eu", "eu-1")


def test_missing_values_are_left_out_and_the_cluster_defaults():
    workload = wpb.Workload(name="client", namespace="shop", workload_type=wpb.POD)
    assert baggage_header(workload) == "k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.pod.name=client"


def test_reading_is_lenient_as_istios():
    assert parse_baggage(None) == Baggage()
    assert parse_baggage("k8s.job.name=j,service.name=,junk,x=y,service.version=v2;prop=1, k8s.namespace.name=a%2Cb") \
        == Baggage(namespace="a,b", workload_name="j", revision="v2")


def test_a_value_that_needs_escaping_survives_the_round_trip():
    workload = wpb.Workload(name="p", namespace="ns", canonical_revision="v=1,2", workload_type=wpb.POD)
    assert "v%3D1%2C2" in baggage_header(workload)
    assert parse_baggage(baggage_header(workload)).revision == "v=1,2"


def test_traceparent_is_w3c_unsampled_and_new_each_time():
    values = {new_traceparent() for _ in range(50)}
    assert len(values) == 50
    assert all(re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-00", value) for value in values)
