"""The running lab: one process that owns a lab's network, processes and status until it is stopped.

How it works: ``Lab.run`` reads the YAML directory into its own ``Registry``, plans the network
(``topology.plan_lab``), builds it (``network.create``), then under one ``Supervisor`` starts the
control plane in the ``cp`` netns, each node's components and every pod's containers in the pod's
netns (``components``, ``workloads``). It reports ``task_status.started()`` once status.json shows
every pod that can run Running and ready (readiness probes pass) and every ambient pod enrolled
(``awaited_pods``): the check reads the status as written, so `lab status` right after `lab up`
shows what `up` waited for. Then it keeps the lab in step with the directory: a scan every 0.25 s,
and a change re-plans with the previous plan, so pods that stay keep their node and IP while new
ones get a netns and their processes and deleted ones are stopped and removed. A
pod whose spec changed is recreated, as a Kubernetes pod would be, and so is one waiting for a ConfigMap
once it is there (``lab.env``). A container's liveness probe that fails has its process killed, and its
restart policy decides (``lab.probes.run_liveness``, ``Supervisor.kill``).

Every change of a process, a probe or the set of pods rewrites ``status.json`` (for ``ambient lab
status``) and the control plane's ``pods.json`` (pod IP, node and readiness, which feed the mesh's
view), each only when its content changed; so does a change of a node agent's own status.json,
polled as often (``lab.agents``), and so is the cluster DNS's view (``lab.dns``, wired by
``lab.dns_wiring``; the server starts before any pod, whose containers see their namespace's
resolv.conf), and so are the nodes' kube-proxy tables (``lab.kube_proxy``). Cancelling ``run`` stops
every process, then removes every netns and cgroup of the lab; the caller removes the state directory.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from bpf import bpffs
from bpf.agent import STATUS_FILE as AGENT_STATUS_FILE
from controlplane.registry import POD_STATUS_FILE, ConfigDirectory, Registry, write_pod_statuses
from controlplane.view import PodStatus
from lab import components, network
from lab.agents import AWAITING_ZTUNNEL, ENROLLED, AgentStatus, capture_state, read_agent_status
from lab.dns import cluster_view
from lab.dns_wiring import ClusterDns, wait_for_port
from lab.kube_proxy import KubeProxy
from lab.pod_probes import PodProbes
from lab.processes import ProcessState, Supervisor, cleanup_cgroups
from lab.state import LabPaths
from lab.topology import LabPlan, PodPlan, PodSpec, plan_lab
from lab.waypoints import waypoint_entries
from lab.workloads import ContainerPlan, LabPod, container_plans, desired_pods, node_name, pod_phase
from mesh import resources as r
from mesh.errors import describe
from mesh.watched_file import write_json_atomic

log = logging.getLogger("ambient.lab")

SCAN_INTERVAL = 0.25  # as the control plane's own watch of the directory
CONTROLPLANE_READY_TIMEOUT = 60.0  # it makes or loads its CA before it binds


@dataclass(frozen=True)
class LabConfig:
    name: str
    config_dir: Path  # absolute
    node_count: int = 2
    log_level: str = "info"
    ready_timeout: float = 60.0  # for `up` to see every pod ready
    ztunnel: bool = True  # False: the nodes run no ztunnel (capture tests bring their own)


@dataclass
class _PodRuntime:
    """The lab's record of one pod; only the daemon's tasks change it."""

    lab_pod: LabPod
    placed: PodPlan | None = None
    containers: tuple[ContainerPlan, ...] = ()
    ready: dict[str, tuple[bool, str]] = field(default_factory=dict)  # container -> (probe ok, message)
    problem: str | None = None  # why the pod cannot run (beyond its containers)
    scopes: list[trio.CancelScope] = field(default_factory=list)  # its tasks (probes, waits): see _pod_scope
    stopped: bool = False
    announced: bool = False  # progress printed once it was first ready
    waiting: str | None = None  # what its containers wait for before they start
    terminating: bool = False


# Pod states `lab up` reports rather than waits for.
CANNOT_RUN = ("Pending", "Error", "NotRunning", "CreateContainerConfigError")
FINISHED = ("Completed",)  # its containers ran to success and their restartPolicy ends them: nothing to wait for


def awaited_pods(status: dict, ztunnel: bool = True) -> list[dict]:
    """The pods of a ``Lab.status()`` that `lab up` still waits for: each pod that can run, until it
    is ready; each ambient one, until its node's ztunnel has it (enrolled), or with no ztunnel in the
    lab (``ztunnel`` False) until its node agent captures it, as its containers wait for."""
    taken = (ENROLLED,) if ztunnel else (ENROLLED, AWAITING_ZTUNNEL)
    return [pod for pod in status["pods"] if pod["state"] not in (*CANNOT_RUN, *FINISHED) and (
        not pod["all_ready"] or (pod["dataplane_mode"] == "ambient" and pod["capture"] not in taken))]


class Lab:
    def __init__(self, config: LabConfig, paths: LabPaths, progress: Callable[[str], None] = lambda line: None) -> None:
        self.config = config
        self.paths = paths
        self.progress = progress
        self.registry = Registry()
        self.directory = ConfigDirectory(config.config_dir, self.registry)
        self.plan: LabPlan | None = None
        self.pods: dict[tuple[str, str], _PodRuntime] = {}
        self._created: dict[tuple[int, str, str], str] = {}  # (kind, namespace, name) → first seen
        self.supervisor = Supervisor(config.name, on_change=self._notify)
        self.probes = PodProbes(self.supervisor, config.config_dir, self._notify)
        self._nursery: trio.Nursery | None = None
        self._version = 0
        self._changed = trio.Event()
        self._written: dict[str, object] = {}
        self._published: dict | None = None  # the status last written to status.json
        self._status_written = trio.Event()  # set (and replaced) after each write of status.json
        self._agents: dict[str, AgentStatus] = {}  # node -> what its agent's status.json said last
        self._controlplane_up = False  # its CA exists: tokens can be minted
        self.dns = ClusterDns(paths)
        self.kube_proxy = KubeProxy(config.name)  # each node's Service DNAT (nftables)

    # -- change notification (status files, waiters)

    def _notify(self) -> None:
        self._version += 1
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_until(self, predicate: Callable[[], bool]) -> None:
        while True:
            changed = self._changed
            if predicate():
                return
            await changed.wait()

    async def _wait_until_published(self, predicate: Callable[[dict], bool]) -> None:
        """Until the status last written to status.json, which `lab status` shows, satisfies
        ``predicate``: a check of the live state could pass before the file says so."""
        while True:
            written = self._status_written
            if self._published is not None and predicate(self._published):
                return
            await written.wait()

    # -- the lab's life

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        started = time.monotonic()
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        self.paths.controlplane.mkdir(parents=True, exist_ok=True)
        self.directory.scan()
        desired = desired_pods(self.registry.state(), self.config.node_count, self._config_maps())
        self.plan = plan_lab(self.config.name, self._pod_specs(desired), self.config.node_count)
        self.pods = {key: _PodRuntime(lab_pod) for key, lab_pod in desired.items()}
        self.progress(f"Creating network: {len(self.plan.nodes)} nodes, {len(self.plan.pods)} pods "
                      f"(fabric {self.plan.fabric_subnet}, pods 10.244.0.0/16)")
        try:
            await trio.to_thread.run_sync(network.create, self.plan)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.supervisor.run)
                await self._start_dns()  # before any pod: a pod's first lookup finds it serving
                nursery.start_soon(self._publish_status)
                nursery.start_soon(self._watch_agents)
                async with trio.open_nursery() as starting:  # side by side: pods do not wait for the mesh yet
                    starting.start_soon(self._start_mesh)
                    for runtime in self.pods.values():
                        starting.start_soon(self._start_pod, runtime)
                self._notify()
                nursery.start_soon(self._watch_directory)
                with trio.move_on_after(self.config.ready_timeout) as waiting:
                    await self._wait_until_published(self._announce_ready)
                if waiting.cancelled_caught:
                    self.progress(f"Not every pod is ready after {self.config.ready_timeout:g} s: "
                                  "see `ambient lab status` and `ambient lab logs`")
                self._report_problems(gave_up=waiting.cancelled_caught)
                task_status.started(time.monotonic() - started)
                await trio.sleep_forever()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._remove_everything)

    def _remove_everything(self) -> None:
        cleanup_cgroups(self.config.name)  # whatever the supervisor could not remove
        bpffs.unmount_under(self.paths.root)  # the node agents' pins: every capture of the lab goes
        network.destroy(self.config.name)

    def _config_maps(self) -> dict[tuple[str, str], r.ConfigMap]:
        return {(res.meta.namespace, res.meta.name): res for res in self.registry.resources()
                if isinstance(res, r.ConfigMap)}

    def _pod_specs(self, desired: dict[tuple[str, str], LabPod]) -> list[PodSpec]:
        return [PodSpec(*key, node=p.node) for key, p in desired.items() if p.unschedulable is None]

    async def _start_mesh(self) -> None:
        """The control plane, then each node's components (which will need it)."""
        await self._start_controlplane()
        self._controlplane_up = True
        self._notify()
        for node in self.plan.nodes:
            await trio.to_thread.run_sync(components.prepare_node, self.paths, node)
            for spec in components.node_processes(self.paths, self.plan, node, self.config.log_level,
                                                  ztunnel=self.config.ztunnel):
                await self.supervisor.start(spec)

    async def _start_dns(self) -> None:
        """The cluster DNS, serving the view of the directory as read (pods get their IPs as they
        start; ``_publish_status`` keeps the view current)."""
        address = await self.dns.start(self.supervisor, self.plan, cluster_view(self.registry.state(), {}),
                                       self.config.log_level)
        self.progress(f"Cluster DNS (cluster.local) serving at {address}")

    async def _start_controlplane(self) -> None:
        spec = components.controlplane_process(self.paths, self.plan, self.config.config_dir, self.config.log_level)
        await self.supervisor.start(spec)
        host, port = components.controlplane_address(self.plan)
        # Its port accepting connections is the readiness signal (it binds after loading the CA and
        # publishing its first view).
        await wait_for_port(self.supervisor, spec, self.plan.control_plane.netns, host, port,
                            CONTROLPLANE_READY_TIMEOUT, "the control plane")
        self.progress(f"Control plane (CA and discovery) serving at {host}:{port}")

    async def _start_pod(self, runtime: _PodRuntime) -> None:
        lab_pod = runtime.lab_pod
        namespace, name = lab_pod.key
        if lab_pod.unschedulable:
            self.progress(f"Pod {namespace}/{name} is Pending: {lab_pod.unschedulable}")
            return
        runtime.placed = self.plan.pod(namespace, name)
        if lab_pod.is_waypoint:
            runtime.waiting = "waiting for the control plane to mint the waypoint's token"
            self._notify()
            self._nursery.start_soon(self._start_waypoint, runtime)
            return
        if self._captured_or_not_ambient(runtime):
            await self._start_containers(runtime)
            return
        # As Istio's CNI plugin holds the pod's creation: an ambient pod's containers start only once
        # its node agent captures its traffic, so the app never talks uncaptured. Waited for in the
        # background, so that a change of the directory is not held up by it.
        agent = components.node_agent_name(node_name(runtime.placed.node))
        runtime.waiting = f"waiting for {agent} to capture its traffic and ztunnel to take it"
        self._notify()
        self._nursery.start_soon(self._start_containers_once_captured, runtime)

    async def _start_containers_once_captured(self, runtime: _PodRuntime) -> None:
        with self._pod_scope(runtime):
            await self._wait_until(lambda: self._captured_or_not_ambient(runtime))
            runtime.waiting = None
            try:
                await self._start_containers(runtime)
            except Exception as exc:  # one pod that cannot start must not take the lab down
                log.exception("starting pod %s/%s failed", *runtime.lab_pod.key)
                runtime.problem = describe(exc)
            self._notify()

    async def _start_waypoint(self, runtime: _PodRuntime) -> None:
        """The waypoint's proxy as the pod's one container (so it is stopped with the pod, and its
        readiness is the pod's), once the control plane's CA can mint its token."""
        with self._pod_scope(runtime):
            await self._wait_until(lambda: self._controlplane_up)
            runtime.waiting = None
            try:
                await trio.to_thread.run_sync(components.prepare_waypoint, self.paths, runtime.placed)
                specs = components.waypoint_processes(self.paths, self.plan, runtime.placed, self.config.log_level)
                runtime.containers = tuple(
                    ContainerPlan(container.name, spec, None, components.WAYPOINT_READINESS)
                    for container, spec in zip(runtime.lab_pod.pod.spec.containers, specs, strict=True))
                await self._run_containers(runtime)
            except Exception as exc:  # one waypoint that cannot start must not take the lab down
                log.exception("starting waypoint pod %s/%s failed", *runtime.lab_pod.key)
                runtime.problem = describe(exc)
            self._notify()

    async def _start_containers(self, runtime: _PodRuntime) -> None:
        resolv_conf = await trio.to_thread.run_sync(self.dns.resolv_conf, self.plan, runtime.lab_pod.key[0])
        runtime.containers = tuple(  # each container's processes see the pod's resolv.conf (ClusterFirst)
            dataclasses.replace(plan, process=dataclasses.replace(plan.process, resolv_conf=resolv_conf))
            if plan.process is not None else plan
            for plan in container_plans(self.paths, runtime.lab_pod, runtime.placed, self.config.config_dir))
        await self._run_containers(runtime)

    async def _run_containers(self, runtime: _PodRuntime) -> None:
        lab_pod = runtime.lab_pod
        for plan in runtime.containers:
            if plan.process is not None:
                await self.supervisor.start(plan.process)
        for container, plan in zip(lab_pod.pod.spec.containers, runtime.containers, strict=True):
            if plan.process is not None:
                self._nursery.start_soon(self._probe, runtime, container, plan)
            if plan.process is not None and plan.liveness_probe is not None:
                self._nursery.start_soon(self._liveness, runtime, container, plan)

    def _pod_scope(self, runtime: _PodRuntime) -> trio.CancelScope:
        """A cancel scope for one task of the pod (a probe, a wait), cancelled when the pod stops."""
        scope = trio.CancelScope()
        if runtime.stopped:
            scope.cancel()
        runtime.scopes.append(scope)
        return scope

    async def _probe(self, runtime: _PodRuntime, container: r.Container, plan: ContainerPlan) -> None:
        with self._pod_scope(runtime):
            await self.probes.readiness(runtime.ready, runtime.placed, container, plan)

    async def _liveness(self, runtime: _PodRuntime, container: r.Container, plan: ContainerPlan) -> None:
        with self._pod_scope(runtime):
            await self.probes.liveness(runtime.lab_pod.key, runtime.placed, container, plan)

    async def _stop_pod(self, runtime: _PodRuntime) -> None:
        runtime.stopped = True
        for scope in runtime.scopes:
            scope.cancel()
        for plan in runtime.containers:
            if plan.process is not None:
                await self.supervisor.stop(plan.process.name)
        if runtime.placed is not None:
            await trio.to_thread.run_sync(network.remove_pod, self.plan, runtime.placed)

    # -- following the directory

    async def _watch_agents(self) -> None:
        while True:
            if await trio.to_thread.run_sync(self._read_agent_status):
                self._notify()
            await trio.sleep(SCAN_INTERVAL)

    async def _watch_directory(self) -> None:
        while True:
            await trio.sleep(SCAN_INTERVAL)
            try:
                changed = await trio.to_thread.run_sync(self.directory.scan)
            except Exception:  # any failure to read the directory must not take the running lab down
                log.exception("reading %s failed; keeping the lab as it is", self.config.config_dir)
                continue
            if not changed:
                continue
            try:
                await self.reconcile()
            except Exception as exc:  # an edit the lab cannot apply must not take the running lab down
                log.exception("applying the change in %s failed", self.config.config_dir)
                self.progress(f"Could not apply the change: {describe(exc)}; the lab runs on as it was")

    async def reconcile(self) -> None:
        """Bring the running pods in line with the directory: remove, then re-plan, then add."""
        desired = desired_pods(self.registry.state(), self.config.node_count, self._config_maps())
        gone = [key for key, runtime in self.pods.items()
                if key not in desired or desired[key].runtime_spec() != runtime.lab_pod.runtime_spec()]
        for key in gone:
            runtime = self.pods[key]
            verb = "Recreating" if key in desired else "Removing"
            self.progress(f"{verb} pod {key[0]}/{key[1]}")
            runtime.terminating = True
            await self._stop_pod(runtime)
            del self.pods[key]  # only now: a pod absent from the status has no process or netns left
        for key, lab_pod in desired.items():  # labels and other fields that do not need a restart
            if key in self.pods:
                self.pods[key].lab_pod = lab_pod
        added = [key for key in desired if key not in self.pods]
        self.plan = plan_lab(self.config.name, self._pod_specs(desired), self.config.node_count, previous=self.plan)
        for key in added:
            runtime = self.pods[key] = _PodRuntime(desired[key])
            if desired[key].unschedulable is None:
                self.progress(f"Adding pod {key[0]}/{key[1]}")
                await trio.to_thread.run_sync(network.add_pod, self.plan, self.plan.pod(*key))
            await self._start_pod(runtime)
        self._notify()

    # -- status

    def _read_agent_status(self) -> bool:
        """Re-read each node agent's status.json that changed; True if any did."""
        changed = False
        for node in self.plan.nodes:
            name = node_name(node.index)
            status = read_agent_status(self.paths.node_dir(name) / AGENT_STATUS_FILE, self._agents.get(name))
            if status is not None:
                self._agents[name] = status
                changed = True
        return changed

    def _enrollment(self, node: str, namespace: str, name: str) -> tuple[dict | None, bool]:
        """The pod's entry in its node agent's status (None if not listed), and whether that agent is
        running: a status file of an earlier pid vouches for nothing (capture itself stays pinned)."""
        agent = self._agents.get(node)
        process = self.supervisor.status().get(components.node_agent_name(node))
        if agent is None or process is None or process.state is not ProcessState.RUNNING or process.pid != agent.pid:
            return None, False
        return agent.pods.get((namespace, name)), True

    def _is_ambient(self, lab_pod: LabPod, namespaces=None) -> bool:
        ns = (namespaces if namespaces is not None else self.registry.state().namespaces).get(lab_pod.key[0])
        return r.is_enrolled(lab_pod.pod.meta.labels, ns.meta.labels if ns else {})

    def _captured_or_not_ambient(self, runtime: _PodRuntime) -> bool:
        """Whether this very pod (its current netns) is captured by its node agent and served by the
        node's ztunnel, or it is not ambient. As Istio's CNI plugin waits for ztunnel's ack."""
        if not self._is_ambient(runtime.lab_pod):
            return True
        enrollment, agent_running = self._enrollment(node_name(runtime.placed.node), *runtime.lab_pod.key)
        # Without a ztunnel of the lab's own, nobody is there to take the pod: capture is enough.
        if not agent_running or not enrollment or not enrollment["enrolled" if self.config.ztunnel else "captured"]:
            return False
        try:
            return os.stat(network.netns_path(runtime.placed.netns)).st_ino == enrollment["netns_inode"]
        except FileNotFoundError:
            return False

    def _container_status(self, runtime: _PodRuntime) -> list[dict]:
        processes = self.supervisor.status()
        result = []
        for plan in runtime.containers:
            entry = {"name": plan.name, "state": "error", "ready": False, "restarts": 0, "pid": None,
                     "message": plan.problem}
            if plan.process is not None:
                status = processes.get(plan.process.name)
                probe_ok, probe_message = runtime.ready.get(plan.name, (False, "readiness not known yet"))
                running = status is not None and status.state is ProcessState.RUNNING
                if status is not None and status.error:
                    message = status.error  # why it could not start
                elif running and not probe_ok:
                    message = probe_message  # why it is not ready
                else:
                    message = None
                entry.update(state=status.state.value if status else "starting",
                             restarts=status.restarts if status else 0,
                             pid=status.pid if status else None, ready=running and probe_ok, message=message,
                             log=str(plan.process.log_path))
            result.append(entry)
        return result

    def _pod_entry(self, runtime: _PodRuntime, namespaces) -> dict:
        lab_pod = runtime.lab_pod
        namespace, name = lab_pod.key
        containers = self._container_status(runtime)
        problems = {c["name"]: c["message"] for c in containers if c["state"] == "error"}
        phase = pod_phase({c["name"]: c["state"] for c in containers if c["state"] != "error"}, problems,
                          lab_pod.unschedulable, lab_pod.config_error)
        if runtime.problem and phase == "Pending" and runtime.placed is not None:
            phase = "NotRunning"
        if runtime.waiting and phase == "Pending":
            phase = "ContainerCreating"
        if runtime.terminating:
            phase = "Terminating"
        mode = "ambient" if self._is_ambient(lab_pod, namespaces) else "none"
        ready = sum(c["ready"] for c in containers)
        node = node_name(runtime.placed.node) if runtime.placed else None
        enrollment, agent_running = self._enrollment(node, namespace, name) if node else (None, False)
        if agent_running or node is None or mode != "ambient":
            capture = capture_state(enrollment)
        else:
            capture = "unknown: its node agent is not running"
        return {
            "namespace": namespace, "name": name,
            "node": node,
            "ip": str(runtime.placed.ip) if runtime.placed else None,
            "netns": runtime.placed.netns if runtime.placed else None,
            "service_account": lab_pod.pod.spec.service_account,
            "state": phase, "ready": f"{ready}/{len(containers)}",
            "all_ready": bool(containers) and ready == len(containers),
            "restarts": sum(c["restarts"] for c in containers),
            "dataplane_mode": mode,
            "enrolled": bool(agent_running and enrollment and enrollment["enrolled"]),  # captured; ztunnel has it
            "capture": capture,
            "message": lab_pod.unschedulable or lab_pod.config_error or runtime.problem or runtime.waiting or next(
                (f"{c['name']}: {c['message']}" for c in containers if c["message"]), None),
            "containers": containers,
        }

    def status(self) -> dict:
        state = self.registry.state()
        processes = self.supervisor.status()
        pods = [self._pod_entry(runtime, state.namespaces) for _, runtime in sorted(self.pods.items())]

        def component(name: str) -> dict:
            status = processes.get(name)
            return {"name": name, "state": status.state.value if status else "not started",
                    "pid": status.pid if status else None, "restarts": status.restarts if status else 0,
                    "log": str(self.paths.component_log(name))}

        host, port = components.controlplane_address(self.plan)
        nodes = []
        for node in self.plan.nodes:
            specs = components.node_processes(self.paths, self.plan, node, self.config.log_level,
                                              ztunnel=self.config.ztunnel)
            nodes.append({"name": node_name(node.index), "netns": node.netns,
                          "fabric_ip": str(node.fabric_address.ip), "pod_cidr": str(node.pod_cidr),
                          "pods": sum(1 for p in pods if p["node"] == node_name(node.index)),
                          "components": [component(spec.name) for spec in specs]})
        services = []
        for key, svc in sorted(state.services.items()):
            services.append({
                "namespace": key[0], "name": key[1], "vip": state.vips.get(key),
                "ports": [{"name": p.name, "port": p.port, "target_port": p.target_port, "protocol": p.protocol}
                          for p in svc.ports],
            })
        waypoints = waypoint_entries(state, pods)
        self._stamp_created(pods, services, waypoints)
        return {
            "lab": self.config.name, "config_dir": str(self.config.config_dir), "state_dir": str(self.paths.root),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "controlplane": {**component(components.CONTROLPLANE), "address": f"{host}:{port}",
                             "netns": self.plan.control_plane.netns},
            "dns": {**component(components.DNS), "address": "{}:{}".format(*components.dns_address(self.plan))},
            "nodes": nodes, "pods": pods, "services": services, "waypoints": waypoints,
        }

    def _stamp_created(self, *kinds: list[dict]) -> None:
        """Each entry's ``created`` (RFC 3339, UTC): when the lab first had it, for `lab status`'s AGE; entries
        gone are forgotten (a re-created one is new again)."""
        now, seen = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), {}
        for kind, entries in enumerate(kinds):
            for entry in entries:
                key = (kind, entry["namespace"], entry["name"])
                entry["created"] = seen[key] = self._created.get(key, now)
        self._created = seen

    def _announce_ready(self, status: dict) -> bool:
        """Whether `lab up` is done waiting for the pods of ``status``; prints each pod the first
        time it is ready."""
        for pod in status["pods"]:
            key = (pod["namespace"], pod["name"])
            runtime = self.pods.get(key)
            if runtime is not None and pod["all_ready"] and not runtime.announced:
                runtime.announced = True
                self.progress(f"Pod {pod['namespace']}/{pod['name']} ready on {pod['node']} ({pod['ip']})")
        return not awaited_pods(status, self.config.ztunnel)

    def _report_problems(self, gave_up: bool) -> None:
        """Print each pod that cannot run, and if ``gave_up`` each one `lab up` stopped waiting for."""
        status = self.status()
        for pod in status["pods"]:
            if pod["state"] in CANNOT_RUN:
                self.progress(f"Pod {pod['namespace']}/{pod['name']} is {pod['state']}: {pod['message']}")
        for pod in awaited_pods(status, self.config.ztunnel) if gave_up else ():
            why = pod["message"] if not pod["all_ready"] and pod["message"] else f"capture: {pod['capture']}"
            self.progress(f"Pod {pod['namespace']}/{pod['name']} is not ready yet: {why}")

    @staticmethod
    def pod_statuses(status: dict) -> dict[tuple[str, str], PodStatus]:
        """What the control plane hears of each pod with a network, from a `status()`."""
        statuses = {}
        for pod in status["pods"]:
            if pod["ip"] is not None:
                statuses[(pod["namespace"], pod["name"])] = PodStatus(pod["ip"], pod["node"], pod["all_ready"])
        return statuses

    async def _publish_status(self) -> None:
        """Rewrite status.json and the control plane's pods.json after changes (only what changed),
        then wake `_wait_until_published` with the status now in the file."""
        seen = -1
        while True:
            changed = self._changed
            if seen != self._version and self.plan is not None:
                seen = self._version
                # Computed here, on trio's thread, where the lab's state changes; written in a thread.
                status = self.status()
                statuses = self.pod_statuses(status)
                # The DNS view first: a pod that status.json says is ready has its name.
                await trio.to_thread.run_sync(self.dns.write_view, cluster_view(self.registry.state(), statuses))
                # Then each node's Service DNAT: a pod that status.json says is ready is reachable at its VIPs.
                await trio.to_thread.run_sync(self.kube_proxy.sync, self.plan, self.registry.state(), statuses)
                await trio.to_thread.run_sync(self._write_status_files, status, statuses)
                self._published = status
                self._status_written.set()
                self._status_written = trio.Event()
            await changed.wait()

    def _write_status_files(self, status: dict, statuses: dict[tuple[str, str], PodStatus]) -> None:
        if self._written.get("pods") != statuses:
            write_pod_statuses(self.paths.controlplane / POD_STATUS_FILE, statuses)
            self._written["pods"] = statuses
        comparable = {k: v for k, v in status.items() if k != "updated"}
        if self._written.get("status") != comparable:
            write_json_atomic(self.paths.status, status, mode=0o644)
            self._written["status"] = comparable
