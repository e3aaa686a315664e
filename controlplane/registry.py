"""The registry: the cluster's current resources, from their sources, as one consistent state.

Sources:
- YAML files (``ConfigDirectory`` watches a directory; each file's resources are replaced as a
  unit, so an edit to one file changes only what that file declares, once the file has settled; a
  file with errors, or refused by a bound of ``mesh.source``, keeps its previous good resources in
  force and the problems are logged);
- the pods' runtime status (IP, node, ready), which the lab reports through ``set_pod_status``, in
  process or through a watched ``pods.json`` (``PodStatusFile``) when the control plane runs as its
  own process.

``state()`` merges them into a ``controlplane.view.ClusterState`` with Service VIPs assigned
(``VipAllocator``), ready for ``compute_view``. Every change bumps ``version`` and calls the
listeners, which the control plane uses to recompute the view (debounced) and publish it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from controlplane.validate import cross_check
from controlplane.view import ClusterState, PodStatus
from mesh import resources as r
from mesh.parse import ParseResult, parse_text
from mesh.source import MAX_FILE_BYTES, Severity, oversized
from mesh.watched_file import SettleGate, Signature, WatchedJsonFile, file_signature, read_at_most, write_json_atomic

log = logging.getLogger("ambient.registry")

DEFAULT_SERVICE_CIDR = "10.96.0.0/16"
POD_STATUS_FILE = "pods.json"
YAML_SUFFIXES = (".yaml", ".yml")


class VipAllocator:
    """Stable cluster IPs for Services: an explicit ``clusterIP`` is honoured; others keep the
    address they got first, which starts at a hash of the name so that restarts mostly agree."""

    def __init__(self, cidr: str = DEFAULT_SERVICE_CIDR) -> None:
        self.network = ipaddress.ip_network(cidr)
        if self.network.num_addresses < 4:
            raise ValueError(f"service CIDR {cidr} is too small")
        self._assigned: dict[tuple[str, str], str] = {}

    def assign(self, services: Mapping[tuple[str, str], r.Service]) -> dict[tuple[str, str], str]:
        explicit: dict[tuple[str, str], str] = {}
        for key, svc in sorted(services.items()):
            if svc.cluster_ip in ("", "None"):
                continue
            if svc.cluster_ip in explicit.values():
                log.error("%s: clusterIP %s is already taken; assigning another", svc.label, svc.cluster_ip)
                continue
            explicit[key] = svc.cluster_ip
        taken = set(explicit.values())
        result = dict(explicit)
        wanted = [key for key, svc in sorted(services.items()) if key not in result and svc.cluster_ip != "None"]
        # Every Service keeps what it had before a new one picks, so that adding one never moves another.
        for key in wanted:
            ip = self._assigned.get(key)
            if ip is not None and ip not in taken:
                result[key] = ip
                taken.add(ip)
        for key in wanted:
            if key not in result:
                result[key] = ip = self._free(key, taken)
                taken.add(ip)
        self._assigned = result
        return result

    def _free(self, key: tuple[str, str], taken: set[str]) -> str:
        size = self.network.num_addresses - 3  # not the network, the broadcast or .1 (Kubernetes' own)
        start = zlib.crc32(f"{key[0]}/{key[1]}".encode()) % size
        base = int(self.network.network_address) + 2
        for step in range(size):
            ip = str(ipaddress.ip_address(base + (start + step) % size))
            if ip not in taken:
                return ip
        raise RuntimeError(f"service CIDR {self.network} is exhausted")


class Registry:
    """Thread-safe: the lab or the control plane's file watchers write, the view reader reads."""

    def __init__(self, service_cidr: str = DEFAULT_SERVICE_CIDR) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, tuple[r.Resource, ...]] = {}
        self._status: dict[tuple[str, str], PodStatus] = {}
        self._vips = VipAllocator(service_cidr)
        self._listeners: list[Callable[[], None]] = []
        self._warned: set[tuple[str, tuple[str, str, str]]] = set()
        self.version = 0

    def on_change(self, listener: Callable[[], None]) -> None:
        """``listener()`` runs after every change, on the thread that made it; keep it short."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        self.version += 1
        for listener in self._listeners:
            listener()

    # -- sources

    def set_file(self, name: str, resources: Iterable[r.Resource]) -> None:
        resources = tuple(resources)
        with self._lock:
            if self._files.get(name) == resources:
                return
            self._files[name] = resources
        self._changed()

    def remove_file(self, name: str) -> None:
        with self._lock:
            if self._files.pop(name, None) is None:
                return
        self._changed()

    def set_pod_status(self, namespace: str, name: str, status: PodStatus | None) -> None:
        """The lab's report for a pod: running at ``status.ip`` on ``status.node``, or gone (None)."""
        key = (namespace, name)
        with self._lock:
            if self._status.get(key) == status:
                return
            if status is None:
                del self._status[key]
            else:
                self._status[key] = status
        self._changed()

    def replace_pod_statuses(self, statuses: Mapping[tuple[str, str], PodStatus | None]) -> None:
        fresh = {key: s for key, s in statuses.items() if s is not None}
        with self._lock:
            if fresh == self._status:
                return
            self._status = fresh
        self._changed()

    def pod_statuses(self) -> dict[tuple[str, str], PodStatus]:
        with self._lock:
            return dict(self._status)

    # -- reading

    def resources(self) -> list[r.Resource]:
        """Every resource once; when two files declare the same one, the first file (by name) wins."""
        with self._lock:
            files = sorted(self._files.items())
        seen: dict[tuple[str, str, str], r.Resource] = {}
        for name, resources in files:
            for res in resources:
                first = seen.setdefault(res.key, res)
                if first is not res and (name, res.key) not in self._warned:
                    self._warned.add((name, res.key))  # once, not on every recompute
                    log.warning("%s: %s is also declared in %s; using that one",
                                name, res.label, first.origin.file)
        return list(seen.values())

    def state(self) -> ClusterState:
        resources = self.resources()
        state = ClusterState.build(resources, self.pod_statuses())
        with self._lock:  # state.services includes the waypoints' Services: ClusterIP too, as in Istio
            vips = self._vips.assign(state.services)
        return dataclasses.replace(state, vips=vips)


