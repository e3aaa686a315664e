"""The local lab: a cluster of network namespaces on one Linux machine (DESIGN.md section 9).

`topology` plans the lab's namespaces, links, addresses and routes (pure); `network` builds and
removes them (root, pyroute2); `processes` runs and restarts the lab's processes in their netns and
cgroups (root, cgroup v2); `probes` decides when a container is ready; `workloads` (pure) and
`components` say what runs where (the control plane, each node's agent and ztunnel, each waypoint's
proxy); `waypoints` is what `lab status` and `ambient waypoint` say of the waypoints, and
`waypoint_cli` (with `yaml_edit`) is `ambient waypoint apply|list|delete|status`; `agents` reads
what the node agents report of each pod's capture; `daemon` is the running lab; `state` and `cli`
are how the `ambient lab` commands find and drive it. `demo` is `ambient demo` (what `make demo`
runs) and `launch` starts `ambient` commands as child processes for the demo, the tests and the
benchmarks.

The lab may import every package; only the `ambient` command imports the lab: no component that
runs in production loads it.

`network`'s names are loaded on first use: it brings pyroute2, which the commands that only read
the lab need not hold in memory.
"""

from lab.processes import (
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
from lab.topology import (
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

_NETWORK_NAMES = frozenset(
    {"LabExistsError", "add_pod", "create", "destroy", "lab_netns", "remove_pod", "run_in_netns"}
)


def __getattr__(name: str):
    if name in _NETWORK_NAMES:
        from lab import network

        return getattr(network, name)
    raise AttributeError(f"module 'lab' has no attribute {name!r}")
