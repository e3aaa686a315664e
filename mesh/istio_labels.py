"""The source and destination labels of Istio's standard metrics, from the mesh's own view.

Both proxies label alike (ztunnel's ``istio_tcp_*``, the waypoint's ``istio_requests_total`` and
the rest): these functions take the workloads and the service as discovery sent them, and the
principals TLS verified, and return the ``<side>_*`` label values following Istio's ztunnel
(``src/proxy/metrics.rs``, ``CommonTrafficLabels``): anything not known is ``"unknown"``.

Label values come only from the mesh's view (workloads, services, verified identities), never
from what a request says (path, method, headers): the number of series is bounded by the mesh's
size, not by what clients send.
"""

from __future__ import annotations

from mesh.api import workload_pb2 as wpb
from mesh.identity import InvalidSpiffeId
from mesh.proxy_state import identity_of

UNKNOWN = "unknown"
DEFAULT_CLUSTER = "Kubernetes"  # Istio's default cluster id
MUTUAL_TLS = "mutual_tls"

WORKLOAD_LABELS = ("workload", "canonical_service", "canonical_revision", "workload_namespace", "app", "version",
                   "cluster", "region", "zone")


def workload_labels(side: str, workload: wpb.Workload | None) -> dict[str, str]:
    """The ``<side>_*`` labels that come from the workload itself (``side`` is source or destination).

    Choices, where the proto leaves room: ``workload`` is ``workload_name`` (the Deployment, or the
    pod for a bare pod: the control plane fills it so) and falls back to the pod name;
    ``canonical_service`` and ``app`` are ``canonical_name`` (which the control plane derives from
    the ``service.istio.io/canonical-name``, ``app.kubernetes.io/name`` and ``app`` labels, as Istio
    does; Istio's ztunnel also reports it as ``app``) and fall back to the workload name;
    ``canonical_revision`` and ``version`` are ``canonical_revision``; ``cluster`` is ``cluster_id``,
    else ``Kubernetes``; ``region`` and ``zone`` are the workload's locality's."""
    if workload is None:
        return {f"{side}_{name}": UNKNOWN for name in WORKLOAD_LABELS}
    name = workload.workload_name or workload.name or UNKNOWN
    canonical = workload.canonical_name or name
    revision = workload.canonical_revision or UNKNOWN
    return {
        f"{side}_workload": name,
        f"{side}_canonical_service": canonical,
        f"{side}_canonical_revision": revision,
        f"{side}_workload_namespace": workload.namespace or UNKNOWN,
        f"{side}_app": canonical,
        f"{side}_version": revision,
        f"{side}_cluster": workload.cluster_id or DEFAULT_CLUSTER,
        f"{side}_region": workload.locality.region or UNKNOWN,
        f"{side}_zone": workload.locality.zone or UNKNOWN,
    }


def principal(explicit: str | None, workload: wpb.Workload | None, mutual_tls: bool) -> str:
    """The principal given, else (mTLS only) the workload's own SPIFFE ID, else unknown. A
    plaintext connection proves no identity, so it reports none even for a known workload."""
    if explicit:
        return explicit
    if mutual_tls and workload is not None:
        try:
            return str(identity_of(workload))
        except InvalidSpiffeId:
            return UNKNOWN
    return UNKNOWN


def service_labels(service: wpb.Service | None) -> dict[str, str]:
    """``destination_service`` (the hostname), ``destination_service_namespace`` and ``_name``."""
    if service is None:
        return {"destination_service": UNKNOWN, "destination_service_namespace": UNKNOWN,
                "destination_service_name": UNKNOWN}
    return {"destination_service": service.hostname or UNKNOWN,
            "destination_service_namespace": service.namespace or UNKNOWN,
            "destination_service_name": service.name or UNKNOWN}
