"""Entering network namespaces: what every component that makes sockets in a pod's netns needs.

Kept apart from ``lab.network`` (which builds the lab with pyroute2) so that ztunnel and the
node agent's ZDS side do not load pyroute2 for a ``setns``: it is about a fifth of ztunnel's memory.
Entering a netns is per thread; ``inside_netns_fd`` returns the thread to its own netns after the
body, so a socket made in the body belongs to the target netns for life.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
from contextlib import contextmanager

NETNS_RUN_DIR = "/var/run/netns"  # where `ip netns` (and pyroute2) bind named namespaces
CLONE_NEWNET = 0x40000000
_LIBC = ctypes.CDLL(None, use_errno=True)

# How the lab names its namespaces (``lab.topology`` plans them): the node agent finds a pod's netns
# by this name, where a real cluster's CNI plugin would hand it the netns path.
NETNS_PREFIX = "amb-"
POD_HASH_LENGTH = 10  # "veth-" + 10 = 15 = IFNAMSIZ, the kernel's limit on interface names
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class InvalidLabName(ValueError):
    """A lab name that is not a DNS label."""


def validate_lab_name(name: str) -> str:
    if not isinstance(name, str) or not _DNS_LABEL.fullmatch(name):
        raise InvalidLabName(
            f"invalid lab name {name!r}: it must be a DNS label (1-63 characters: lowercase "
            "letters, digits and '-', starting and ending with a letter or digit)"
        )
    return name


def netns_prefix(lab_name: str) -> str:
    """The prefix of every netns of the lab ``lab_name``, and of no other lab's."""
    return f"{NETNS_PREFIX}{validate_lab_name(lab_name)}."


def pod_hash(namespace: str, name: str) -> str:
    return hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:POD_HASH_LENGTH]


def pod_netns(prefix: str, digest: str) -> str:
    return f"{prefix}pod-{digest}"


def pod_netns_name(lab_name: str, namespace: str, name: str) -> str:
    """The netns of pod ``namespace/name`` in lab ``lab_name`` (how the node agent finds it)."""
    return pod_netns(netns_prefix(lab_name), pod_hash(namespace, name))


def netns_path(netns: str) -> str:
    """Where the named netns is bound (as `ip netns` names it)."""
    return os.path.join(NETNS_RUN_DIR, netns)


def enter_netns(fd: int) -> None:
    """Move the calling thread into the netns open as ``fd``. Safe in a child between fork and exec
    (only a system call, nothing else)."""
    if _LIBC.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


@contextmanager
def inside_netns_fd(netns_fd: int):
    """Run the body with the calling thread in the netns open as ``netns_fd`` (e.g. one handed over
    ZDS), then return it to its own. Keep the body to creating sockets: no awaits, nothing that blocks."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter_netns(netns_fd)
        try:
            yield
        finally:
            enter_netns(own)
    finally:
        os.close(own)


@contextmanager
def inside_netns(netns: str):
    """Run the body with the calling thread in the named netns ``netns``, then return to its own.

    Sockets and /proc/sys/net files created in the body belong to ``netns`` for life, whichever
    thread uses them later. Keep the body to such creations: no awaits, nothing that blocks.
    """
    target = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        with inside_netns_fd(target):
            yield
    finally:
        os.close(target)
