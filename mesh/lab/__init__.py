"""The local lab: a cluster of network namespaces on one Linux machine (DESIGN.md section 9).

`topology` plans the lab's namespaces, links, addresses and routes (pure); `network` builds and
removes them (root, pyroute2).
"""

from mesh.lab.network import LabExistsError, add_pod, create, destroy, lab_netns, remove_pod, run_in_netns
from mesh.lab.topology import (
    ControlPlanePlan,
    LabPlan,
    LabPlanError,
    NodePlan,
    PodPlan,
    PodSpec,
    Route,
    netns_prefix,
    plan_lab,
    validate_lab_name,
)

__all__ = [
    "ControlPlanePlan",
    "LabExistsError",
    "LabPlan",
    "LabPlanError",
    "NodePlan",
    "PodPlan",
    "PodSpec",
    "Route",
    "add_pod",
    "create",
    "destroy",
    "lab_netns",
    "netns_prefix",
    "plan_lab",
    "remove_pod",
    "run_in_netns",
    "validate_lab_name",
]
