"""The Kubernetes API as a source of the registry (``ambient controlplane --kubernetes``).

One trio task per kind (``controlplane.kube_client.KINDS_READ``) lists it and then watches it,
cluster-wide, with the decisions made by that kind's ``controlplane.kube_watch.KindWatch``: every
blocking call of the official client runs in a worker thread (abandoned on cancellation, its stream
shut down so the thread ends too), the events come back to the task, and the changes they make go
to the registry from a worker thread (parsing 10,000 pods takes seconds).

Each object is fed like one YAML file of one document (``Registry.set_file`` under the name
``kubernetes:<Kind>/<namespace>/<name>``): it goes through the same parser (``mesh.parse``), so a bad
object gets the same findings, naming ``Kind namespace/name`` instead of a file and line, and, like
a file with errors, keeps its previous good version in force. Before parsing, an object is cut down
to what the mesh reads (``project``): a Pod to its labels, service account, node and container
ports, so that fields only the lab acts on (probes, init containers, images) never refuse a real
pod; status and managed fields are dropped. Pods' runtime status (IP, node, the Ready condition)
goes to ``Registry.set_pod_status`` (``pod_status``).

The YAML directory (``--config``) may feed the same registry beside it; a resource both declare is
taken once, from the source whose registry name sorts first, and the registry warns about it.

``KubeSource`` also keeps what the write-back needs (``controlplane.kube_writeback``): each Gateway's
uid, generation and whether it parsed, and each Service's clusterIP, and calls ``on_change``
listeners (in the trio thread) after every batch.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any

import trio

from controlplane.kube_client import GATEWAY, KINDS_READ, POD, SERVICE, ApiError, ApiKind, KubeApi
from controlplane.kube_watch import (
    ABSENT_RETRY,
    Changes,
    KindWatch,
    LineDecoder,
    MalformedEvent,
    ObjectKey,
    Phase,
    decode_event,
    object_key,
)
from controlplane.registry import Registry
from controlplane.view import PodStatus
from mesh import resources as r
from mesh.backoff import Backoff
from mesh.parse import parse_document
from mesh.source import Document, Problem, Severity

log = logging.getLogger("ambient.kube")

SOURCE_PREFIX = "kubernetes:"


def registry_name(kind: str, key: ObjectKey) -> str:
    """The registry's "file" of one object."""
    return f"{SOURCE_PREFIX}{kind}/{key[0]}/{key[1]}" if key[0] else f"{SOURCE_PREFIX}{kind}/{key[1]}"


# ---------------------------------------------------------------- pure: object → what the mesh reads

_META_KEPT = ("name", "namespace", "labels", "annotations")
_SERVICE_SPEC_KEPT = ("selector", "clusterIP", "ports", "internalTrafficPolicy", "trafficDistribution",
                      "publishNotReadyAddresses")
_SERVICE_PORT_KEPT = ("name", "port", "targetPort", "protocol", "appProtocol")
_CONTAINER_PORT_KEPT = ("containerPort", "name", "protocol")


def _pick(mapping: Any, keys: Iterable[str]) -> dict:
    return {k: mapping[k] for k in keys if k in mapping} if isinstance(mapping, dict) else {}


