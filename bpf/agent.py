"""``ambient node-agent``: enrolls its node's pods into eBPF capture and hands them to ztunnel over ZDS.

What it follows: the discovery view (Workloads), from the control plane with the node's token. A pod
is to be captured when its Workload runs on this node with tunnel protocol HBONE: the control plane
has already applied the label rules (``mesh.resources.is_enrolled``: the namespace's
``istio.io/dataplane-mode=ambient``, the pod's own label winning, ``none`` opting out), so labelling
or unlabelling a namespace reaches the agent as changed Workloads and it enrolls or releases live.

How it works:
- ``plan_reconcile`` (pure) compares the pods to capture with the captures held and each pod's
  current netns, and says what to release, enroll and keep. A pod whose IP or netns changed (it was
  recreated under the same name) is released and enrolled again.
- Enroll, in a worker thread: load the program for the pod, attach it to the pod's netns, pin link
  and maps under ``<bpffs>/<namespace>_<name>`` (names cannot hold "_"), then the routing
  (``bpf.enrollment``). The pod then goes to the ZDS server with ``POD_FDS``.
- Release: detach and unpin, remove the routing if the netns is still the one captured, then have
  ztunnel drop the pod (DelWorkload). Capture ends first, so the pod talks plainly at once.
- Start: mount the node's bpffs if it is not mounted, adopt every pinned pod (the pins say which
  netns and IP: no second attach), wait for the first discovery view, reconcile, and only then serve
  ZDS, so that the first snapshot a ztunnel receives is whole. Meanwhile adopted pods stay
  captured: traffic flows on if ztunnel's listeners are still in their SOCKMAPs, else it is dropped.
- Reconcile after every discovery change, and every ``RESYNC_INTERVAL`` (a recreated pod's new
  netns, a failed enrollment to retry).
- Exit (SIGTERM, or a crash): the pins stay, so capture stays (fail closed); the next agent adopts.
- ``<state>/status.json``: per pod, captured, acknowledged by ztunnel, enrolled (both), and errors.

On Kubernetes (``kubernetes=KubernetesPods``, ``bpf.cni_agent``) a pod's netns is a path, not a lab
name: the CNI plugin's ``CNI_NETNS`` or one found in /proc, held open. The CNI socket is served from
the start (before discovery: a pod being created must not wait for the control plane); an ADD of a
captured pod attaches its capture before the answer, and it is handed to ztunnel when its Workload
arrives, as an adopted capture is. A lock keeps a CNI event and a reconcile from interleaving.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import cast

import trio

from bpf import bpffs
from bpf.capture import PodCapture
from bpf.cni_agent import CNI_WORKLOAD_WAIT, KubernetesPods
from bpf.cni_pods import PodLookupError
from bpf.cni_protocol import (
    ERR_CAPTURE,
    ERR_INVALID_CONFIG,
    ERR_INVALID_ENV,
    ERR_TRY_AGAIN_LATER,
    AddPod,
    DeletePod,
    Reply,
    error_reply,
)
from bpf.cni_server import CniServer
from bpf.dns_capture import install_dns_redirect, remove_dns_redirect
from bpf.enrollment import install_routing, remove_routing
from bpf.libbpf import BpfError
from mesh.api import workload_pb2 as wpb, zds_pb2
from mesh.api.types import ADDRESS_TYPE_URL
from mesh.concurrency import first_of
from mesh.errors import describe
from mesh.netns import netns_path
from mesh.watched_file import write_json_atomic
from mesh.xds.client import DiscoveryClient
from mesh.zds import POD_FDS, ZdsServer, close_fds

log = logging.getLogger("ambient.nodeagent")

RESYNC_INTERVAL = 1.0
BPFFS_DIR = "bpf"
ZDS_SOCKET = "zds.sock"
STATUS_FILE = "status.json"
@dataclass(frozen=True)
class PodTarget:
    """A pod this node should capture, from its Workload."""

    uid: str
    namespace: str
    name: str
    service_account: str
    ip: str

    @property
    def key(self) -> str:
        return pin_name(self.namespace, self.name)


def pin_name(namespace: str, name: str) -> str:
    return f"{namespace}_{name}"


def pod_of(pin: str) -> tuple[str, str]:
    """(namespace, name) of a pin name: namespaces cannot hold "_"."""
    namespace, name = pin.split("_", 1)
    return namespace, name


def pods_to_capture(addresses: Mapping[str, wpb.Address], node: str) -> dict[str, PodTarget]:
    """Workloads on ``node`` that the mesh captures (tunnel protocol HBONE), by pin name."""
    targets = {}
    for address in addresses.values():
        if address.WhichOneof("type") != "workload":
            continue
        w = address.workload
        if w.node != node or w.tunnel_protocol != wpb.HBONE or not w.addresses or len(w.addresses[0]) != 4:
            continue
        target = PodTarget(w.uid, w.namespace, w.name, w.service_account, socket.inet_ntoa(w.addresses[0]))
        targets[target.key] = target
    return targets


@dataclass(frozen=True)
class Held:
    """What a held capture is bound to: the pod IP in its config and the netns it is attached to."""

    ip: str | None
    netns_inode: int  # 0: not attached, or its netns is gone


@dataclass(frozen=True)
class ReconcilePlan:
    release: tuple[str, ...] = ()
    enroll: tuple[str, ...] = ()  # after the releases: a replaced pod is in both
    keep: tuple[str, ...] = ()
    waiting: tuple[str, ...] = ()  # to capture, but its netns is not there (yet)


def plan_reconcile(targets: Mapping[str, PodTarget], held: Mapping[str, Held],
                   netns_inodes: Mapping[str, int | None]) -> ReconcilePlan:
    """``netns_inodes``: the inode of each target's netns now, None where there is none."""
    release, enroll, keep, waiting = [], [], [], []
    for key in sorted(held.keys() - targets.keys()):
        release.append(key)
    for key in sorted(targets):
        inode = netns_inodes.get(key)
        current = held.get(key)
        if inode is None:
            waiting.append(key)
            if current is not None:
                release.append(key)
        elif current is None:
            enroll.append(key)
        elif current.ip == targets[key].ip and current.netns_inode == inode:
            keep.append(key)
        else:
            release.append(key)
            enroll.append(key)
    return ReconcilePlan(tuple(release), tuple(enroll), tuple(keep), tuple(waiting))


