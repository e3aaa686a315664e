"""Writing the waypoints back to the cluster: each waypoint Gateway's ServiceAccount, Service and
Deployment, the namespace's root certificate ConfigMap, and the Gateway's status.

``plan_writeback`` (pure) compares what ``controlplane.kube_waypoints`` renders for the Gateways the
API source holds (``KubeSource.gateways``, ``KubeSource.service_ips``) with what was last applied
(by digest) and returns only what changed; ``WaypointWriter`` (trio) runs it after every change the
source applies, and applies each object with server-side apply (field manager
``ambient-controlplane``, ``force``: the control plane owns these fields) in a worker thread. A
failed apply is not recorded, so the next round tries it again; rounds after a failure are spaced by
``mesh.backoff``. Nothing is deleted here: the objects are owned by their Gateway
(``ownerReferences``), so the cluster's garbage collector removes them with it.

``run_kubernetes`` is what ``ambient controlplane --kubernetes`` starts: the client
(``kube_client.connect``), the ``KubeSource`` feeding the registry and, unless ``KubeOptions.waypoints``
is None, the ``WaypointWriter``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

import trio

from controlplane.kube_client import ApiError, KubeApi, connect
from controlplane.kube_source import GatewayInfo, KubeSource
from controlplane.kube_watch import ObjectKey
from controlplane.kube_waypoints import (
    KubeOptions,
    WaypointGateway,
    WaypointTemplate,
    digest,
    gateway_conditions,
    gateway_status,
    render_waypoint,
    root_cert_config_map,
)
from controlplane.registry import Registry
from mesh.backoff import Backoff

log = logging.getLogger("ambient.kube.writeback")

SYSTEM_NAMESPACE = "istio-system"  # the install's namespace (manifests/install/), as Istio's

AppliedKey = tuple[str, str, str]  # (kind, namespace, name)


@dataclass(frozen=True)
class Plan:
    applies: tuple[tuple[AppliedKey, dict, str], ...] = ()  # (key, object, its digest)
    statuses: tuple[tuple[ObjectKey, dict], ...] = ()  # (Gateway, its status body)
    forget: tuple[ObjectKey, ...] = ()  # Gateways gone: their records are dropped


def _key(obj: dict) -> AppliedKey:
    return (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


def plan_writeback(gateways: Mapping[ObjectKey, GatewayInfo], service_ips: Mapping[ObjectKey, str],
                   template: WaypointTemplate, root_pem: str, applied: Mapping[AppliedKey, str],
                   statuses: Mapping[ObjectKey, dict], now: str) -> Plan:
    applies: list[tuple[AppliedKey, dict, str]] = []
    status_bodies: list[tuple[ObjectKey, dict]] = []
    waypoint_namespaces: set[str] = set()
    for key, info in sorted(gateways.items()):
        if not info.is_waypoint:
            continue  # another controller's Gateway
        gw = WaypointGateway(info.namespace, info.name, info.uid, info.gateway_class)
        if info.accepted and info.uid:
            waypoint_namespaces.add(info.namespace)
            for obj in render_waypoint(gw, template):
                applies.append((_key(obj), obj, digest(obj)))
        hostname = f"{info.name}.{info.namespace}.svc.{template.domain_suffix}"
        ip = service_ips.get(key, "")
        body = gateway_status(gw, info.generation, gateway_conditions(info.problems, ip, hostname), ip,
                              statuses.get(key), now)
        if body != statuses.get(key):
            status_bodies.append((key, body))
    # The root certificate first: the Deployments' pods mount it; and in the control plane's own
    # namespace, where ztunnel's DaemonSet mounts it (manifests/install/ztunnel.yaml).
    roots = [root_cert_config_map(ns, root_pem) for ns in sorted(waypoint_namespaces | {SYSTEM_NAMESPACE})]
    applies = [(_key(obj), obj, digest(obj)) for obj in roots] + applies
    changed = tuple(item for item in applies if applied.get(item[0]) != item[2])
    forget = tuple(key for key in statuses if key not in gateways)
    return Plan(changed, tuple(status_bodies), forget)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class WaypointWriter:
    api: KubeApi
    source: KubeSource
    template: WaypointTemplate
    root_pem: str
    backoff: Backoff = field(default_factory=Backoff)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    applied: dict[AppliedKey, str] = field(default_factory=dict)  # digest of each object as last applied
    statuses: dict[ObjectKey, dict] = field(default_factory=dict)  # each Gateway's status as last applied

    def __post_init__(self) -> None:
        self._dirty = trio.Event()
        self.source.on_change(self._poke)

    def _poke(self) -> None:
        self._dirty.set()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Reconcile after each change of the source, until cancelled."""
        task_status.started()
        # A first round at once: the source may have listed before this started.
        attempt: int = 0
        retry_in: float | None = 0.0
        while True:
            with trio.move_on_after(math.inf if retry_in is None else retry_in):
                await self._dirty.wait()
            self._dirty = trio.Event()
            failures = await self.reconcile()
            if failures:
                retry_in = self.backoff.delay(attempt)
                attempt += 1
                log.warning("%d write(s) to the API server failed; trying again in %.1f s", failures, retry_in)
            else:
                attempt, retry_in = 0, None

    async def reconcile(self) -> int:
        """One round; returns how many writes failed."""
        plan = plan_writeback(self.source.gateways(), self.source.service_ips(), self.template, self.root_pem,
                              self.applied, self.statuses, rfc3339(self.clock()))
        for gone in plan.forget:
            self.statuses.pop(gone, None)
            for applied_key in [k for k in self.applied if k[1:] == gone]:
                del self.applied[applied_key]
        failures = 0
        for key, obj, fingerprint in plan.applies:
            try:
                await trio.to_thread.run_sync(self.api.apply, obj)
            except ApiError as exc:
                failures += 1
                log.error("applying %s %s/%s failed: %s", *key, exc)
                continue
            self.applied[key] = fingerprint
            log.info("applied %s %s/%s", *key)
        for gateway, body in plan.statuses:
            try:
                await trio.to_thread.run_sync(partial(self.api.apply, body, subresource="status"))
            except ApiError as exc:
                if exc.status == 404:  # deleted meanwhile: its watch event is on the way
                    continue
                failures += 1
                log.error("updating the status of Gateway %s/%s failed: %s", *gateway, exc)
                continue
            self.statuses[gateway] = body
        return failures


async def run_kubernetes(options: KubeOptions, registry: Registry, root_pem: str, *,
                         task_status=trio.TASK_STATUS_IGNORED) -> None:
    """The API source feeding ``registry`` and the waypoint write-back, until cancelled. Reports
    started once every kind has been listed (or has failed to), so the first view holds the cluster."""
    api = KubeApi(await trio.to_thread.run_sync(connect, options.kubeconfig))
    source = KubeSource(api, registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run)
        if options.waypoints is not None:
            await nursery.start(WaypointWriter(api, source, options.waypoints, root_pem).run)
        log.info("following the Kubernetes API (%s)", options.kubeconfig or "in-cluster")
        task_status.started()
