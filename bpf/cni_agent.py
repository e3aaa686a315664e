"""The node agent on Kubernetes: where its pods' netns come from, and how long a CNI capture waits.

In the lab the agent finds a pod's netns by the lab's name for it. On a Kubernetes node
(``ambient node-agent --kubernetes``) it learns them two ways, both held in a ``PodNetnsTable``:

- CNI ADD (``bpf.cni_server``): the runtime's ``CNI_NETNS`` for a pod that ``lookup`` says is
  captured. The agent attaches the capture there before answering, so the pod's containers never
  start uncaptured; the pod is then *pending*: captured, but not yet handed to ztunnel, which needs
  its Workload (uid, service account) from discovery. Until its Workload arrives, reconcile must not
  release it for being no target; after ``CNI_WORKLOAD_WAIT`` without one it is released.
- /proc (``bpf.proc_netns``): for a target whose netns the table does not hold (a pod that ran before
  the agent, or whose namespace was labelled later), a scan matched by pod IP, as istio-cni's
  ``podNetnsProcFinder``. At most once per ``PROC_RESCAN_INTERVAL`` for the same unknown pods.

A netns is forgotten (its fd closed) once its pod is neither a target, held nor pending.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import trio

from bpf.cni_pods import PodLookup
from bpf.proc_netns import PodNetnsTable, match_pods, reopen, scan_proc

log = logging.getLogger("ambient.nodeagent")

# How long a pod captured at CNI ADD stays captured without its Workload. The API server has the
# pod's IP within a second or two of the ADD and discovery follows; a pod that the control plane
# does not see as ambient after this long (its label removed meanwhile) is released.
CNI_WORKLOAD_WAIT = 120.0
# The least time between two /proc scans looking for the same pods (a scan enters every netns of
# the node); a new pod to look for scans at once.
PROC_RESCAN_INTERVAL = 10.0


def protected(pending: Mapping[str, float], targets: Iterable[str], now: float) -> set[str]:
    """The pending pods reconcile must leave alone: no Workload yet, and still within their wait."""
    targets = set(targets)
    return {key for key, deadline in pending.items() if key not in targets and now < deadline}


@dataclass
class KubernetesPods:
    """What the agent knows of its pods' netns on a Kubernetes node, and the CNI socket it serves."""

    lookup: PodLookup
    cni_socket: Path
    proc: Path = Path("/proc")
    netns: PodNetnsTable = field(default_factory=PodNetnsTable)
    pending: dict[str, float] = field(default_factory=dict)  # pin name -> deadline (trio clock)
    _last_scan: tuple[frozenset[str], float] = (frozenset(), -math.inf)

    def netns_of(self, key: str) -> str | None:
        return self.netns.path(key)

    def settle(self, targets: Iterable[str], now: float) -> set[str]:
        """Drop the pending pods whose Workload came or whose wait is over; the ones still protected."""
        targets = set(targets)
        keep = protected(self.pending, targets, now)
        for key in set(self.pending) - keep:
            del self.pending[key]
        return keep

    async def find_unknown(self, pod_ips: Mapping[str, str]) -> None:
        """Look in /proc for the netns of the pods (key → IP) the table does not hold."""
        wanted = {key: ip for key, ip in pod_ips.items() if key not in self.netns}
        now = trio.current_time()
        keys = frozenset(wanted)
        last_keys, last_time = self._last_scan
        if not wanted or (keys <= last_keys and now < last_time + PROC_RESCAN_INTERVAL):
            return
        self._last_scan = (keys, now)
        candidates = await trio.to_thread.run_sync(scan_proc, self.proc)
        for key, candidate in match_pods(candidates, wanted).items():
            fd = await trio.to_thread.run_sync(reopen, candidate, self.proc)
            if fd is not None:
                self.netns.adopt(key, fd)
                log.info("pod %s: netns found in /proc (pid %d, %s)", key, candidate.pid, wanted[key])

    def forget_except(self, keys: Iterable[str]) -> None:
        for key in self.netns.keys() - set(keys) - set(self.pending):
            self.netns.forget(key)