class ConfigDirectory:
    """A directory of YAML feeding the registry. ``scan()`` applies what changed since the last
    scan; the control plane calls it periodically (a stat per file when nothing changed).

    The first scan applies every file as it is: nothing is in force yet, and the first view should
    hold everything on disk. After it, a change (a new, edited or deleted file) is applied only once
    it has settled (``SettleGate``: the same signature and content over SETTLE_INTERVAL), so that a
    file caught half-written, such as an ALLOW policy whose rules are not written yet, is never
    applied. A file refused (too large, not YAML, invalid) keeps its last good resources in force."""

    def __init__(self, root: Path, registry: Registry, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.root = root
        self._registry = registry
        self._clock = clock
        self._seen: dict[Path, Signature] = {}  # the signature of each file as last applied (or refused)
        self._gate = SettleGate()
        self._scanned = False

    def _files(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        # Hidden files and directories are skipped: editors' temporary files, .git, and the
        # ..data / ..<timestamp> directories of a mounted ConfigMap (whose files are also linked
        # at the top, and would otherwise be read twice).
        return sorted(p for p in self.root.rglob("*")
                      if p.suffix in YAML_SUFFIXES and p.is_file()
                      and not any(part.startswith(".") for part in p.relative_to(self.root).parts))

    def scan(self) -> bool:
        """Apply changed, new and deleted files that have settled; True if any was applied."""
        now, first = self._clock(), not self._scanned
        self._scanned = True
        current = {p: sig for p in self._files() if (sig := file_signature(p)) is not None}
        changed = False
        for path in sorted(set(self._seen) - set(current)):
            if first or self._gate.settled(path, None, None, now):
                log.info("%s: removed; its resources are withdrawn", path)
                del self._seen[path]
                self._registry.remove_file(str(path))
                changed = True
        for path, sig in current.items():
            if self._seen.get(path) == sig:
                self._gate.forget(path)  # as applied: an edit undone before it settled
                continue
            try:
                content = None if sig[1] > MAX_FILE_BYTES else read_at_most(path, MAX_FILE_BYTES)
            except OSError as exc:
                log.error("%s: cannot read (%s); keeping its previous resources in force", path, exc)
                self._gate.forget(path)
                continue  # tried again at the next scan
            if not first and not self._gate.settled(path, sig, content, now):
                continue
            self._seen[path] = sig
            changed = True
            self._load(path, content)
        for key in self._gate.waiting() - set(current) - set(self._seen):
            self._gate.forget(key)  # a new file deleted before it settled
        if changed:
            for problem in cross_check(self._registry.resources()):
                log.warning("%s", problem)
        return changed

    def _load(self, path: Path, content: bytes | None) -> None:
        """Apply the file's ``content`` (None: over MAX_FILE_BYTES, refused unread)."""
        name = str(path.relative_to(self.root))
        try:
            result = ParseResult(problems=[oversized(name)]) if content is None else parse_text(content.decode(), name)
        except UnicodeDecodeError as exc:
            log.error("%s: cannot read (%s); keeping its previous resources in force", path, exc)
            return
        for problem in result.problems:
            (log.error if problem.severity is Severity.ERROR else log.warning)("%s", problem)
        if result.errors:
            log.error("%s: %d error(s); keeping its previous resources in force", path, len(result.errors))
            return
        self._registry.set_file(str(path), result.resources)
        log.info("%s: %d resource(s) applied", path, len(result.resources))


def parse_pod_statuses(data: object) -> dict[tuple[str, str], PodStatus]:
    """``{"pods": {"<ns>/<name>": {"ip": "...", "node": "...", "ready": true}}}``"""
    if not isinstance(data, dict) or not isinstance(data.get("pods"), dict):
        raise ValueError('expected {"pods": {"<namespace>/<name>": {"ip": ..., "node": ...}}}')
    statuses = {}
    for key, entry in data["pods"].items():
        namespace, sep, name = str(key).partition("/")
        if not sep or not namespace or not name:
            raise ValueError(f"pods.{key}: expected <namespace>/<name>")
        if not isinstance(entry, dict):
            raise ValueError(f"pods.{key}: expected an object with ip and node")
        try:
            ready = entry.get("ready", True)
            if not isinstance(ready, bool):
                raise ValueError("ready: expected true or false")
            statuses[(namespace, name)] = PodStatus(str(entry.get("ip", "")), str(entry.get("node", "")), ready)
        except ValueError as exc:
            raise ValueError(f"pods.{key}: {exc}") from None
    return statuses


class PodStatusFile:
    """``pods.json`` written by a lab in another process (atomically, by rename), fed to the registry.
    A bad edit is logged and the previous status stays in force; a missing file means no pod runs."""

    def __init__(self, path: Path, registry: Registry) -> None:
        self.path = path
        self._registry = registry
        no_pods: dict[tuple[str, str], PodStatus] = {}
        self._file = WatchedJsonFile(path, parse_pod_statuses, no_pods, what="pod status")
        self._applied = no_pods  # a file missing from the start changes nothing

    def scan(self) -> bool:
        statuses = self._file.get()
        if statuses is self._applied:
            return False
        self._applied = statuses
        self._registry.replace_pod_statuses(statuses)
        return True


def write_pod_statuses(path: Path, statuses: Mapping[tuple[str, str], PodStatus]) -> None:
    """For the lab: write ``pods.json`` atomically."""
    data = {"pods": {f"{ns}/{name}": {"ip": s.ip, "node": s.node, "ready": s.ready}
                     for (ns, name), s in sorted(statuses.items())}}
    write_json_atomic(path, data, mode=0o644)
