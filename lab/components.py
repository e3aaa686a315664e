"""The mesh's own processes in a lab: the control plane, and per node and per waypoint what the later
parts of the mesh add. This is the one place that says what runs where; the daemon starts whatever
these functions return, supervises it like a pod's container and logs it to ``logs/<name>.log``.

- The control plane (CA and discovery) runs in the lab's ``cp`` netns on the fabric, at
  10.255.0.2:15012 (metrics on 15014), and serves the lab's YAML directory; every node reaches it.
- Each node runs its node agent (eBPF capture and ZDS, ``bpf.agent``) and its ztunnel (the L4
  proxy, ``ztunnel.proxy``) in the node's netns: ``node_processes``. Both reach the control plane
  with the node's token (valid from the node's fabric address only), which ``prepare_node`` mints
  once the control plane's CA exists; the agent's state (bpffs, ZDS socket, status.json) is
  ``LabPaths.node_dir``, which no pod can see (``lab.isolation``).
- The cluster DNS (``lab.dns_server``, the lab's CoreDNS) runs in the ``cp`` netns too, on
  10.255.0.2:53 UDP and TCP: ``dns_process``. Every pod reaches it through its node (default route to
  the node's bridge, the node's uplink on the fabric; UDP is never captured, the pod filter passes it),
  and each pod's resolv.conf names it (``lab.resolv``). It answers from the view the daemon writes
  (``dns_view_path``) whenever the lab changes.
- Each waypoint Gateway runs its proxy (``ambient waypoint run``) in the waypoint pod's netns:
  ``waypoint_processes``. It reaches the control plane with a workload token for the waypoint's own
  identity (``spiffe://<td>/ns/<ns>/sa/<gateway>``), which ``prepare_waypoint`` mints once, kept
  with the proxy's saved state in ``LabPaths.waypoint_dir`` (no pod sees it). The CA grants a
  workload token exactly its own identity, and discovery takes any token the CA knows. The pod is
  Ready when the proxy's ``/healthz/ready`` on 15021 answers 200 (``WAYPOINT_READINESS``: it does
  once it has its certificate and its config), probed by the lab like any container's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from bpf.agent import ZDS_SOCKET
from ca.store import ROOT_CERT
from ca.tokens import TOKEN_FILE, NodeCaller, TokenStore, WorkloadCaller
from controlplane.server import CA_SUBDIR
from lab.processes import ProcessSpec, process_cgroup
from lab.state import LabPaths
from lab.topology import LabPlan, NodePlan, PodPlan
from lab.workloads import node_name
from mesh import resources as r
from mesh.identity import DEFAULT_TRUST_DOMAIN, SpiffeId

CONTROLPLANE = "controlplane"
CONTROLPLANE_PORT = 15012
CONTROLPLANE_METRICS_PORT = 15014
CONTROLPLANE_SERVER_NAME = "istiod.istio-system.svc"
DNS = "dns"  # the cluster DNS's process and log (logs/dns.log)
DNS_PORT = 53
DNS_DIR = "dns"  # in the lab's state: the view the server answers from, the pods' resolv.conf files
ZTUNNEL_STATE_DIR = "ztunnel-state"  # in the node's directory: what a restarted ztunnel serves from
# The lab's control plane runs with the default trust domain (``controlplane_process`` passes no
# --trust-domain), so its CA signs only identities of that domain.
LAB_TRUST_DOMAIN = DEFAULT_TRUST_DOMAIN
WAYPOINT_POD_SUFFIX = "-waypoint"  # controlplane.view.waypoint_pod names the pod <gateway>-waypoint
WAYPOINT_STATE_DIR = "state"  # in the waypoint's directory: its last view and certificate
WAYPOINT_READINESS_PORT = 15021  # Istio's readiness port, as ztunnel's
# The probe the lab runs against a waypoint pod: the kubelet's defaults but a 1 s period, so that
# `waypoint status` sees a waypoint ready (or gone unready) within a second, as istioctl polls.
WAYPOINT_READINESS = r.Probe("httpGet", WAYPOINT_READINESS_PORT, "/healthz/ready", period_seconds=1)


def dns_address(plan: LabPlan) -> tuple[str, int]:
    """Where pods send their DNS queries: the control plane's fabric address, which every pod routes to."""
    return str(plan.control_plane.address.ip), DNS_PORT


