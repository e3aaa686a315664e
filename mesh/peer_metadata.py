"""The peer metadata HBONE CONNECTs carry besides ``forwarded`` (DESIGN.md section 6): ``baggage``
and ``traceparent``, made by the source's ztunnel, read by the waypoint and the destination.

``baggage_header(workload)`` writes the source workload as Istio's ztunnel does
(``src/baggage.rs``, ``baggage_header_val``): W3C baggage entries ``k8s.cluster.name``,
``k8s.namespace.name``, ``k8s.<type>.name`` (the workload's kind: deployment, cronjob, job or pod,
and its workload name), ``service.name`` (the canonical service), ``service.version`` (the canonical
revision), ``cloud.region`` and ``cloud.availability_zone``; an entry without a value is left out.
Values are percent-encoded where W3C baggage requires it (Kubernetes names never need it).
``parse_baggage`` reads it back leniently, as Istio does: unknown keys and malformed entries are
skipped, an empty value is no value.

``new_traceparent()`` starts a new W3C trace for one connection (``00-<trace id>-<span id>-00``: not
sampled, since no tracer records it), so the hops of one connection can be correlated in logs.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from urllib.parse import quote, unquote

from mesh.api import workload_pb2 as wpb
from mesh.istio_labels import DEFAULT_CLUSTER

_WORKLOAD_KEYS = {"k8s.deployment.name", "k8s.cronjob.name", "k8s.pod.name", "k8s.job.name"}
MAX_BAGGAGE = 8192  # W3C baggage: a receiver need not read more than 8192 bytes of it


@dataclass(frozen=True, slots=True)
class Baggage:
    cluster: str | None = None
    namespace: str | None = None
    workload_name: str | None = None
    service_name: str | None = None
    revision: str | None = None
    region: str | None = None
    zone: str | None = None


def _encode(value: str) -> str:
    return quote(value, safe="")


def baggage_header(workload: wpb.Workload) -> str:
    """The ``baggage`` value describing ``workload``, the source of a connection."""
    kind = wpb.WorkloadType.Name(workload.workload_type).lower()
    entries = (
        ("k8s.cluster.name", workload.cluster_id or DEFAULT_CLUSTER),
        ("k8s.namespace.name", workload.namespace),
        (f"k8s.{kind}.name", workload.workload_name or workload.name),
        ("service.name", workload.canonical_name),
        ("service.version", workload.canonical_revision),
        ("cloud.region", workload.locality.region),
        ("cloud.availability_zone", workload.locality.zone),
    )
    return ",".join(f"{key}={_encode(value)}" for key, value in entries if value)


def parse_baggage(value: str | None) -> Baggage:
    """What ``baggage_header`` wrote (or Istio's ztunnel), from a header value; lenient."""
    if not value:
        return Baggage()
    fields: dict[str, str] = {}
    for entry in value[:MAX_BAGGAGE].split(","):
        key, sep, raw = entry.partition("=")
        if not sep:
            continue
        text = unquote(raw.split(";", 1)[0].strip())  # W3C baggage properties follow a ';'
        if not text:
            continue
        key = key.strip()
        name = {"k8s.cluster.name": "cluster", "k8s.namespace.name": "namespace", "service.name": "service_name",
                "service.version": "revision", "cloud.region": "region", "cloud.availability_zone": "zone"}.get(key)
        if name is None and key in _WORKLOAD_KEYS:
            name = "workload_name"
        if name is not None:
            fields[name] = text
    return Baggage(**fields)


def new_traceparent() -> str:
    """A W3C ``traceparent`` for a new trace: random 128-bit trace id and 64-bit span id, not sampled.

    Neither id may be all zeros (W3C: invalid); 2**-64 odds, but cheap to exclude."""
    trace_id = secrets.token_hex(16)
    span_id = secrets.token_hex(8)
    while int(trace_id, 16) == 0:
        trace_id = secrets.token_hex(16)
    while int(span_id, 16) == 0:
        span_id = secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-00"
