"""``ambient ztunnel``: the node's L4 proxy (``ambient ztunnel-config`` is ambient/ztunnel_config.py).

The process connects to the control plane with the node's token (discovery, and the CA on behalf of
the workloads on its node), follows the node agent over ZDS, and serves the admin (15000, loopback),
stats (15020) and readiness (15021) ports. SIGTERM, SIGINT or ``POST /quitquitquit`` on the admin
port: drain (DESIGN.md section 7), exit. ``POST /logging`` there changes the log levels live.

At start it raises its soft file descriptor limit to the hard one and keeps the node's connection
bound within what that limit holds (``ztunnel.limits``), and logs the figures.
"""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path

log = logging.getLogger("ambient.ztunnel")


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def register(subparsers: argparse._SubParsersAction) -> None:
    from mesh.identity import DEFAULT_TRUST_DOMAIN
    from ztunnel.admin import ADMIN_PORT, READINESS_PORT, STATS_PORT
    from ztunnel.limits import MAX_CONNECTIONS_PER_NODE, MAX_CONNECTIONS_PER_POD

    zt = subparsers.add_parser(
        "ztunnel", help="the node's L4 proxy: HBONE mTLS tunnels for the pods the node agent captures")
    zt.add_argument("--node", required=True, help="the node this ztunnel serves")
    zt.add_argument("--zds", required=True, type=Path, metavar="SOCKET", help="the node agent's ZDS socket")
    zt.add_argument("--discovery-address", required=True, metavar="HOST:PORT",
                    help="the control plane (discovery and CA)")
    zt.add_argument("--server-name", help="the TLS name to check on the control plane's certificate")
    zt.add_argument("--ca-root", required=True, type=Path, help="the mesh root certificate (PEM)")
    zt.add_argument("--token-file", required=True, type=Path, help="the node's bearer token")
    zt.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    zt.add_argument("--admin-listen", type=_host_port, default=("127.0.0.1", ADMIN_PORT), metavar="HOST:PORT")
    zt.add_argument("--stats-listen", type=_host_port, default=("0.0.0.0", STATS_PORT), metavar="HOST:PORT")
    zt.add_argument("--ready-listen", type=_host_port, default=("0.0.0.0", READINESS_PORT), metavar="HOST:PORT")
    zt.add_argument("--drain-timeout", type=float, default=5.0, help="seconds open connections may finish on SIGTERM")
    zt.add_argument("--max-connections-per-pod", type=_positive_int, default=MAX_CONNECTIONS_PER_POD, metavar="N",
                    help="open connections of one pod, over its three listeners (below the node's)")
    zt.add_argument("--max-connections-per-node", type=_positive_int, default=MAX_CONNECTIONS_PER_NODE, metavar="N",
                    help="open connections of all pods together (lowered to what the fd limit holds)")
    zt.add_argument("--state-dir", type=Path, metavar="DIR",
                    help="keep the last discovery view and each workload's certificate and key here (a directory "
                         "only this user may read, made 0700), so a restart serves while the control plane is "
                         "away; without it, a restarted ztunnel waits for the control plane")
    zt.add_argument("--no-dns-proxy", dest="dns_proxy", action="store_false",
                    help="do not answer the pods' DNS on 15053 (the node agent's redirect must be off too)")
    zt.add_argument("--dns-upstream", type=_host_port, action="append", metavar="HOST:PORT",
                    help="where the DNS proxy forwards names the mesh does not hold, from each pod's netns "
                         "(repeatable, tried in order; default: the nameservers of /etc/resolv.conf, port 53)")
    zt.set_defaults(func=cmd_ztunnel)


def resolv_conf_nameservers(text: str) -> list[tuple[str, int]]:
    """The IPv4 ``nameserver`` lines of a resolv.conf, as (address, 53), in order."""
    import ipaddress

    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                found.append((str(ipaddress.IPv4Address(fields[1])), 53))
            except ValueError:
                continue  # IPv6 or garbage: the mesh's pods are IPv4
    return found


def dns_upstreams(given: list[tuple[str, int]] | None,
                  resolv_conf: Path = Path("/etc/resolv.conf")) -> list[tuple[str, int]]:
    """The DNS proxy's upstreams: those given, else resolv.conf's (ValueError if there are none)."""
    if given:
        return given
    try:
        found = resolv_conf_nameservers(resolv_conf.read_text())
    except OSError as exc:
        raise ValueError(f"no --dns-upstream given and {resolv_conf} cannot be read: {exc.strerror}") from None
    if not found:
        raise ValueError(f"no --dns-upstream given and {resolv_conf} names no IPv4 nameserver")
    return found


