"""``ambient controlplane``: the registry, the computed view, discovery and the CA in one process.

One TLS port (default 15012) serves both gRPC services, as istiod does: the CA
(``IstioCertificateService``) and discovery (``DeltaAggregatedResources``). The CA's node
impersonation check asks the current view whether the identity has a pod on the caller's node.

How a change flows: a source (YAML directory, ``pods.json``, or the in-process registry API) changes
the registry → ``ControlPlane`` waits until changes have been quiet for ``DEBOUNCE_QUIET`` (or
``DEBOUNCE_MAX`` has passed since the first one, so a steady stream of edits cannot starve it) →
computes the view in a worker thread → publishes the snapshot → every discovery stream sends its
client what changed.

State directory layout: ``<state>/ca/`` (the CA: created with a self-signed root on first start if
absent; tokens are made with ``ambient ca token create --dir <state>/ca``), ``<state>/pods.json``
(the pods' runtime status, written by the lab).

On Kubernetes, ``--kubernetes`` adds the API server as a source (``controlplane.kube_source``: list+watch
of every kind the view reads, pods' IPs, nodes and readiness) and writes the waypoints back
(``controlplane.kube_writeback``: each istio-waypoint Gateway's Deployment, Service and ServiceAccount,
and its status). The client is configured from ``--kubeconfig FILE``, else in-cluster from the pod's
service account (/var/run/secrets/kubernetes.io/serviceaccount). ``--config DIR`` is then optional;
both may be given, and a resource both declare is taken from the directory. ``--waypoint-image`` and
``--waypoint-discovery-address`` say what the waypoint Deployments run and where they find this
control plane.
"""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import trio
from prometheus_client import CollectorRegistry, Gauge, Histogram

from ca import store
from ca.authority import IssuancePolicy
from ca.kube_auth import DEFAULT_AUDIENCES, DEFAULT_NODE_SERVICE_ACCOUNTS, KubeAuthConfig
from ca.server import DEFAULT_PORT, DEFAULT_SERVER_NAMES, CaMetrics, CaServer, ServeConfig, start_metrics_server
from ca.service import CertificateService
from ca.tokens import TOKEN_FILE, TokenStore
from controlplane.kube_waypoints import KubeOptions, WaypointTemplate
from controlplane.registry import DEFAULT_SERVICE_CIDR, POD_STATUS_FILE, ConfigDirectory, PodStatusFile, Registry
from controlplane.view import DataplaneView, MeshConfig, compute_view
from controlplane.xds.server import discovery_handler
from controlplane.xds.snapshot import Publisher, VersionedResource
from mesh.identity import DEFAULT_TRUST_DOMAIN, SpiffeId

log = logging.getLogger("ambient.controlplane")

DEBOUNCE_QUIET = 0.1  # seconds without a change before the view is recomputed
DEBOUNCE_MAX = 1.0  # ... but no longer than this after the first change
SCAN_INTERVAL = 0.25  # how often the YAML directory and pods.json are checked
CA_SUBDIR = "ca"


class ControlPlaneMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.compute_seconds = Histogram(
            "ambient_view_compute_seconds", "Time to compute the dataplane view and its snapshot", registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.resources = Gauge("ambient_view_resources", "Resources in the published view, by kind", ["kind"],
                               registry=registry)


def snapshot_resources(view: DataplaneView) -> dict[str, dict[str, VersionedResource]]:
    return {type_url: {name: VersionedResource.of(name, body) for name, body in items.items()}
            for type_url, items in view.resources().items()}


class ControlPlane:
    """Registry → view → published snapshot. Also the CA's ``PodPlacement`` (``has_pod``)."""

    def __init__(self, registry: Registry, config: MeshConfig = MeshConfig(),
                 metrics: ControlPlaneMetrics | None = None, offload=trio.to_thread.run_sync) -> None:
        """``offload(fn)`` runs a recompute off the event loop (a worker thread); tests that use a
        virtual clock pass one that runs it inline, so that no virtual time passes during it."""
        self.registry = registry
        self._offload = offload
        self.config = config
        self.publisher = Publisher()
        self.view: DataplaneView | None = None
        self._metrics = metrics
        self._dirty = trio.Event()  # set (from any thread, via the token) when the registry changed
        self._trio_token: trio.lowlevel.TrioToken | None = None
        registry.on_change(self._on_registry_change)

    def has_pod(self, node: str, identity: SpiffeId) -> bool:
        view = self.view  # one read: the view object is replaced whole, never mutated
        return view is not None and view.has_pod(node, identity)

    def rebuild(self) -> DataplaneView:
        """Compute and publish the view now (synchronously)."""
        started = time.perf_counter()
        view = compute_view(self.registry.state(), self.config)
        resources = snapshot_resources(view)
        self.view = view
        snapshot = self.publisher.publish(resources)
        # The view is long-lived and mostly acyclic: move it out of the collector's sight, so that
        # the next computation's allocations do not make it rescan ~10^5 objects again and again.
        gc.freeze()
        elapsed = time.perf_counter() - started
        if self._metrics:
            self._metrics.compute_seconds.observe(elapsed)
            for kind, count in (("workload", len(view.workloads)), ("service", len(view.services)),
                                ("authorization", len(view.authorizations)), ("waypoint", len(view.waypoints))):
                self._metrics.resources.labels(kind).set(count)
        log.info("view %d: %d workloads, %d services, %d authorizations, %d waypoints (%.0f ms)",
                 snapshot.version, len(view.workloads), len(view.services), len(view.authorizations),
                 len(view.waypoints), elapsed * 1000)
        return view

    def _on_registry_change(self) -> None:
        # Any thread may change the registry (the trio loop's file scans, a lab in another thread).
        # run_sync_soon is safe from all of them, and _mark_dirty reads self._dirty when it runs,
        # so a change never lands on an Event the debounce loop has already replaced.
        token = self._trio_token
        if token is not None:
            try:
                token.run_sync_soon(self._mark_dirty)
            except trio.RunFinishedError:
                pass

    def _mark_dirty(self) -> None:
        self._dirty.set()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Recompute and publish after each (debounced) burst of registry changes, until cancelled.
        Reports started once the first view is published."""
        self._trio_token = trio.lowlevel.current_trio_token()
        await self._offload(self.rebuild)
        task_status.started()
        while True:
            await self._dirty.wait()
            first = trio.current_time()
            while True:
                self._dirty = trio.Event()
                with trio.move_on_at(min(trio.current_time() + DEBOUNCE_QUIET, first + DEBOUNCE_MAX)):
                    await self._dirty.wait()
                if not self._dirty.is_set() or trio.current_time() >= first + DEBOUNCE_MAX:
                    break
            self._dirty = trio.Event()
            try:
                await self._offload(self.rebuild)
            except Exception:  # a bug in the translation must not take discovery down
                log.exception("computing the view failed; clients keep the previous one")


async def watch_sources(sources, interval: float = SCAN_INTERVAL) -> None:
    """Poll each source's ``scan()`` (a stat per file when nothing changed). In a worker thread:
    parsing a large file takes up to a second or two, which must not stall discovery and the CA
    (the registry's change listener is thread-safe)."""
    while True:
        for source in sources:
            try:
                await trio.to_thread.run_sync(source.scan)
            except Exception:
                log.exception("reading %s failed; keeping what was loaded before", getattr(source, "root", source))
        await trio.sleep(interval)


@dataclass(frozen=True)
class ControlPlaneConfig:
    config_dir: Path | None  # None: the Kubernetes API is the only source
    state_dir: Path
    serve: ServeConfig
    mesh: MeshConfig
    service_cidr: str = DEFAULT_SERVICE_CIDR
    metrics_listen: str | None = None
    kubernetes: KubeOptions | None = None  # --kubernetes
    # With --kubernetes: service-account tokens are accepted too, reviewed by the API (TokenReview).
    kube_auth: KubeAuthConfig | None = None

    def __post_init__(self) -> None:
        if self.config_dir is None and self.kubernetes is None:
            raise ValueError("no source: give a configuration directory, the Kubernetes API, or both")


def _open_ca(ca_dir: Path, trust_domain: str):
    if not (ca_dir / store.CONFIG).exists():
        ca_dir.mkdir(parents=True, exist_ok=True)
        authority = store.init_self_signed(ca_dir, trust_domain)
        log.info("created a self-signed root CA for %s in %s", trust_domain, ca_dir)
        return authority
    authority = store.load(ca_dir)
    if authority.trust_domain != trust_domain:
        raise store.CaStoreError(f"{ca_dir}: the CA is for trust domain {authority.trust_domain}, not {trust_domain}")
    return authority


async def serve(config: ControlPlaneConfig, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    ca_dir = config.state_dir / CA_SUBDIR
    authority = _open_ca(ca_dir, config.mesh.trust_domain)
    tokens = TokenStore(ca_dir / TOKEN_FILE)
    registry = Registry(config.service_cidr)
    prometheus = CollectorRegistry()
    control = ControlPlane(registry, config.mesh, ControlPlaneMetrics(prometheus))
    sources: list[ConfigDirectory | PodStatusFile] = [
        *([ConfigDirectory(config.config_dir, registry)] if config.config_dir is not None else []),
        PodStatusFile(config.state_dir / POD_STATUS_FILE, registry)]
    for source in sources:  # the first view already has everything that is on disk
        source.scan()
    kube_auth = None
    if config.kube_auth is not None and config.kubernetes is not None:
        from ca.kube_auth import KubeTokenAuthenticator, TokenReviewClient
        from controlplane.kube_client import connect  # the kubernetes client, only when used

        api_client = await trio.to_thread.run_sync(connect, config.kubernetes.kubeconfig)
        # No pod → node lookup: the node a ztunnel may impersonate for comes from its token's bound
        # pod (the TokenReview's node-name, Kubernetes 1.30 and later; older clusters: no impersonation).
        kube_auth = KubeTokenAuthenticator(config.kube_auth, TokenReviewClient(api_client))
    service = CertificateService(authority, tokens, control, IssuancePolicy(), kube=kube_auth)
    # Discovery takes the same callers as the CA: project tokens, and with --kubernetes reviewed
    # service-account tokens (a waypoint's, a ztunnel's).
    server = CaServer(service, config.serve, CaMetrics(prometheus),
                      extra_handlers=(discovery_handler(control.publisher, service.authenticate_token,
                                                        registry=prometheus),))
    async with trio.open_nursery() as nursery:
        if config.kubernetes is not None:  # before the first view, which then holds the cluster
            from controlplane.kube_writeback import run_kubernetes  # the kubernetes client, only when used

            await nursery.start(run_kubernetes, config.kubernetes, registry, authority.root_pem)
        await nursery.start(control.run)
        port = server.start()
        try:
            metrics_url = None
            if config.metrics_listen:
                metrics_server = start_metrics_server(config.metrics_listen, prometheus)
                metrics_url = f"http://{config.metrics_listen.rpartition(':')[0]}:{metrics_server.server_port}/metrics"
            nursery.start_soon(watch_sources, sources)
            task_status.started((port, metrics_url))
            await trio.sleep_forever()
        finally:
            control.publisher.close()  # ends every discovery stream now
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(server.stop, 5.0)


def register(subparsers: argparse._SubParsersAction) -> None:
    cp = subparsers.add_parser("controlplane", help="the CA and discovery, serving a directory of YAML "
                                                    "and/or the Kubernetes API")
    cp.add_argument("--config", type=Path, metavar="DIR",
                    help="directory of Kubernetes-format YAML (optional with --kubernetes)")
    cp.add_argument("--kubernetes", action="store_true",
                    help="follow the Kubernetes API (pods, services, policies, ...) and deploy the waypoints")
    cp.add_argument("--kubeconfig", type=Path, metavar="FILE",
                    help="with --kubernetes: the API from this kubeconfig (default: in-cluster service account)")
    cp.add_argument("--waypoint-image", default=WaypointTemplate.image, metavar="IMAGE",
                    help="with --kubernetes: the image of the waypoint Deployments (default %(default)s)")
    cp.add_argument("--waypoint-discovery-address", default=WaypointTemplate.discovery_address,
                    metavar="HOST:PORT", help="with --kubernetes: where the waypoints reach this control plane "
                                              "(default %(default)s; its host is the TLS name they check)")
    cp.add_argument("--token-audience", action="append", metavar="AUDIENCE",
                    help="with --kubernetes: an audience a service-account token must carry (repeatable; "
                         f"default {', '.join(DEFAULT_AUDIENCES)})")
    cp.add_argument("--node-service-account", action="append", metavar="NAMESPACE/NAME",
                    help="with --kubernetes: a service account that may ask for its node's pods' certificates, "
                         f"as ztunnel does (repeatable; default {', '.join(sorted(DEFAULT_NODE_SERVICE_ACCOUNTS))})")
    cp.add_argument("--state", type=Path, required=True, metavar="DIR",
                    help=f"state: {CA_SUBDIR}/ (created if absent) and {POD_STATUS_FILE} (pod status from the lab)")
    cp.add_argument("--listen", default=f"127.0.0.1:{DEFAULT_PORT}", metavar="HOST:PORT")
    cp.add_argument("--server-name", action="append", metavar="NAME",
                    help=f"name for the server certificate (repeatable; default {', '.join(DEFAULT_SERVER_NAMES)})")
    cp.add_argument("--metrics-listen", default="127.0.0.1:15014", metavar="HOST:PORT", help="'off' to disable")
    cp.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    cp.add_argument("--cluster-id", default="Kubernetes")
    cp.add_argument("--service-cidr", default=DEFAULT_SERVICE_CIDR)
    cp.set_defaults(func=cmd_controlplane)


def cmd_controlplane(args: argparse.Namespace) -> int:
    from mesh.errors import UsageError

    for flag, value in (("--kubeconfig", args.kubeconfig), ("--token-audience", args.token_audience),
                        ("--node-service-account", args.node_service_account)):
        if value is not None and not args.kubernetes:
            raise UsageError(f"{flag} needs --kubernetes")
    if args.config is None and not args.kubernetes:
        raise UsageError("give --config DIR, --kubernetes, or both")
    if args.kubeconfig is not None and not args.kubeconfig.is_file():
        raise UsageError(f"--kubeconfig {args.kubeconfig}: not a file")
    try:
        kubernetes = None
        if args.kubernetes:
            address = args.waypoint_discovery_address
            kubernetes = KubeOptions(args.kubeconfig, WaypointTemplate(
                image=args.waypoint_image, discovery_address=address, server_name=address.rpartition(":")[0],
                trust_domain=args.trust_domain))
        kube_auth = None
        if args.kubernetes:
            kube_auth = KubeAuthConfig(
                args.trust_domain, audiences=tuple(args.token_audience or DEFAULT_AUDIENCES),
                node_service_accounts=frozenset(args.node_service_account or DEFAULT_NODE_SERVICE_ACCOUNTS))
        config = ControlPlaneConfig(
            config_dir=args.config, state_dir=args.state, kubernetes=kubernetes, kube_auth=kube_auth,
            serve=ServeConfig(listen=args.listen, server_names=tuple(args.server_name or DEFAULT_SERVER_NAMES),
                              workers=256),
            mesh=MeshConfig(cluster_id=args.cluster_id, trust_domain=args.trust_domain),
            service_cidr=args.service_cidr,
            metrics_listen=None if args.metrics_listen == "off" else args.metrics_listen,
        )
        Registry(args.service_cidr)  # validates the CIDR
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.config is not None and not args.config.is_dir():
        raise UsageError(f"--config {args.config}: not a directory")

    async def main() -> None:
        # Signals are caught from before the readiness line: a SIGTERM right after it is a clean stop.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                port, metrics_url = await nursery.start(serve, config)
                if metrics_url:
                    print(f"metrics on {metrics_url}", flush=True)
                host = config.serve.listen.rpartition(":")[0]
                # The readiness line scripts wait for: printed once the port is bound and the first view published.
                print(f"serving IstioCertificateService and discovery on {host}:{port} "
                      f"(trust domain {config.mesh.trust_domain})", flush=True)
                async for _ in signals:
                    log.info("shutting down")
                    nursery.cancel_scope.cancel()
                    break

    trio.run(main)
    return 0
