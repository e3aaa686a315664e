"""Waypoint configuration from real YAML, for table tests: parse → registry → view, as the control plane does.

``l7_config_from_yaml(text)`` gives what discovery would send a waypoint for the manifests in
``text``: the L7Policies, the Routes, and the Address resources (Workloads and Services, keyed by
their discovery names) that the policies' and routes' references name. Every pod counts as
running and ready (IPs 10.244.0.2, .3, ... in the order of their keys, on node ``node-a``); Service
VIPs come from the registry's allocator, so they are stable for the same YAML.
"""

from __future__ import annotations

from controlplane.registry import Registry
from controlplane.view import MeshConfig, PodStatus, compute_view
from mesh.api import waypoint_pb2 as wp, workload_pb2 as wpb
from mesh.parse import parse_text

NODE = "node-a"


def l7_config_from_yaml(text: str, config: MeshConfig = MeshConfig(), *, file: str = "t.yaml",
                        ) -> tuple[list[wp.L7Policy], list[wp.Route], dict[str, wpb.Address]]:
    """``(policies, routes, addresses)`` of the manifests in ``text``, each list in the order of its
    discovery names. Raises ``ValueError`` listing the errors if the YAML has any."""
    parsed = parse_text(text, file)
    if parsed.errors:
        raise ValueError("YAML with errors:\n" + "\n".join(str(p) for p in parsed.errors))
    registry = Registry()
    registry.set_file(file, parsed.resources)
    pods = sorted(registry.state().pods)
    registry.replace_pod_statuses({key: PodStatus(f"10.244.0.{i + 2}", NODE) for i, key in enumerate(pods)})
    view = compute_view(registry.state(), config)
    addresses = {uid: wpb.Address(workload=w) for uid, w in view.workloads.items()}
    addresses.update((key, wpb.Address(service=s)) for key, s in view.services.items())
    return ([view.l7_policies[k] for k in sorted(view.l7_policies)], [view.routes[k] for k in sorted(view.routes)],
            addresses)