@dataclass
class PodEnrollment:
    """A capture the agent holds: loaded here, or adopted from its pins."""

    key: str
    capture: PodCapture
    held: Held
    target: PodTarget | None = None  # None for an adopted capture not yet matched with its Workload
    handed: bool = False  # given to the ZDS server


def netns_inode(netns: str | None) -> int | None:
    """The inode of ``netns`` (a lab netns name, or a path on Kubernetes); None: unknown or gone."""
    if netns is None:
        return None
    try:
        return os.stat(netns_path(netns)).st_ino
    except FileNotFoundError:
        return None


def adopt_pinned(bpffs_dir: Path) -> dict[str, PodEnrollment]:
    """Take back every capture pinned by an earlier agent; drop pin directories that are not whole."""
    adopted = {}
    # Only directories: a fresh bpffs also holds the kernel's maps.debug and progs.debug files.
    for directory in sorted(path for path in bpffs_dir.iterdir() if path.is_dir()):
        try:
            capture = PodCapture.adopt(directory)
        except (BpfError, OSError) as exc:
            log.warning("pins in %s are not a whole capture (%s); removing them", directory, exc)
            try:
                PodCapture.unpin(directory)
            except OSError as unpin_error:  # something else is in there: leave it, but start
                log.error("cannot remove %s: %s", directory, unpin_error)
            continue
        held = Held(capture.pod_ip(), capture.netns_inode())
        adopted[directory.name] = PodEnrollment(directory.name, capture, held)
    return adopted


def route_captured(netns: str, pod_ip: str, dns_capture: bool) -> None:
    """The pod netns's half of a capture: the routing that brings its TCP to the program, and with
    ``dns_capture`` the redirect of its DNS to ztunnel's proxy (``bpf.dns_capture``). Idempotent, so an
    adopted capture (an agent that died halfway, or a pod captured at CNI ADD) gets it whole again."""
    install_routing(netns, pod_ip)
    if dns_capture:
        install_dns_redirect(netns_path(netns))


