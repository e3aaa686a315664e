"""The waypoints of a running lab, as `lab status` and `ambient waypoint list|status` show them.

Pure functions of the cluster state (the YAML the lab read) and the pod entries of the lab's status:
one entry per Gateway of class istio-waypoint, with the traffic it takes (``istio.io/waypoint-for``
as istiod reads it), the pod that runs it, and whether that pod is Ready, which is what the lab
reports as the Gateway's ``Programmed`` condition (istiod sets it once the waypoint's deployment is
available). ``used_by`` lists the objects whose own ``istio.io/use-waypoint`` label names the
waypoint (a Service or Pod that inherits its namespace's label is not listed again: the namespace is).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from controlplane.view import ClusterState, waypoint_pod, waypoint_ref
from mesh import resources as r

_NO_LABELS: Mapping[str, str] = {}
REVISION_LABEL = "istio.io/rev"  # istioctl's REVISION column: this label, else "default"

# Istio's Programmed condition of a waypoint Gateway: (status, reason) once its pod is ready, and
# while it is not.
PROGRAMMED = ("True", "Programmed")
NOT_PROGRAMMED = ("False", "NoResources")


def _users(state: ClusterState) -> dict[tuple[str, str], list[str]]:
    """Waypoint (namespace, name) -> the objects that name it in their own use-waypoint label."""
    users: dict[tuple[str, str], list[str]] = {}

    def add(meta: r.Meta, what: str) -> None:
        ref = waypoint_ref(meta, _NO_LABELS)
        if ref is not None:
            users.setdefault(ref, []).append(what)

    for name, ns in sorted(state.namespaces.items()):
        add(r.Meta(name, name, ns.meta.labels), f"namespace {name}")
    for (namespace, name), svc in sorted(state.services.items()):
        add(svc.meta, f"service {namespace}/{name}")
    for (namespace, name), pod in sorted(state.pods.items()):
        add(pod.meta, f"pod {namespace}/{name}")
    return users


def waypoint_entries(state: ClusterState, pods: Iterable[Mapping]) -> list[dict]:
    """One entry per waypoint Gateway of ``state``, sorted by namespace and name; ``pods`` are the
    pod entries of the lab's status (``Lab.status()["pods"]``)."""
    if not state.gateways:
        return []
    by_key = {(p["namespace"], p["name"]): p for p in pods}
    users = _users(state)
    entries = []
    for (namespace, name), gateway in sorted(state.gateways.items()):
        pod_name = waypoint_pod(gateway).meta.name
        pod = by_key.get((namespace, pod_name))
        ready = bool(pod and pod["all_ready"])
        entries.append({
            "namespace": namespace, "name": name, "for": state.waypoint_for(gateway),
            "revision": gateway.meta.labels.get(REVISION_LABEL, "default"),
            "pod": pod_name, "ready": pod["ready"] if pod else "0/1", "programmed": ready,
            "state": pod["state"] if pod else "Pending",
            "message": None if ready or pod is None else pod["message"],
            "used_by": users.get((namespace, name), []),
        })
    return entries


def programmed_condition(entry: Mapping) -> tuple[str, str, str]:
    """The waypoint's Programmed condition as istioctl prints it: (status, reason, message)."""
    if entry["programmed"]:
        return (*PROGRAMMED, f"waypoint pod {entry['namespace']}/{entry['pod']} is ready")
    why = entry.get("message") or entry.get("state") or "not ready"
    return (*NOT_PROGRAMMED, f"waypoint pod {entry['namespace']}/{entry['pod']} is not ready: {why}")
