"""What discovery sends for a small mesh written as YAML, through the real parse → view → pack
pipeline: for tests that label or route by the workloads and services the control plane really makes."""

from __future__ import annotations

from controlplane.view import ClusterState, PodStatus, compute_view
from mesh.api import workload_pb2 as wpb
from mesh.api.types import ADDRESS_TYPE_URL, unpack
from mesh.parse import parse_text


def discovered(text: str, vips: dict[tuple[str, str], str]) -> tuple[dict[str, wpb.Workload], dict[str, wpb.Service]]:
    """Workloads by workload name and services by name, for the YAML ``text``: every pod ready on
    node-0 at 10.244.0.10, .11, ... in document order; ``vips`` gives each Service's (ns, name) its VIP."""
    parsed = parse_text(text, "world.yaml")
    assert [str(p) for p in parsed.errors] == []
    pods = [pod for res in parsed.resources if type(res).__name__ in ("Pod", "Deployment")
            for pod in getattr(res, "pods", (res,))]
    status = {(pod.meta.namespace, pod.meta.name): PodStatus(f"10.244.0.{10 + i}", "node-0", ready=True)
              for i, pod in enumerate(pods)}
    state = ClusterState.build(parsed.resources, status, vips)
    packed = compute_view(state).resources()[ADDRESS_TYPE_URL]
    workloads, services = {}, {}
    for message in packed.values():
        address = unpack(message, ADDRESS_TYPE_URL)
        if address.WhichOneof("type") == "workload":
            workloads[address.workload.workload_name] = address.workload
        else:
            services[address.service.name] = address.service
    return workloads, services
