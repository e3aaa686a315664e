"""Pods' network namespaces on a Kubernetes node: held by fd, and found from /proc for pods already running.

In the lab the node agent finds a pod's netns by name (``mesh.netns.pod_netns_name``). On a real node
the netns comes from the CNI plugin (``CNI_NETNS``, a bind mount the runtime owns) or, for pods that
were running before the agent (or whose namespace was labelled later), from the host's /proc, as
istio-cni's ``podNetnsProcFinder``: every ``/proc/<pid>/ns/net``, deduplicated by inode, entered to
read its IPv4 addresses; a netns holding exactly one wanted pod IP is that pod's (``match_pods``, pure).

``PodNetnsTable`` keeps each known pod's netns open, and hands out ``/proc/self/fd/<fd>`` as its path:
opening that path (``setns``, pyroute2, ZDS's netns fd) always reaches the same netns, where
``/proc/<pid>/ns/net`` could name another after the pid is reused, and a runtime's bind mount could be
gone. Holding the fd keeps the netns alive, so the agent forgets a pod (closes it) when the pod leaves.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute

from mesh.netns import CLONE_NEWNET, inside_netns_fd

log = logging.getLogger("ambient.nodeagent")

NS_GET_NSTYPE = 0xB703  # ioctl(2) on a namespace fd: its CLONE_NEW* type (linux/nsfs.h)
# A pod may make network namespaces of its own (user namespaces allow it unprivileged); the scan enters
# at most this many distinct ones, so such a pod cannot make every scan of the node unbounded. Far above
# a node's pods (110 by default, a few hundred at most).
MAX_SCANNED_NETNS = 4096


@dataclass(frozen=True)
class NetnsCandidate:
    """A distinct netns seen in /proc: its inode, a pid inside it, and its IPv4 addresses."""

    inode: int
    pid: int
    addresses: frozenset[str]


def match_pods(candidates: Iterable[NetnsCandidate], wanted: Mapping[str, str]) -> dict[str, NetnsCandidate]:
    """Each wanted pod (key → IP) whose IP is in exactly one netns; none found or several: left out."""
    by_ip: dict[str, list[NetnsCandidate]] = defaultdict(list)
    for candidate in candidates:
        for ip in candidate.addresses:
            by_ip[ip].append(candidate)
    return {key: by_ip[ip][0] for key, ip in wanted.items() if len(by_ip.get(ip, ())) == 1}


def open_netns(path: str) -> int:
    """An fd of the network namespace at ``path``; ValueError if it is another kind of file."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.ENOTTY, errno.EINVAL):
            raise ValueError(f"{path} is not a namespace") from None
        raise
    if kind != CLONE_NEWNET:
        os.close(fd)
        raise ValueError(f"{path} is a namespace, but not a network namespace")
    return fd


def netns_addresses(fd: int) -> frozenset[str]:
    """The IPv4 addresses of the netns open as ``fd``, loopback's left out."""
    with inside_netns_fd(fd):
        ipr = IPRoute()
    with ipr:
        found = {message.get_attr("IFA_ADDRESS") for message in ipr.get_addr(family=socket.AF_INET)}
    return frozenset(ip for ip in found if ip and not ip.startswith("127."))


def scan_proc(proc: Path = Path("/proc"), skip: Iterable[int] = ()) -> list[NetnsCandidate]:
    """Every distinct netns of the host's processes but the host's own (pid 1's) and those in ``skip``."""
    seen = set(skip)
    try:
        seen.add(os.stat(proc / "1" / "ns" / "net").st_ino)
    except OSError:
        pass
    candidates: list[NetnsCandidate] = []
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            fd = os.open(f"{entry.path}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # exited meanwhile, or a kernel thread
            continue
        try:
            inode = os.fstat(fd).st_ino
            if inode in seen:
                continue
            seen.add(inode)
            if len(candidates) >= MAX_SCANNED_NETNS:
                log.warning("/proc scan: over %d network namespaces; the rest are not looked at", MAX_SCANNED_NETNS)
                break
            candidates.append(NetnsCandidate(inode, int(entry.name), netns_addresses(fd)))
        except OSError as exc:
            log.debug("/proc scan: netns of pid %s: %s", entry.name, exc)
        finally:
            os.close(fd)
    return candidates


def reopen(candidate: NetnsCandidate, proc: Path = Path("/proc")) -> int | None:
    """An fd of ``candidate``'s netns, if its pid is still in it (not exited, not reused); else None."""
    try:
        fd = open_netns(str(proc / str(candidate.pid) / "ns" / "net"))
    except (OSError, ValueError):
        return None
    if os.fstat(fd).st_ino != candidate.inode:
        os.close(fd)
        return None
    return fd


class PodNetnsTable:
    """Pod key → its netns, held open; ``path(key)`` reaches it from any thread of this process."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def open(self, key: str, path: str) -> int:
        """Hold the netns at ``path`` for ``key`` (replacing what it held); its inode."""
        self.adopt(key, open_netns(path))
        return os.fstat(self._fds[key]).st_ino

    def adopt(self, key: str, fd: int) -> None:
        """Hold ``fd`` (now the table's) for ``key``."""
        self.forget(key)
        self._fds[key] = fd

    def path(self, key: str) -> str | None:
        fd = self._fds.get(key)
        return None if fd is None else f"/proc/self/fd/{fd}"

    def __contains__(self, key: object) -> bool:
        return key in self._fds

    def keys(self) -> set[str]:
        return set(self._fds)

    def forget(self, key: str) -> None:
        fd = self._fds.pop(key, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for key in list(self._fds):
            self.forget(key)