def project(kind: str, obj: dict) -> dict | None:
    """``obj`` cut down to what the mesh's parser reads; None for an object the mesh does not use
    (a Service of type ExternalName: no cluster IP, no endpoints)."""
    meta = _pick(obj.get("metadata"), _META_KEPT)
    out: dict[str, Any] = {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind", kind), "metadata": meta}
    spec = obj.get("spec")
    if kind in ("Namespace", "Node"):
        return out
    if kind == "Pod":
        spec = spec if isinstance(spec, dict) else {}
        pod_spec = _pick(spec, ("serviceAccountName", "nodeName"))
        containers = spec.get("containers")
        # Not a list: passed on as it is, for the parser to report.
        pod_spec["containers"] = ([_container(c) for c in containers if isinstance(c, dict)]
                                  if isinstance(containers, list) else containers)
        out["spec"] = pod_spec
        return out
    if kind == "Service":
        spec = spec if isinstance(spec, dict) else {}
        if spec.get("type") == "ExternalName":
            return None
        service_spec = _pick(spec, _SERVICE_SPEC_KEPT)
        if isinstance(spec.get("ports"), list):
            service_spec["ports"] = [_pick(p, _SERVICE_PORT_KEPT) for p in spec["ports"] if isinstance(p, dict)]
        out["spec"] = service_spec
        return out
    if spec is not None:
        out["spec"] = spec
    return out


def _container(container: dict) -> dict:
    """A container's name and ports: all of it the mesh reads (named target ports)."""
    out = _pick(container, ("name",))
    if isinstance(container.get("ports"), list):
        out["ports"] = [_pick(p, _CONTAINER_PORT_KEPT) for p in container["ports"] if isinstance(p, dict)]
    return out


def pod_status(obj: dict) -> PodStatus | None:
    """A running pod's IP (IPv4), node and readiness, as the kubelet reports them; None for a pod
    without an IP yet, finished (Succeeded/Failed: its IP may already be another pod's), or on the
    host's network (its IP is the node's: not a workload of the mesh)."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if not isinstance(spec, dict) or not isinstance(status, dict) or spec.get("hostNetwork"):
        return None
    if status.get("phase") in ("Succeeded", "Failed") or obj.get("metadata", {}).get("deletionTimestamp"):
        return None
    node = spec.get("nodeName")
    candidates = [status.get("podIP")] + [entry.get("ip") for entry in status.get("podIPs") or []
                                          if isinstance(entry, dict)]
    ip = next((c for c in candidates if isinstance(c, str) and _is_ipv4(c)), None)
    if ip is None or not isinstance(node, str) or not node:
        return None
    ready = any(isinstance(c, dict) and c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or [])
    return PodStatus(ip, node, ready)


def _is_ipv4(text: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET, text)
        return True
    except OSError:
        return False


def pod_owner(obj: dict) -> str:
    """``Deployment/<name>`` for a pod of a Deployment's ReplicaSet (``<deployment>-<pod-template-hash>``),
    as istiod names a pod's workload; else ""."""
    meta = obj.get("metadata") or {}
    template_hash = (meta.get("labels") or {}).get("pod-template-hash", "")
    for ref in meta.get("ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("kind") == "ReplicaSet" and template_hash:
            name = str(ref.get("name", ""))
            if name.endswith(f"-{template_hash}"):
                return f"Deployment/{name[:-len(template_hash) - 1]}"
    return ""


def parse_object(kind: str, obj: dict) -> tuple[list[r.Resource], list[Problem]]:
    """The resources of one API object through the YAML documents' parser, and its findings."""
    key = object_key(obj)
    projected = project(kind, obj)
    if projected is None:
        return [], []
    problems: list[Problem] = []
    resource = parse_document(Document(registry_name(kind, key), 0, projected, {}), problems)
    if isinstance(resource, r.Pod) and (owner := pod_owner(obj)):
        resource = dataclasses.replace(resource, owner=owner)
    return ([resource] if resource is not None else []), problems


def describe(problem: Problem, kind: str, key: ObjectKey) -> str:
    """A finding about an API object: ``Kind namespace/name: field: message`` (no file or line)."""
    where = problem.resource or f"{kind} {key[0] + '/' if key[0] else ''}{key[1]}"
    field = f"{problem.field}: " if problem.field else ""
    tag = "warning: " if problem.severity is Severity.WARNING else ""
    return f"{where}: {field}{tag}{problem.message} [{problem.code}]"


# ---------------------------------------------------------------- what the write-back reads


@dataclasses.dataclass(frozen=True)
class GatewayInfo:
    """A Gateway as the write-back sees it. ``problems``: its errors, if it did not parse."""

    namespace: str
    name: str
    uid: str
    generation: int
    gateway_class: str
    problems: tuple[str, ...] = ()

    @property
    def accepted(self) -> bool:
        return not self.problems

    @property
    def is_waypoint(self) -> bool:
        return self.gateway_class == r.WAYPOINT_CLASS


def gateway_info(obj: dict, problems: Iterable[str] = ()) -> GatewayInfo:
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    generation = meta.get("generation")
    return GatewayInfo(meta.get("namespace", ""), meta.get("name", ""), str(meta.get("uid", "")),
                       generation if isinstance(generation, int) else 0,
                       str(spec.get("gatewayClassName", "")) if isinstance(spec, dict) else "", tuple(problems))


# ---------------------------------------------------------------- the driver


class KubeSource:
    def __init__(self, api: KubeApi, registry: Registry, kinds: tuple[ApiKind, ...] = KINDS_READ, *,
                 backoff: Backoff = Backoff(), absent_retry: float = ABSENT_RETRY) -> None:
        self.api = api
        self.registry = registry
        self.kinds = kinds
        self.watches = {k.kind: KindWatch(k.kind, backoff, absent_retry) for k in kinds}
        self._lock = threading.Lock()  # the bookkeeping below is written from worker threads
        self._gateways: dict[ObjectKey, GatewayInfo] = {}
        self._service_ips: dict[ObjectKey, str] = {}
        self._listeners: list[Callable[[], None]] = []
        self._refused_reported: set[str] = set()

    def on_change(self, listener: Callable[[], None]) -> None:
        """``listener()`` runs in the trio thread after each batch of changes is applied."""
        self._listeners.append(listener)

    def gateways(self) -> dict[ObjectKey, GatewayInfo]:
        with self._lock:
            return dict(self._gateways)

    def service_ips(self) -> dict[ObjectKey, str]:
        with self._lock:
            return dict(self._service_ips)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Follow every kind until cancelled. Reports started once each kind's first list has been
        applied or has failed, so the first view holds what the API server had."""
        listed = {k.kind: trio.Event() for k in self.kinds}
        async with trio.open_nursery() as nursery:
            for kind in self.kinds:
                nursery.start_soon(self._follow, kind, listed[kind.kind])
            for event in listed.values():
                await event.wait()
            task_status.started()

    async def _follow(self, kind: ApiKind, listed: trio.Event) -> None:
        machine = self.watches[kind.kind]
        while True:
            step = machine.next_step()
            if step.delay:
                await trio.sleep(step.delay)
            if step.action is Phase.LIST:
                try:
                    items, version = await trio.to_thread.run_sync(self.api.list_all, kind, abandon_on_cancel=True)
                except ApiError as exc:
                    message = machine.list_failed(exc.status, exc.reason)
                    if message:
                        log.warning("%s", message)
                else:
                    await self._apply(kind, machine.listed(items, version))
                    log.info("%s: %d listed at resourceVersion %s", kind.kind, len(machine.held), version)
                listed.set()
            else:
                await self._watch(kind, machine, step.resource_version)

    async def _watch(self, kind: ApiKind, machine: KindWatch, version: str) -> None:
        try:
            stream = await trio.to_thread.run_sync(self.api.open_watch, kind, version, abandon_on_cancel=True)
        except ApiError as exc:
            log.warning("%s", machine.watch_failed(exc.status, exc.reason))
            return
        decoder = LineDecoder()
        try:
            while True:
                try:
                    chunk = await trio.to_thread.run_sync(stream.read, abandon_on_cancel=True)
                    if not chunk:
                        if decoder.pending:
                            raise MalformedEvent("the stream ended in the middle of an event")
                        machine.watch_ended()
                        return
                    events = [decode_event(line) for line in decoder.feed(chunk)]
                except (ApiError, MalformedEvent) as exc:
                    log.warning("%s", machine.watch_failed(0, str(exc)))
                    return
                batch: list[Changes] = []  # a chunk's events are applied in one trip to a worker thread
                ended = None
                for event in events:
                    changes = machine.event(event)
                    batch.append(changes)
                    if changes.end_stream:
                        ended = event["object"]
                        break
                await self._apply(kind, *batch)
                if ended is not None:
                    log.info("%s: watch ended by the API server (%s %s); %s", kind.kind, ended.get("code"),
                             ended.get("message", ""), "listing again" if machine.phase is Phase.LIST
                             else f"resuming in {machine.next_step().delay:.1f} s")
                    return
        finally:
            stream.close()

    async def _apply(self, kind: ApiKind, *batch: Changes) -> None:
        refused = sum(changes.refused for changes in batch)
        if refused and kind.kind not in self._refused_reported:
            self._refused_reported.add(kind.kind)  # once: the bound holds for as long as the cluster is that big
            log.error("%s: %d object(s) refused: more than %d, or without a name", kind.kind, refused,
                      self.watches[kind.kind].max_objects)
        batch = tuple(changes for changes in batch if changes)
        if batch:
            await trio.to_thread.run_sync(self._apply_sync, kind, batch)
            for listener in self._listeners:
                listener()

    def _apply_sync(self, kind: ApiKind, batch: tuple[Changes, ...]) -> None:
        for changes in batch:  # in order: an object added then deleted in one batch ends deleted
            self._apply_changes(kind, changes)

    def _apply_changes(self, kind: ApiKind, changes: Changes) -> None:
        for obj in changes.upserted:
            try:
                self._upsert(kind, obj)
            except Exception:  # a bug in parsing one object must not stop the source (as a file's scan)
                log.exception("%s %s: not applied", kind.kind, "/".join(p for p in object_key(obj) if p))
        for key in changes.deleted:
            self.registry.remove_file(registry_name(kind.kind, key))
            if kind is POD:
                self.registry.set_pod_status(key[0], key[1], None)
            with self._lock:
                if kind is GATEWAY:
                    self._gateways.pop(key, None)
                elif kind is SERVICE:
                    self._service_ips.pop(key, None)

    def _upsert(self, kind: ApiKind, obj: dict) -> None:
        obj.setdefault("kind", kind.kind)
        obj.setdefault("apiVersion", kind.api_version)
        key = object_key(obj)
        name = registry_name(kind.kind, key)
        if kind is POD:
            try:
                self.registry.set_pod_status(key[0], key[1], pod_status(obj))
            except ValueError as exc:  # PodStatus refused it: no usable IP or node
                log.warning("Pod %s/%s: status not used: %s", key[0], key[1], exc)
                self.registry.set_pod_status(key[0], key[1], None)
        resources, problems = parse_object(kind.kind, obj)
        errors = [describe(p, kind.kind, key) for p in problems if p.severity is Severity.ERROR]
        for problem in problems:  # once per version of the object, as a file's are once per edit
            if problem.severity is Severity.WARNING:
                log.warning("%s", describe(problem, kind.kind, key))
        with self._lock:
            if kind is GATEWAY:
                self._gateways[key] = gateway_info(obj, errors)
            elif kind is SERVICE:
                ip = (obj.get("spec") or {}).get("clusterIP")
                if isinstance(ip, str) and _is_ipv4(ip):
                    self._service_ips[key] = ip
                else:
                    self._service_ips.pop(key, None)
        if errors:
            for error in errors:
                log.error("%s", error)
            log.error("%s %s: %d error(s); keeping its previous version in force", kind.kind,
                      "/".join(part for part in key if part), len(errors))
            return
        if resources:
            self.registry.set_file(name, resources)
        else:  # a kind or object the mesh does not use (an ExternalName Service)
            self.registry.remove_file(name)
