"""``ambient waypoint run``: the waypoint proxy of one istio-waypoint Gateway (the rest of ``ambient
waypoint`` is the lab's: apply, list, delete, status).

The process runs in the waypoint pod's netns. It reaches the control plane with a workload token for
its own identity (discovery, and the CA for its certificate), serves HBONE on 15008, and the admin
(127.0.0.1:15000), stats (15020) and readiness (15021) ports. SIGTERM, SIGINT or ``POST
/quitquitquit``: drain, exit.
"""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path

log = logging.getLogger("ambient.waypoint")


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _gateway(text: str) -> tuple[str, str]:
    namespace, sep, name = text.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAMESPACE/NAME")
    return namespace, name


def register_run(subparsers: argparse._SubParsersAction) -> None:
    """Add ``run`` to the ``ambient waypoint`` command group (``lab`` owns the group)."""
    from mesh.http_admin import ADMIN_PORT, READINESS_PORT, STATS_PORT
    from mesh.identity import DEFAULT_TRUST_DOMAIN
    from mesh.ports import HBONE_PORT

    run = subparsers.add_parser("run", help="the waypoint proxy of one istio-waypoint Gateway (the lab starts it)")
    run.add_argument("--gateway", required=True, type=_gateway, metavar="NAMESPACE/NAME",
                     help="the Gateway (class istio-waypoint) this proxy is the waypoint of")
    run.add_argument("--discovery-address", required=True, metavar="HOST:PORT",
                     help="the control plane (discovery and CA)")
    run.add_argument("--server-name", help="the TLS name to check on the control plane's certificate")
    run.add_argument("--ca-root", required=True, type=argparse.FileType("rb"), help="the mesh root certificate (PEM)")
    run.add_argument("--token-file", required=True, type=Path,
                     help="a workload token for the waypoint's identity (a project token, or a Kubernetes "
                          "service-account token with audience istio-ca; read again for every call)")
    run.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    run.add_argument("--listen", type=_host_port, default=("0.0.0.0", HBONE_PORT), metavar="HOST:PORT",
                     help="the HBONE listener")
    run.add_argument("--admin-listen", type=_host_port, default=("127.0.0.1", ADMIN_PORT), metavar="HOST:PORT")
    run.add_argument("--stats-listen", type=_host_port, default=("0.0.0.0", STATS_PORT), metavar="HOST:PORT")
    run.add_argument("--ready-listen", type=_host_port, default=("0.0.0.0", READINESS_PORT), metavar="HOST:PORT")
    run.add_argument("--drain-timeout", type=float, default=5.0, help="seconds open requests may finish on SIGTERM")
    run.add_argument("--state-dir", metavar="DIR",
                     help="keep the last discovery view here (0700), so a restart serves while the control "
                          "plane is away")
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    import trio

    from ca.client import CaClient
    from ca.secrets import SecretManager
    from mesh.api.types import ADDRESS_TYPE_URL, L7_POLICY_TYPE_URL, ROUTE_TYPE_URL, WASM_PLUGIN_TYPE_URL
    from mesh.certs import CertificateError
    from mesh.errors import UsageError
    from mesh.token_file import token_file
    from mesh.xds.client import ClientConfig, DiscoveryClient
    from waypoint.access_log import AccessLog
    from waypoint.admin import WaypointAdmin, WaypointAdminView
    from waypoint.metrics import WaypointMetrics
    from waypoint.proxy import Waypoint, WaypointConfig

    namespace, name = args.gateway
    try:
        with args.ca_root as f:
            root_pem = f.read()
        token = token_file(args.token_file)
        token()  # readable now, or a usage error now
        config = WaypointConfig(namespace, name, args.trust_domain, listen=args.listen,
                                drain_timeout=args.drain_timeout)
        discovery = DiscoveryClient(ClientConfig(
            target=args.discovery_address, root_pem=root_pem, token=token, server_name=args.server_name,
            subscriptions={ADDRESS_TYPE_URL: None, L7_POLICY_TYPE_URL: None, ROUTE_TYPE_URL: None,
                           WASM_PLUGIN_TYPE_URL: None},
            node_id=f"waypoint~{namespace}/{name}",
            cache_dir=Path(args.state_dir) / "discovery" if args.state_dir else None))
        ca = CaClient(args.discovery_address, root_pem, token, server_name=args.server_name)
    except (OSError, ValueError, CertificateError) as exc:
        raise UsageError(str(exc)) from None
    metrics = WaypointMetrics()
    access_log = AccessLog()  # to stderr, as the logging handler ambient's main sets up writes
    waypoint = Waypoint(config, discovery, SecretManager(ca.fetch), (metrics, access_log))
    metrics.follow(waypoint)
    admin = WaypointAdmin(WaypointAdminView(waypoint, metrics, lambda: waypoint.synced))

    async def serve() -> None:
        from mesh.concurrency import wait_for_stop

        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                # The access log's flusher, for the waypoint's lifetime: cancelled with it after the
                # drain, it writes what waits as it ends.
                await nursery.start(access_log.run)
                ports = await nursery.start(admin.run, args.admin_listen, args.stats_listen, args.ready_listen)
                address = await nursery.start(waypoint.run)
                print(f"waypoint {config.gateway} running: HBONE {address[0]}:{address[1]}, admin {ports['admin']}, "
                      f"stats {ports['stats']}, readiness {ports['readiness']}", flush=True)

                log.info("%s: draining", await wait_for_stop(signals, admin.quit_requested))
                await waypoint.drain()
                nursery.cancel_scope.cancel()

    try:
        trio.run(serve)
    finally:
        access_log.flush()  # records handed over while the waypoint's tasks were being cancelled
        ca.close()
    log.info("waypoint %s stopped", config.gateway)
    return 0
