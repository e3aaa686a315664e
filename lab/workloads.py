"""What the lab runs for the cluster state: which pods go on which node, and the process of each
container. Pure functions of the resources and the plan (no I/O), so the daemon's reconcile loop is
a diff of two of their results.

- Pods are every pod of the state: bare Pods, the pods of Deployments, and one pod per waypoint
  Gateway (``controlplane.view.waypoint_pod``). ``spec.nodeName`` picks a node by name (``node-0``...); a
  name the lab does not have leaves the pod Pending with the reason, as a Kubernetes scheduler would.
- A container runs ``command`` + ``args`` in the pod's netns, in its own cgroup, with the pod's
  environment and the YAML directory as its working directory (the samples run files beside their
  manifest), isolated from the node by ``pod_sandbox``: it cannot see any lab's state directory,
  where the CA key, the node tokens and the node agents' sockets are. The lab runs commands, not
  images, with one exception: a container without ``command`` whose image is one of Istio's sample
  images runs the built-in equivalent (``lab.sample_images``), with the image's ENV under its own
  ``env``; any other container without ``command`` cannot start, and its pod says why.
- A container's environment is the pod variables, the image's ENV, then its ``envFrom`` and ``env``
  (``lab.env``: the downward API's fields, ConfigMap keys); a ConfigMap or key it needs and lacks keeps the
  pod waiting (``CreateContainerConfigError``) until the ConfigMap is there. ``restartPolicy`` is each
  container process's.
- A waypoint's pod gets its netns and IP like any pod; its proxy is a component of the lab
  (``lab.components.waypoint_processes``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from controlplane.view import ClusterState
from lab.env import CREATE_CONTAINER_CONFIG_ERROR, config_problem, container_env, referenced_config_maps
from lab.isolation import PodSandbox
from lab.processes import ProcessSpec, RestartPolicy, pod_env, process_cgroup
from lab.sample_images import UnknownImageError, image_program
from lab.state import LabPaths
from lab.topology import PodPlan, node_fabric_address
from mesh import resources as r

_NODE_NAME = re.compile(r"node-(0|[1-9][0-9]*)")


def node_name(index: int) -> str:
    return f"node-{index}"


@dataclass(frozen=True)
class LabPod:
    """A pod of the cluster state, as the lab schedules it."""

    pod: r.Pod
    node: int | None  # the node asked for by nodeName; None to let the lab spread it
    unschedulable: str | None = None  # why it cannot run on any node of this lab
    # The ConfigMaps its env reads (of its namespace, by name), as they were when it was last desired.
    config_maps: Mapping[str, r.ConfigMap] = dataclasses.field(default_factory=dict)
    config_error: str | None = None  # a ConfigMap or key it needs is missing: it waits (lab.env)

    @property
    def key(self) -> tuple[str, str]:
        return (self.pod.meta.namespace, self.pod.meta.name)

    @property
    def is_waypoint(self) -> bool:
        return self.pod.owner.startswith("Gateway/")

    def runtime_spec(self) -> tuple:
        """What a running pod's processes depend on: a change means a restart of the pod. Whether its
        ConfigMaps are there counts (a waiting pod starts once they are), not their data (as the kubelet,
        a running container keeps the values it started with)."""
        return (self.pod.spec, self.node, self.config_error is None)


def desired_pods(state: ClusterState, node_count: int,
                 config_maps: Mapping[tuple[str, str], r.ConfigMap] | None = None) -> dict[tuple[str, str], LabPod]:
    """Every pod of ``state`` with its node, and the ConfigMaps (by namespace and name) its env reads."""
    pods = {}
    for key, pod in sorted(state.pods.items()):
        namespace = pod.meta.namespace
        found = {name: cm for name in sorted(referenced_config_maps(pod))
                 if (cm := (config_maps or {}).get((namespace, name))) is not None}
        wanted = pod.spec.node_name
        node, unschedulable = None, None
        match = _NODE_NAME.fullmatch(wanted)
        if match and int(match.group(1)) < node_count:
            node = int(match.group(1))
        elif wanted:
            known = ", ".join(node_name(i) for i in range(node_count))
            unschedulable = f"spec.nodeName {wanted!r} is not a node of this lab ({known})"
        pods[key] = LabPod(pod, node, unschedulable, found, config_problem(pod, found))
    return pods


@dataclass(frozen=True)
class ContainerPlan:
    name: str
    process: ProcessSpec | None  # None when it cannot run; `problem` says why
    problem: str | None = None
    readiness_probe: r.Probe | None = None  # run by the daemon
    liveness_probe: r.Probe | None = None  # run by the daemon, which restarts the process when it fails


def container_process_name(namespace: str, pod: str, container: str) -> str:
    return f"{namespace}/{pod}/{container}"


def pod_sandbox(paths: LabPaths, config_dir: Path) -> PodSandbox:
    """The isolation of every pod's processes (containers, exec probes, `ambient exec`): the state
    root of all labs is hidden, since a pod of one lab has no business with another's secrets either;
    only this lab's own directory if the YAML directory, which pods run from, lies in that root."""
    state_root = paths.root.parent
    if Path(config_dir).absolute().is_relative_to(state_root.absolute()):
        return PodSandbox(hidden=(paths.root,))
    return PodSandbox(hidden=(state_root,))