class _AdminView:
    def __init__(self, ztunnel, metrics) -> None:
        self._ztunnel = ztunnel
        self._metrics = metrics

    def metrics(self) -> bytes:
        return self._metrics.exposition()

    def config_dump(self) -> dict:
        from ztunnel.dump import config_dump

        return config_dump(self._ztunnel)

    def ready(self) -> tuple[bool, str]:
        return self._ztunnel.ready()


def connection_bounds(per_pod: int, per_node: int, fd_limit: int | None = None) -> tuple[int, int]:
    """The connection bounds to run with, per pod and per node: those asked for (ValueError if the
    pod's is not below the node's), the node's lowered to what ``fd_limit`` (by default: the soft
    limit after raising it to the hard one) holds, and the pod's kept below it."""
    from ztunnel.limits import check_limits, node_connection_cap, pod_connection_cap, raise_fd_limit

    check_limits(max_connections_per_pod=per_pod, max_connections_per_node=per_node)
    if fd_limit is None:
        fd_limit = raise_fd_limit()
    node_cap = node_connection_cap(fd_limit, per_node)
    pod_cap = per_pod if per_pod < node_cap else pod_connection_cap(node_cap, per_pod)
    if (pod_cap, node_cap) != (per_pod, per_node):
        log.warning("a file descriptor limit of %d holds %d connections, not %d: at most %d per pod",
                    fd_limit, node_cap, per_node, pod_cap)
    log.info("connection bounds: %d per pod, %d per node", pod_cap, node_cap)
    return pod_cap, node_cap


def cmd_ztunnel(args: argparse.Namespace) -> int:
    import trio

    from ca.cert_store import CertificateStore
    from ca.client import CaClient
    from ca.secrets import SecretManager
    from mesh.api.types import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL
    from mesh.certs import CertificateError
    from mesh.concurrency import wait_for_stop
    from mesh.errors import UsageError
    from mesh.token_file import token_file
    from mesh.xds.client import ClientConfig, DiscoveryClient
    from ztunnel.admin import ZtunnelAdmin
    from ztunnel.metrics import ZtunnelMetrics
    from ztunnel.pods import PodSet
    from ztunnel.proxy import Ztunnel, ZtunnelConfig

    if args.dns_proxy:
        from ztunnel.dns_proxy import DnsProxy
    try:
        root_pem = args.ca_root.read_bytes()
        token = token_file(args.token_file)  # read again for every call: Kubernetes rotates projected tokens
        token()  # readable now, or a usage error now
        discovery = DiscoveryClient(ClientConfig(
            target=args.discovery_address, root_pem=root_pem, token=token, server_name=args.server_name,
            subscriptions={ADDRESS_TYPE_URL: None, AUTHORIZATION_TYPE_URL: None}, node_id=f"ztunnel~{args.node}",
            cache_dir=args.state_dir / "discovery" if args.state_dir else None))
        ca = CaClient(args.discovery_address, root_pem, token, server_name=args.server_name)
        store = CertificateStore(args.state_dir / "certificates", root_pem) if args.state_dir else None
        per_pod, per_node = connection_bounds(args.max_connections_per_pod, args.max_connections_per_node)
        dns = DnsProxy(dns_upstreams(args.dns_upstream)) if args.dns_proxy else None
        config = ZtunnelConfig(node=args.node, trust_domain=args.trust_domain, drain_timeout=args.drain_timeout,
                               max_connections_per_pod=per_pod, max_connections_per_node=per_node)
    except (OSError, ValueError, CertificateError) as exc:
        raise UsageError(str(exc)) from None
    metrics = ZtunnelMetrics()
    pods = PodSet(str(args.zds), dns=dns is not None)
    metrics.follow(discovery=discovery, pods=pods, dns=dns.counts if dns else None)
    ztunnel = Ztunnel(config, discovery, SecretManager(ca.fetch, store=store), pods, metrics, dns=dns)
    if dns is not None:
        log.info("DNS proxy on 15053 in each pod, forwarding to %s",
                 ", ".join(f"{host}:{port}" for host, port in dns.upstreams))
    admin = ZtunnelAdmin(_AdminView(ztunnel, metrics))

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                ports = await nursery.start(admin.run, args.admin_listen, args.stats_listen, args.ready_listen)
                await nursery.start(ztunnel.run)
                print(f"ztunnel of {args.node} running (admin {ports['admin']}, stats {ports['stats']}, "
                      f"readiness {ports['readiness']}), following the node agent at {args.zds}", flush=True)
                log.info("%s: draining", await wait_for_stop(signals, admin.quit_requested))
                await ztunnel.drain()
                nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        ca.close()
    log.info("ztunnel of %s stopped", args.node)
    return 0
