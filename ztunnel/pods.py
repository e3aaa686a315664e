"""The pods a ztunnel serves, as the node agent hands them over ZDS (DESIGN.md section 5).

Each ``AddWorkload`` carries the pod's netns and its capture maps (``mesh.zds.POD_FDS``). ztunnel
opens the pod's three listeners inside that netns, puts them in the pod's SOCKMAP, and only then
acknowledges: from that moment the pod's captured connections reach ztunnel. ``DelWorkload`` closes
them (which empties the SOCKMAP slots: the pod's traffic is dropped, never let through). While the
agent is away (restarting) the pods keep being served; when it comes back its replay ends with
``SnapshotSent``, after which a pod it did not name is let go. A replayed pod whose netns is the
same keeps its listeners and open connections; the listeners go into the (possibly new) maps again.

The executor (``ztunnel.proxy``) sees a pod only through ``ServedPod``: who it is, and the few
operations that need its netns and capture maps (``PodNetwork``: its listeners, the address a
captured connection was for, a connection out of the pod, a connection to its app from the client's
own address). ``Pod`` implements them with ``ztunnel.sockets``; an in-process test implements them
with loopback sockets, and a ``PodSource`` other than ``PodSet`` hands its pods over.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import trio

from bpf.capture import Slot
from bpf.libbpf import Map
from hbone.tcp_stream import TcpStream
from mesh.zds import POD_FDS, close_fds, connect_zds
from ztunnel.sockets import (
    AppAddress,
    connect,
    connect_as_client,
    dns_upstream_socket,
    open_dns_listeners,
    open_pod_listeners,
    put_in_sockmap,
    upstream_socket,
)

log = logging.getLogger("ambient.ztunnel.pods")

RECONNECT_DELAY = 0.2


class PodNetwork(Protocol):
    """What the executor does in a pod's network: the operations that need its netns and maps."""

    @property
    def listeners(self) -> Mapping[Slot, socket.socket]:
        """The listening sockets the pod's captured connections reach, by slot."""
        ...

    def original_destination(self, accepted: TcpStream) -> tuple[str, int]:
        """The ``(ip, port)`` the client of a connection one of the listeners accepted asked for."""
        ...

    async def connect_upstream(self, address: tuple[str, int]) -> TcpStream:
        """A connection from the pod (its own address) to ``address`` that capture lets through."""
        ...

    async def connect_app(self, app: tuple[str, int], client_ip: str) -> TcpStream:
        """A connection to the pod's app at ``app`` whose source is ``client_ip``."""
        ...


class ServedPod(PodNetwork, Protocol):
    """A pod as the executor serves it: who it is, and its network."""

    uid: str
    namespace: str
    name: str
    service_account: str

    @property
    def key(self) -> str:
        """``<ns>/<name>``"""
        ...


class PodSource(Protocol):
    """Where the pods to serve come from (``PodSet``: the node agent over ZDS)."""

    @property
    def pods(self) -> Mapping[str, ServedPod]:
        """The pods served now, by uid."""
        ...

    async def run(self, serve: Callable[[ServedPod], Awaitable[None]]) -> None:
        """Until cancelled: run ``serve(pod)`` for each pod as long as the pod is to be served."""
        ...


@dataclass(eq=False)
class Pod:
    """One pod served: its netns (an fd we own), its capture maps, our listeners in its netns.
    A ``ServedPod``, its network made with ``ztunnel.sockets``."""

    uid: str
    namespace: str
    name: str
    service_account: str
    netns_fd: int
    netns_inode: int
    listeners_map: Map
    bypass: Map
    listeners: dict[Slot, socket.socket]
    dns_listeners: tuple[socket.socket, socket.socket] | None = None  # UDP, TCP on 127.0.0.1:15053
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    released: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def original_destination(self, accepted: TcpStream) -> tuple[str, int]:
        # sk_lookup steers a connection to our listener without rewriting it: its local address is
        # the one the client dialled.
        ip, port = accepted.socket.getsockname()[:2]
        return ip, port

    async def connect_upstream(self, address: tuple[str, int]) -> TcpStream:
        return await connect(upstream_socket(self.netns_fd), address)

    async def connect_app(self, app: tuple[str, int], client_ip: str) -> TcpStream:
        ip, port = app
        return await connect_as_client(AppAddress(self.netns_fd, self.bypass, ip, port), client_ip)

    def dns_upstream_socket(self, kind: int) -> socket.socket:
        return dns_upstream_socket(self.netns_fd, kind)

    def replace_maps(self, listeners_map: Map, bypass: Map) -> None:
        self.listeners_map.close()
        self.bypass.close()
        self.listeners_map, self.bypass = listeners_map, bypass
        put_in_sockmap(listeners_map, self.listeners)

    def release(self) -> None:
        """Close what the pod holds (listeners first: the SOCKMAP slots empty with them). Once."""
        if self.released:
            return
        self.released = True
        for sock in (*self.listeners.values(), *(self.dns_listeners or ())):
            sock.close()
        self.listeners_map.close()
        self.bypass.close()
        os.close(self.netns_fd)