def enroll_pod(bpffs_dir: Path, target: PodTarget, netns: str, dns_capture: bool = False) -> PodEnrollment:
    """Capture ``target``'s traffic in ``netns``: program attached and pinned, then the routing, and
    with ``dns_capture`` the redirect of its DNS to ztunnel's proxy (``bpf.dns_capture``)."""
    pins = bpffs_dir / target.key
    if pins.exists():  # left half-made by an agent that died while enrolling
        PodCapture.unpin(pins)
    capture = PodCapture.load(target.ip)
    try:
        fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
        try:
            capture.attach(fd)
            inode = os.fstat(fd).st_ino
        finally:
            os.close(fd)
        capture.pin(pins)
        route_captured(netns, target.ip, dns_capture)
    except BaseException:
        capture.close()
        PodCapture.unpin(pins)
        raise
    return PodEnrollment(target.key, capture, Held(target.ip, inode), target)


def release_pod(bpffs_dir: Path, enrollment: PodEnrollment, netns: str | None) -> None:
    """Exactly undo ``enroll_pod``: the program detached and unpinned, the routing removed."""
    capture = enrollment.capture
    if capture.link is not None and enrollment.held.netns_inode:
        try:
            capture.link.detach()
        except BpfError as exc:
            log.debug("detaching %s: %s", enrollment.key, exc)  # its netns went meanwhile
    PodCapture.unpin(bpffs_dir / enrollment.key)
    capture.close()
    if netns is not None and enrollment.held.netns_inode and netns_inode(netns) == enrollment.held.netns_inode:
        remove_routing(netns)
        try:  # whether or not it was on: the agent's setting may have changed since the pod was enrolled
            remove_dns_redirect(netns_path(netns))
        except OSError as exc:
            log.warning("removing %s's DNS redirect: %s", enrollment.key, exc)


def pod_fds(enrollment: PodEnrollment, netns: str) -> list[int]:
    """Fresh fds of ``POD_FDS`` for the ZDS server, which owns them from then on."""
    fds = [os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)]
    try:
        for name in POD_FDS[1:]:
            fds.append(os.dup(enrollment.capture.maps[name].fd))
    except BaseException:
        close_fds(fds)
        raise
    return fds