def dns_view_path(paths: LabPaths) -> Path:
    return paths.root / DNS_DIR / "view.json"


def resolv_conf_path(paths: LabPaths, namespace: str) -> Path:
    """The resolv.conf of every pod of ``namespace`` (bound read-only, so one file serves them all)."""
    return paths.root / DNS_DIR / "resolv" / f"{namespace}.conf"


def dns_process(paths: LabPaths, plan: LabPlan, log_level: str = "info") -> ProcessSpec:
    host, port = dns_address(plan)
    argv = (sys.executable, "-m", "lab.dns_server", "--log-level", log_level,
            "--view", str(dns_view_path(paths)), "--listen", f"{host}:{port}")
    return ProcessSpec(name=DNS, argv=argv, log_path=paths.component_log(DNS),
                       cgroup=process_cgroup(paths.name, DNS), netns=plan.control_plane.netns)


def controlplane_address(plan: LabPlan) -> tuple[str, int]:
    return str(plan.control_plane.address.ip), CONTROLPLANE_PORT


def _ambient(log_level: str, *args: str) -> tuple[str, ...]:
    # The venv's interpreter runs the installed package, whatever the working directory.
    return (sys.executable, "-m", "ambient", "--log-level", log_level, *args)


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


def node_agent_name(node: str) -> str:
    return f"node-agent-{node}"


def node_token_path(paths: LabPaths, node: NodePlan) -> Path:
    return paths.node_dir(node_name(node.index)) / "token"


def prepare_node(paths: LabPaths, node: NodePlan) -> None:
    """Mint the node's token for the control plane (its CA must exist) unless it has one. The token
    is bound to the node's fabric address, the source of every connection its agent and ztunnel make
    to the control plane (on-link on the fabric): the CA refuses it from a pod or another node."""
    token_path = node_token_path(paths, node)
    if token_path.exists():
        return
    token_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = TokenStore(paths.controlplane / CA_SUBDIR / TOKEN_FILE).create(
        NodeCaller(node_name(node.index), frozenset({node.fabric_address.ip})))
    fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")


def ztunnel_name(node: str) -> str:
    return f"ztunnel-{node}"


def node_processes(paths: LabPaths, plan: LabPlan, node: NodePlan, log_level: str = "info",
                   ztunnel: bool = True) -> tuple[ProcessSpec, ...]:
    """What runs in each node's netns: the node agent, and the ztunnel it hands its pods to over
    ZDS (``--no-ztunnel`` labs leave ztunnel out)."""
    host, port = controlplane_address(plan)
    name = node_agent_name(node_name(node.index))
    argv = _ambient(
        log_level, "node-agent", "--node", node_name(node.index), "--lab", plan.name,
        "--state-dir", str(paths.node_dir(node_name(node.index))),
        "--discovery-address", f"{host}:{port}", "--server-name", CONTROLPLANE_SERVER_NAME,
        "--ca-root", str(paths.controlplane / CA_SUBDIR / ROOT_CERT), "--token-file", str(node_token_path(paths, node)),
    )
    agent = ProcessSpec(name=name, argv=argv, log_path=paths.component_log(name),
                        cgroup=process_cgroup(paths.name, name), netns=node.netns)
    if not ztunnel:
        return (agent,)
    name = ztunnel_name(node_name(node.index))
    argv = _ambient(
        log_level, "ztunnel", "--node", node_name(node.index),
        "--zds", str(paths.node_dir(node_name(node.index)) / ZDS_SOCKET),
        "--discovery-address", f"{host}:{port}", "--server-name", CONTROLPLANE_SERVER_NAME,
        "--ca-root", str(paths.controlplane / CA_SUBDIR / ROOT_CERT), "--token-file", str(node_token_path(paths, node)),
        # Its last view and certificates, so a restart serves while the control plane is away; under the
        # node's own directory, which pods cannot see (lab.isolation).
        "--state-dir", str(paths.node_dir(node_name(node.index)) / ZTUNNEL_STATE_DIR),
        # The DNS proxy forwards what the mesh does not hold to the cluster DNS (the host's resolv.conf,
        # which ztunnel would read otherwise, names servers no lab netns has a route to).
        "--dns-upstream", "{}:{}".format(*dns_address(plan)),
    )
    proxy = ProcessSpec(name=name, argv=argv, log_path=paths.component_log(name),
                        cgroup=process_cgroup(paths.name, name), netns=node.netns)
    return (agent, proxy)