def pod_from_request(request, fds: list[int], dns: bool = False) -> Pod:
    """Take over an AddWorkload's fds (closed here on failure) and open the pod's listeners (and, with
    ``dns``, the DNS proxy's)."""
    if len(fds) != len(POD_FDS):
        close_fds(fds)
        raise ValueError(f"expected {len(POD_FDS)} fds ({', '.join(POD_FDS)}), got {len(fds)}")
    netns_fd, listeners_fd, bypass_fd = fds
    info = request.add.workload_info
    listeners_map = Map(listeners_fd, "listeners", owned=True)
    bypass = Map(bypass_fd, "bypass", owned=True)
    try:
        sockets = open_pod_listeners(netns_fd)
        try:
            dns_listeners = open_dns_listeners(netns_fd) if dns else None
        except BaseException:
            for sock in sockets.values():
                sock.close()
            raise
    except BaseException:
        listeners_map.close()
        bypass.close()
        os.close(netns_fd)
        raise
    pod = Pod(uid=request.add.uid, namespace=info.namespace, name=info.name,
              service_account=info.service_account or "default", netns_fd=netns_fd,
              netns_inode=os.fstat(netns_fd).st_ino, listeners_map=listeners_map, bypass=bypass,
              listeners=sockets, dns_listeners=dns_listeners)
    try:
        put_in_sockmap(listeners_map, sockets)
    except BaseException:
        pod.release()
        raise
    return pod


class PodSet:
    """Follows the node agent; ``run(serve)`` runs ``serve(pod)`` for each pod until it is removed.
    A ``PodSource``."""

    def __init__(self, socket_path: str, changed: Callable[[], None] = lambda: None, *, dns: bool = False) -> None:
        self.socket_path = socket_path
        self.dns = dns  # open each pod's DNS proxy listeners too
        self.pods: dict[str, Pod] = {}  # uid
        self.agent_connected = False
        self.pending = 0  # pods the agent added whose listeners are still being made
        self.started = 0  # pods ever served, and pods whose serving ended (for /metrics)
        self.stopped = 0
        self._serve: Callable[[Pod], Awaitable[None]] | None = None
        self._changed = changed
        self._nursery: trio.Nursery | None = None

    async def run(self, serve: Callable[[Pod], Awaitable[None]]) -> None:
        self._serve = serve
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self._follow_agent()
        finally:
            for pod in self.pods.values():
                pod.release()
            self.pods.clear()

    async def _follow_agent(self) -> None:
        announced_waiting = False
        while True:
            try:
                async with connect_zds(self.socket_path) as zds:
                    self.agent_connected = True
                    announced_waiting = False
                    log.info("connected to the node agent at %s", self.socket_path)
                    await self._session(zds)
                    log.warning("the node agent closed ZDS; serving %d pod(s) until it is back", len(self.pods))
            except OSError as exc:  # no agent yet (ZdsConnectError), or it died mid-message
                if not announced_waiting:
                    log.info("waiting for the node agent: %s", exc)
                    announced_waiting = True
            finally:
                self.agent_connected = False
            await trio.sleep(RECONNECT_DELAY)

    async def _session(self, zds) -> None:
        replayed: set[str] | None = set()
        async for request, fds in zds:
            kind = request.WhichOneof("payload")
            error = ""
            try:
                if kind == "add":
                    error = await self._add(request, fds)
                    if replayed is not None:
                        replayed.add(request.add.uid)
                elif kind == "del":  # "del" is a Python keyword: reach the field with getattr
                    await self.remove(getattr(request, "del").uid)
                elif kind == "snapshot_sent" and replayed is not None:
                    for uid in set(self.pods) - replayed:
                        await self.remove(uid)
                    replayed = None
                    log.info("node agent snapshot applied: serving %d pod(s)", len(self.pods))
            except (OSError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                log.error("ZDS %s failed: %s", kind, error)
            finally:
                if kind != "add":
                    close_fds(fds)
            await zds.ack(error)
            self._changed()

    async def _add(self, request, fds: list[int]) -> str:
        uid = request.add.uid
        known = self.pods.get(uid)
        if known is not None and len(fds) == len(POD_FDS) and os.fstat(fds[0]).st_ino == known.netns_inode:
            os.close(fds[0])  # same pod, same netns: keep our listeners; take the agent's maps
            known.replace_maps(Map(fds[1], "listeners", owned=True), Map(fds[2], "bypass", owned=True))
            return ""
        if known is not None:  # recreated: new netns, new listeners
            await self.remove(uid)
        self.pending += 1
        try:
            pod = await trio.to_thread.run_sync(pod_from_request, request, fds, self.dns)
        finally:
            self.pending -= 1
        self.pods[uid] = pod
        self.started += 1
        assert self._nursery is not None
        self._nursery.start_soon(self._run_pod, pod, name=f"pod {pod.key}")
        log.info("serving pod %s (listeners 15001/15006/15008%s in its netns)", pod.key,
                 ", DNS 15053" if self.dns else "")
        return ""

    async def _run_pod(self, pod: Pod) -> None:
        assert self._serve is not None
        try:
            with pod.scope:
                await self._serve(pod)
        finally:
            self.stopped += 1
            pod.release()
            pod.done.set()

    async def remove(self, uid: str) -> None:
        pod = self.pods.pop(uid, None)
        if pod is not None:
            pod.scope.cancel()
            await pod.done.wait()
            log.info("pod %s removed", pod.key)
