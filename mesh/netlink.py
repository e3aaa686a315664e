"""Netlink and sysctls inside a named network namespace, with pyroute2: what the lab (building its
network) and the node agent (a pod's policy rules and routes) share.

Kept apart from ``mesh.netns`` so that a process that only enters namespaces (ztunnel) does not
load pyroute2. The calls block; call them from ``trio.to_thread.run_sync`` in async code.
"""

from __future__ import annotations

from pyroute2 import IPRoute

from mesh.netns import inside_netns


def rtnl(netns: str) -> IPRoute:
    """A netlink (rtnetlink) handle of the netns ``netns``; close it, or use it as a context manager."""
    with inside_netns(netns):  # a missing netns fails here, rather than being created
        return IPRoute()


def write_sysctls(netns: str, values: dict[str, int]) -> None:
    """Set /proc/sys/net/<key> to each value in ``netns`` (keys like "ipv4/ip_forward")."""
    with inside_netns(netns):
        files = [(open(f"/proc/sys/net/{key}", "w"), value) for key, value in values.items()]
    for file, value in files:  # opened inside, so they write the netns's own values
        with file:
            file.write(f"{value}\n")