def waypoint_gateway(pod: PodPlan) -> str:
    """The Gateway whose waypoint runs in ``pod`` (``controlplane.view.waypoint_pod`` names it
    ``<gateway>-waypoint``)."""
    if not pod.name.endswith(WAYPOINT_POD_SUFFIX):
        raise ValueError(f"pod {pod.key} is not a waypoint's pod (<gateway>{WAYPOINT_POD_SUFFIX})")
    return pod.name.removesuffix(WAYPOINT_POD_SUFFIX)


def waypoint_name(namespace: str, gateway: str) -> str:
    """The process (and log, logs/<name>.log) of a waypoint: a namespace holds no ".", so one name
    is one waypoint."""
    return f"waypoint-{namespace}.{gateway}"


def waypoint_identity(namespace: str, gateway: str, trust_domain: str = LAB_TRUST_DOMAIN) -> SpiffeId:
    """The waypoint's identity: its pod runs as service account <gateway>, as Istio's do."""
    return SpiffeId(trust_domain, namespace, gateway)


def waypoint_token_path(paths: LabPaths, namespace: str, gateway: str) -> Path:
    return paths.waypoint_dir(namespace, gateway) / "token"


def prepare_waypoint(paths: LabPaths, pod: PodPlan, trust_domain: str = LAB_TRUST_DOMAIN) -> None:
    """Mint the waypoint's workload token (the control plane's CA must exist) unless it has one. The
    CA grants that token its one identity and nothing else; discovery takes it as any caller's. Not
    bound to an address (a workload token has none), so it lives where no pod can read it, 0600 in a
    0700 directory: a Gateway deleted and applied again finds its token there."""
    gateway = waypoint_gateway(pod)
    token_path = waypoint_token_path(paths, pod.namespace, gateway)
    if token_path.exists():
        return
    token_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(token_path.parent, 0o700)  # mkdir's mode is masked by the umask, and exist_ok keeps an old one
    token = TokenStore(paths.controlplane / CA_SUBDIR / TOKEN_FILE).create(
        WorkloadCaller(waypoint_identity(pod.namespace, gateway, trust_domain)))
    fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")


def waypoint_processes(paths: LabPaths, plan: LabPlan, pod: PodPlan, log_level: str = "info",
                       trust_domain: str = LAB_TRUST_DOMAIN) -> tuple[ProcessSpec, ...]:
    """The waypoint proxy of a waypoint Gateway's pod, in the pod's netns: HBONE on 0.0.0.0:15008,
    stats 15020, readiness 15021 and admin 127.0.0.1:15000, all inside that netns. A component of
    the mesh, not a pod's container: it runs unsandboxed, since it reads its token from the lab's
    state, which a sandbox hides. Never captured: ``waypoint_pod`` labels the pod
    ``istio.io/dataplane-mode: none``, so its Workload is not HBONE and no node agent enrolls it."""
    host, port = controlplane_address(plan)
    gateway = waypoint_gateway(pod)
    name = waypoint_name(pod.namespace, gateway)
    argv = _ambient(
        log_level, "waypoint", "run", "--gateway", f"{pod.namespace}/{gateway}",
        "--discovery-address", f"{host}:{port}", "--server-name", CONTROLPLANE_SERVER_NAME,
        "--ca-root", str(paths.controlplane / CA_SUBDIR / ROOT_CERT),
        "--token-file", str(waypoint_token_path(paths, pod.namespace, gateway)),
        "--trust-domain", trust_domain,
        "--state-dir", str(paths.waypoint_dir(pod.namespace, gateway) / WAYPOINT_STATE_DIR),
    )
    return (ProcessSpec(name=name, argv=argv, log_path=paths.component_log(name),
                        cgroup=process_cgroup(paths.name, name), netns=pod.netns),)
