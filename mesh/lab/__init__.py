"""The local lab: a cluster of network namespaces on one Linux machine (DESIGN.md section 9).

`topology` plans the lab's namespaces, links, addresses and routes (pure); `network` builds and
removes them (root, pyroute2); `processes` runs and restarts the lab's processes in their netns and
cgroups (root, cgroup v2); `probes` decides when a container is ready; `workloads` (pure) and
`components` say what runs where; `daemon` is the running lab; `state` and `cli` are how the
`ambient lab` commands find and drive it.
"""

from mesh.lab.network import LabExistsError, add_pod, create, destroy, lab_netns, remove_pod, run_in_netns
from mesh.lab.processes import (
    Backoff,
    CgroupError,
    CgroupUnavailableError,
    ProcessSpec,
    ProcessState,
    ProcessStatus,
    RestartPolicy,
    Supervisor,
    cleanup_cgroups,
    lab_cgroup_dir,
    pod_env,
    process_cgroup,
)
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
    "Backoff",
    "CgroupError",
    "CgroupUnavailableError",
    "ControlPlanePlan",
    "LabExistsError",
    "LabPlan",
    "LabPlanError",
    "NodePlan",
    "PodPlan",
    "PodSpec",
    "ProcessSpec",
    "ProcessState",
    "ProcessStatus",
    "RestartPolicy",
    "Route",
    "Supervisor",
    "add_pod",
    "cleanup_cgroups",
    "create",
    "destroy",
    "lab_cgroup_dir",
    "lab_netns",
    "netns_prefix",
    "plan_lab",
    "pod_env",
    "process_cgroup",
    "remove_pod",
    "run_in_netns",
    "validate_lab_name",
]
