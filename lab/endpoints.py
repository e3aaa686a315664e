"""A Service's endpoints in the lab, as the EndpointSlice controller picks them: the pods of its
namespace that its selector matches, with an IP, and ready (any of them with
``publishNotReadyAddresses``). A Service without a selector has none (the lab keeps no EndpointSlices
of its own). One rule for the cluster DNS (headless Services) and the kube-proxy (VIPs)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def selected_pods(state: Any, pod_status: Mapping[tuple[str, str], Any], namespace: str,
                  svc: Any) -> list[tuple[Any, Any]]:
    """``(pod, status)`` of each endpoint of Service ``svc`` in ``namespace``, in pod key order, from a
    ``controlplane.view.ClusterState`` and the pods' status (``PodStatus``: ip, node, ready)."""
    if not svc.selector:
        return []
    selected = []
    for pod_key, pod in sorted(state.pods.items()):
        status = pod_status.get(pod_key)
        if (pod_key[0] != namespace or status is None or not status.ip
                or not (status.ready or svc.publish_not_ready_addresses)):
            continue
        if all(pod.meta.labels.get(k) == v for k, v in svc.selector.items()):
            selected.append((pod, status))
    return selected
