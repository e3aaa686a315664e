"""The mesh's own processes in a lab: the control plane, and per node and per waypoint what the later
parts of the mesh add. This is the one place that says what runs where; the daemon starts whatever
these functions return, supervises it like a pod's container and logs it to ``logs/<name>.log``.

- The control plane (CA and discovery) runs in the lab's ``cp`` netns on the fabric, at
  10.255.0.2:15012 (metrics on 15014), and serves the lab's YAML directory; every node reaches it.
- Each node will run its node agent (eBPF capture, issue #5) and its ztunnel (issue #6) in the node's
  netns: ``node_processes``.
- Each waypoint Gateway will run its proxy (issue #8) in the waypoint pod's netns:
  ``waypoint_processes``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mesh.lab.processes import ProcessSpec, process_cgroup
from mesh.lab.state import LabPaths
from mesh.lab.topology import LabPlan, NodePlan, PodPlan

CONTROLPLANE = "controlplane"
CONTROLPLANE_PORT = 15012
CONTROLPLANE_METRICS_PORT = 15014
CONTROLPLANE_SERVER_NAME = "istiod.istio-system.svc"


def controlplane_address(plan: LabPlan) -> tuple[str, int]:
    return str(plan.control_plane.address.ip), CONTROLPLANE_PORT


def _ambient(log_level: str, *args: str) -> tuple[str, ...]:
    # The venv's interpreter runs the installed package, whatever the working directory.
    return (sys.executable, "-m", "mesh", "--log-level", log_level, *args)


def controlplane_process(paths: LabPaths, plan: LabPlan, config_dir: Path, log_level: str = "info") -> ProcessSpec:
    host, port = controlplane_address(plan)
    argv = _ambient(
        log_level, "controlplane", "--config", str(config_dir), "--state", str(paths.controlplane),
        "--listen", f"{host}:{port}", "--metrics-listen", f"{host}:{CONTROLPLANE_METRICS_PORT}",
        "--server-name", CONTROLPLANE_SERVER_NAME, "--server-name", host,
    )
    return ProcessSpec(
        name=CONTROLPLANE, argv=argv, log_path=paths.component_log(CONTROLPLANE),
        cgroup=process_cgroup(paths.name, CONTROLPLANE), netns=plan.control_plane.netns,
    )


def node_processes(paths: LabPaths, plan: LabPlan, node: NodePlan, log_level: str = "info") -> tuple[ProcessSpec, ...]:
    """What runs in each node's netns. Empty until the node agent (#5) and ztunnel (#6) exist; they
    will connect to ``controlplane_address(plan)`` with a node token from ``paths.controlplane``."""
    return ()


def waypoint_processes(paths: LabPaths, plan: LabPlan, pod: PodPlan, log_level: str = "info") -> tuple[ProcessSpec, ...] | None:
    """The waypoint proxy of a waypoint Gateway's pod; None while the waypoint (#8) does not exist,
    which `lab status` reports on the pod instead of running nothing silently."""
    return None