class NodeAgent:
    def __init__(self, node: str, state_dir: Path, netns_of: Callable[[str, str], str | None],
                 client: DiscoveryClient, resync_interval: float = RESYNC_INTERVAL,
                 kubernetes: KubernetesPods | None = None, dns_capture: bool = True) -> None:
        self.node = node
        self.dns_capture = dns_capture  # Istio's default since 1.25: an ambient pod's DNS goes to ztunnel
        self.state_dir = state_dir
        self.bpffs = state_dir / BPFFS_DIR
        # (namespace, name) -> the pod's netns: a lab netns name, or a path (Kubernetes); None: unknown
        self.netns_of = netns_of
        self.kubernetes = kubernetes
        self.cni = CniServer(kubernetes.cni_socket, self.cni_request) if kubernetes is not None else None
        self._lock = trio.Lock()  # one reconcile or CNI event at a time
        self.client = client
        self.resync_interval = resync_interval
        self.zds = ZdsServer(state_dir / ZDS_SOCKET)
        self.pods: dict[str, PodEnrollment] = {}
        self.errors: dict[str, str] = {}  # pin name -> why it could not be enrolled or released
        self._targets: dict[str, PodTarget] = {}
        self._changed = trio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if await trio.to_thread.run_sync(bpffs.ensure_mounted, self.bpffs):
            log.info("mounted a bpffs for node %s at %s", self.node, self.bpffs)
        self.pods = await trio.to_thread.run_sync(adopt_pinned, self.bpffs)
        if self.pods:
            log.info("adopted %d pinned pod captures: %s", len(self.pods), ", ".join(sorted(self.pods)))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._publish_status)
                if self.cni is not None:
                    await nursery.start(self.cni.serve)
                log.info("waiting for the discovery view")
                await nursery.start(self.client.run)
                await self.reconcile()
                await nursery.start(self.zds.serve)
                task_status.started()
                nursery.start_soon(self._follow)
        finally:
            for enrollment in self.pods.values():
                enrollment.capture.close()  # our fds only: the pins keep capture in place
            self.pods.clear()
            if self.kubernetes is not None:
                self.kubernetes.netns.close()

    async def _follow(self) -> None:
        seen = self.client.change_seq
        while True:
            with trio.move_on_after(self.resync_interval):
                await self.client.wait_until(partial(self._changed_since, seen))
            seen = self.client.change_seq
            await self.reconcile()

    def _changed_since(self, seq: int) -> bool:
        return self.client.change_seq != seq

    async def reconcile(self) -> None:
        async with self._lock:
            await self._reconcile()

    async def _reconcile(self) -> None:
        # The discovery client decodes ADDRESS_TYPE_URL resources as Address messages.
        addresses = cast(Mapping[str, wpb.Address], self.client.view(ADDRESS_TYPE_URL))
        targets = pods_to_capture(addresses, self.node)
        self._targets = targets
        spared: set[str] = set()  # captured at CNI ADD, waiting for their Workload
        if self.kubernetes is not None:
            spared = self.kubernetes.settle(targets, trio.current_time())
            await self.kubernetes.find_unknown({key: target.ip for key, target in targets.items()})
        netns = {key: self.netns_of(*pod_of(key)) for key in targets.keys() | self.pods.keys()}
        inodes = {key: netns_inode(netns[key]) for key in targets}
        held = {key: e.held for key, e in self.pods.items() if key not in spared}
        plan = plan_reconcile(targets, held, inodes)
        for key in plan.release:
            await self._release(key, netns.get(key))
        for key in plan.enroll:
            await self._enroll(targets[key], cast(str, netns[key]))  # enrolled only where a netns is
        for key in plan.keep:
            await self._match(self.pods[key], targets[key], cast(str, netns[key]))
        for key in set(self.errors) - targets.keys() - self.pods.keys():
            del self.errors[key]
        if self.kubernetes is not None:
            self.kubernetes.forget_except(targets.keys() | self.pods.keys())
        self._notify()

    # -- CNI events (Kubernetes)

    async def cni_request(self, decision: AddPod | DeletePod) -> Reply:
        """Act on one CNI ADD or DEL from the plugin; the answer it prints."""
        kube = self.kubernetes
        assert kube is not None, "CNI requests are served only on Kubernetes"
        key = pin_name(decision.namespace, decision.name)
        if isinstance(decision, DeletePod):
            with trio.CancelScope(shield=True):  # a release, once begun, completes
                async with self._lock:
                    kube.pending.pop(key, None)
                    if key in self.pods:
                        await self._release(key, kube.netns_of(key))
                    kube.netns.forget(key)
                    self._notify()
            return decision.result
        try:
            captured = await trio.to_thread.run_sync(kube.lookup.captured, decision.namespace, decision.name)
        except PodLookupError as exc:  # fail closed: the runtime retries the sandbox
            return error_reply(decision.version, ERR_TRY_AGAIN_LATER, "cannot tell whether the pod is ambient",
                               str(exc))
        if not captured:
            return decision.result
        if decision.ip is None:
            return error_reply(decision.version, ERR_INVALID_CONFIG, "no IPv4 address for the pod",
                               "prevResult gives CNI_IFNAME none; ambient-cni must come after the plugin "
                               "that sets the pod's address")
        with trio.CancelScope(shield=True):  # a capture, once begun, is recorded whole
            async with self._lock:
                reply = await self._cni_enroll(key, decision)
        return reply

    async def _cni_enroll(self, key: str, add: AddPod) -> Reply:
        kube = self.kubernetes
        assert kube is not None
        try:
            inode = kube.netns.open(key, add.netns)
        except (OSError, ValueError) as exc:
            return error_reply(add.version, ERR_INVALID_ENV, "cannot open CNI_NETNS", describe(exc))
        netns = cast(str, kube.netns_of(key))
        current = self.pods.get(key)
        if current is not None and current.held == Held(add.ip, inode):  # the runtime repeated an ADD
            return add.result
        if current is not None:  # a new sandbox of the same pod
            await self._release(key, netns)
        target = PodTarget("", add.namespace, add.name, "", cast(str, add.ip))
        enrollment = await self._capture(target, netns, " at CNI ADD")
        if isinstance(enrollment, str):
            kube.netns.forget(key)
            return error_reply(add.version, ERR_CAPTURE, "cannot capture the pod's traffic", enrollment)
        enrollment.target = None  # handed to ztunnel when its Workload arrives, as an adopted capture
        if key not in self._targets:
            kube.pending[key] = trio.current_time() + CNI_WORKLOAD_WAIT
        self.errors.pop(key, None)
        self._notify()
        return add.result

    async def _capture(self, target: PodTarget, netns: str, how: str = "") -> PodEnrollment | str:
        """``enroll_pod`` in a worker thread, the capture held; or why it failed (recorded as the pod's error)."""
        started = time.monotonic()
        try:
            enrollment = await trio.to_thread.run_sync(enroll_pod, self.bpffs, target, netns, self.dns_capture)
        except (BpfError, OSError) as exc:
            self._error(target.key, f"cannot enroll: {describe(exc)}")
            return describe(exc)
        self.pods[target.key] = enrollment
        log.info("pod %s/%s (%s) captured%s in %.1f ms", target.namespace, target.name, target.ip, how,
                 (time.monotonic() - started) * 1000)
        return enrollment

    async def _enroll(self, target: PodTarget, netns: str) -> None:
        enrollment = await self._capture(target, netns)
        if not isinstance(enrollment, str):
            await self._hand_over(enrollment, target, netns)

    async def _match(self, enrollment: PodEnrollment, target: PodTarget, netns: str) -> None:
        """A kept capture: hand it over if not done yet (adopted), or again if its Workload changed."""
        if enrollment.target == target and enrollment.handed:
            return
        if enrollment.target is None:  # adopted: re-apply the routing in case the last agent died halfway
            try:
                await trio.to_thread.run_sync(route_captured, netns, target.ip, self.dns_capture)
            except OSError as exc:
                self._error(target.key, f"cannot restore routing: {describe(exc)}")
                return
            log.info("pod %s/%s (%s): adopted its pinned capture", target.namespace, target.name, target.ip)
        enrollment.target = target
        await self._hand_over(enrollment, target, netns)

    async def _hand_over(self, enrollment: PodEnrollment, target: PodTarget, netns: str) -> None:
        try:
            fds = pod_fds(enrollment, netns)
        except OSError as exc:
            self._error(enrollment.key, f"cannot open its fds for ztunnel: {describe(exc)}")
            return
        info = zds_pb2.WorkloadInfo(name=target.name, namespace=target.namespace,
                                    service_account=target.service_account)
        try:
            await self.zds.add(target.uid, info, fds)
        except BaseException:
            close_fds(fds)
            raise
        enrollment.handed = True
        self.errors.pop(enrollment.key, None)

    async def _release(self, key: str, netns: str | None) -> None:
        enrollment = self.pods[key]
        try:
            await trio.to_thread.run_sync(release_pod, self.bpffs, enrollment, netns)
        except (BpfError, OSError) as exc:
            self._error(key, f"released with an error: {describe(exc)}")
        del self.pods[key]  # only now: until the capture is gone, the status says it is there
        if enrollment.target is not None:
            await self.zds.remove(enrollment.target.uid)
        log.info("pod %s released", "/".join(pod_of(key)))

    def _error(self, key: str, message: str) -> None:
        if self.errors.get(key) != message:
            log.error("pod %s: %s", "/".join(pod_of(key)), message)
        self.errors[key] = message

    # -- status

    def status(self) -> dict:
        pods = []
        for key in sorted(self._targets.keys() | self.pods.keys() | self.errors.keys()):
            enrollment = self.pods.get(key)
            target = self._targets.get(key) or (enrollment.target if enrollment else None)
            namespace, name = pod_of(key)
            # The uid ztunnel was told, for a pod handed over (always with its target).
            handed = target.uid if enrollment is not None and enrollment.handed and target is not None else None
            captured = handed is not None
            acknowledged = handed is not None and self.zds.acknowledged(handed)
            rejection = self.zds.rejection(handed) if handed is not None else None
            pods.append({
                "namespace": namespace, "name": name, "uid": target.uid if target else None,
                "ip": target.ip if target else enrollment.held.ip if enrollment else None,
                "captured": captured, "acknowledged": acknowledged, "enrolled": captured and acknowledged,
                "netns_inode": enrollment.held.netns_inode if enrollment else None,
                "error": self.errors.get(key) or (f"ztunnel refused it: {rejection}" if rejection else None),
            })
        return {"node": self.node, "pid": os.getpid(), "ztunnel_connected": self.zds.connected,
                "discovery_connected": self.client.connected, "pods": pods}

    def _connection_is_not(self, connected: bool) -> bool:
        return self.client.connected != connected

    async def _publish_status(self) -> None:
        path = self.state_dir / STATUS_FILE
        written = None
        while True:
            changed_here, changed_zds = self._changed, self.zds.changed
            status = self.status()
            if status != written:
                await trio.to_thread.run_sync(write_json_atomic, path, status, 0o644)
                written = status
            connected = status["discovery_connected"]
            await first_of(changed_here.wait, changed_zds.wait,
                           partial(self.client.wait_until, partial(self._connection_is_not, connected)))
