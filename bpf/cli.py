"""``ambient node-agent``: the command line of bpf.agent."""

from __future__ import annotations

import argparse
import functools
import logging
import signal
from pathlib import Path

log = logging.getLogger("ambient.nodeagent")


def register(subparsers: argparse._SubParsersAction) -> None:
    agent = subparsers.add_parser(
        "node-agent", help="enroll this node's ambient pods into eBPF capture and hand them to ztunnel (ZDS)")
    agent.add_argument("--node", required=True, help="the node's name, as in the pods' spec.nodeName")
    agent.add_argument("--state-dir", type=Path, required=True, metavar="DIR",
                       help="the node's state: bpf/ (a bpffs, mounted if needed), zds.sock, status.json")
    agent.add_argument("--discovery-address", required=True, metavar="HOST:PORT", help="the control plane")
    agent.add_argument("--server-name", help="the control plane's TLS name, if not HOST")
    agent.add_argument("--ca-root", type=Path, required=True, metavar="PEM", help="the mesh root certificate")
    agent.add_argument("--token-file", type=Path, required=True, metavar="FILE",
                       help="the node's token (ambient ca token create --node NAME)")
    where = agent.add_mutually_exclusive_group(required=True)
    where.add_argument("--lab", metavar="NAME",
                       help="the lab whose pods these are (it names their network namespaces)")
    where.add_argument("--kubernetes", action="store_true",
                       help="a Kubernetes node: pods' netns from the ambient-cni plugin (CNI ADD) and the host's "
                            "/proc (pods already running); needs the host's PID namespace and /proc")
    agent.add_argument("--cni-socket", type=Path, default=None, metavar="PATH",
                       help="with --kubernetes: the socket the ambient-cni plugin calls "
                            "(default: /var/run/ambient/cni.sock; `ambient cni install --agent-socket`)")
    agent.add_argument("--proc-root", type=Path, default=None, metavar="DIR",
                       help="with --kubernetes: the host's /proc, where existing pods' netns are found "
                            "(default: /proc, with the host's PID namespace; e.g. /host/proc when mounted)")
    agent.add_argument("--kubeconfig", type=Path, default=None, metavar="FILE",
                       help="with --kubernetes: the API server's credentials (default: the pod's service account)")
    agent.add_argument("--no-dns-capture", dest="dns_capture", action="store_false",
                       help="leave captured pods' DNS alone (by default port 53 goes to ztunnel's DNS proxy on "
                            "15053, as Istio's cni.ambient.dnsCapture)")
    agent.set_defaults(func=cmd_node_agent)


def cmd_node_agent(args: argparse.Namespace) -> int:
    import trio

    from bpf.agent import NodeAgent
    from mesh.api.types import ADDRESS_TYPE_URL
    from mesh.certs import CertificateError
    from mesh.errors import UsageError
    from mesh.netns import pod_netns_name, validate_lab_name
    from mesh.token_file import token_file
    from mesh.xds.client import ClientConfig, DiscoveryClient

    if not args.kubernetes and (args.cni_socket, args.kubeconfig, args.proc_root) != (None, None, None):
        raise UsageError("--cni-socket, --proc-root and --kubeconfig go with --kubernetes")
    try:
        if args.lab is not None:
            validate_lab_name(args.lab)
        root_pem = args.ca_root.read_bytes()
        token = token_file(args.token_file)  # read again for every stream: Kubernetes rotates projected tokens
        token()  # readable now, or a usage error now
        config = ClientConfig(target=args.discovery_address, root_pem=root_pem, token=token,
                              subscriptions={ADDRESS_TYPE_URL: None}, server_name=args.server_name,
                              node_id=f"node-agent~{args.node}")
    except (OSError, ValueError, CertificateError) as exc:
        raise UsageError(str(exc)) from None
    if args.kubernetes:
        agent = _kubernetes_agent(args, DiscoveryClient(config))
    else:
        agent = NodeAgent(args.node, args.state_dir, functools.partial(pod_netns_name, args.lab),
                          DiscoveryClient(config), dns_capture=args.dns_capture)

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(agent.run)
                print(f"node agent of {args.node} serving ZDS on {agent.zds.socket_path}"
                      + (f", CNI on {agent.cni.socket_path}" if agent.cni is not None else ""), flush=True)
                async for signum in signals:
                    log.info("%s: exiting; enrolled pods stay captured (pinned in %s)",
                             signal.Signals(signum).name, agent.bpffs)
                    nursery.cancel_scope.cancel()
                    break

    trio.run(main)
    return 0


def _kubernetes_agent(args: argparse.Namespace, client):  # -> NodeAgent (imported lazily, as above)
    """A node agent whose pods' netns come from CNI events and /proc, with pod labels from the API."""
    from bpf.agent import NodeAgent, pin_name
    from bpf.cni_agent import KubernetesPods
    from bpf.cni_pods import KubernetesPodLookup, PodLookupError
    from bpf.cni_server import DEFAULT_SOCKET
    from mesh.errors import UsageError

    try:
        lookup = KubernetesPodLookup(args.kubeconfig)
    except PodLookupError as exc:
        raise UsageError(str(exc)) from None
    proc = args.proc_root or Path("/proc")
    if not (proc / "1" / "ns").is_dir():
        raise UsageError(f"--proc-root {proc}: not a proc filesystem (no {proc}/1/ns)")
    pods = KubernetesPods(lookup, args.cni_socket or DEFAULT_SOCKET, proc)

    def netns_of(namespace: str, name: str) -> str | None:
        return pods.netns_of(pin_name(namespace, name))

    return NodeAgent(args.node, args.state_dir, netns_of, client, kubernetes=pods, dns_capture=args.dns_capture)