def container_plans(paths: LabPaths, lab_pod: LabPod, placed: PodPlan, cwd: Path) -> tuple[ContainerPlan, ...]:
    pod = lab_pod.pod
    namespace, name = lab_pod.key
    plans = []
    node = node_name(placed.node)
    host_ip = str(node_fabric_address(placed.node).ip)
    for container in pod.spec.containers:
        probe = container.readiness_probe
        if lab_pod.config_error:
            plans.append(ContainerPlan(container.name, None, lab_pod.config_error))
            continue
        argv, image_env = (*container.command, *container.args), {}
        if not container.command:
            try:  # one of Istio's sample images: its built-in equivalent, as the image would run it
                program = image_program(container.image, container.args)
            except UnknownImageError as exc:
                plans.append(ContainerPlan(container.name, None, f"container {container.name!r} has no command: {exc}"))
                continue
            argv, image_env = program.argv, dict(program.env)
        if container.run_as_non_root and not container.run_as_user:
            # As the kubelet: a lab container runs as root unless the YAML names another user.
            plans.append(ContainerPlan(container.name, None, f"container {container.name!r} has runAsNonRoot "
                                       "but would run as root: set securityContext.runAsUser to a non-zero uid"))
            continue
        try:
            own = container_env(pod, container, lab_pod.config_maps, pod_ip=str(placed.ip), node=node,
                                host_ip=host_ip)
            env = pod_env(namespace, name, str(placed.ip), pod.spec.service_account, {**image_env, **own})
            process_name = container_process_name(namespace, name, container.name)
            spec = ProcessSpec(
                name=process_name,
                argv=argv,
                log_path=paths.container_log(namespace, name, container.name),
                cgroup=process_cgroup(paths.name, process_name),
                netns=placed.netns,
                env=env,
                cwd=cwd,
                restart_policy=RestartPolicy(pod.spec.restart_policy),
                sandbox=dataclasses.replace(pod_sandbox(paths, cwd), run_as_user=container.run_as_user,
                                            run_as_group=container.run_as_group),
            )
        except ValueError as exc:
            plans.append(ContainerPlan(container.name, None, str(exc)))
            continue
        plans.append(ContainerPlan(container.name, spec, None, probe, container.liveness_probe))
    return tuple(plans)


def pod_phase(container_states: Mapping[str, str], problems: Mapping[str, str], unschedulable: str | None,
              config_error: str | None = None) -> str:
    """A pod's state in `lab status`, in kubectl's words, from its containers' states."""
    if unschedulable:
        return "Pending"
    if config_error:
        return CREATE_CONTAINER_CONFIG_ERROR
    if problems:
        return "Error"
    states = set(container_states.values())
    if not states:
        return "Pending"
    for state, phase in (("failed", "Error"), ("backoff", "CrashLoopBackOff"), ("starting", "ContainerCreating")):
        if state in states:
            return phase
    if states == {"stopped"}:
        return "Completed"
    return "Running"
