"""Entering network namespaces: what every component that makes sockets in a pod's netns needs.

Kept apart from ``mesh.lab.network`` (which builds the lab with pyroute2) so that ztunnel and the
node agent's ZDS side do not load pyroute2 for a ``setns``: it is about a fifth of ztunnel's memory.
Entering a netns is per thread; ``inside_netns_fd`` returns the thread to its own netns after the
body, so a socket made in the body belongs to the target netns for life.
"""

from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager

NETNS_RUN_DIR = "/var/run/netns"  # where `ip netns` (and pyroute2) bind named namespaces
CLONE_NEWNET = 0x40000000
_LIBC = ctypes.CDLL(None, use_errno=True)


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
