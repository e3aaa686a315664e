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
    agent.add_argument("--lab", required=True, metavar="NAME",
                       help="the lab whose pods these are (it names their network namespaces)")
    agent.set_defaults(func=cmd_node_agent)


def cmd_node_agent(args: argparse.Namespace) -> int:
    import trio

    from bpf.agent import NodeAgent
    from mesh.api.types import ADDRESS_TYPE_URL
    from mesh.errors import UsageError
    from mesh.netns import pod_netns_name, validate_lab_name
    from mesh.xds.client import ClientConfig, DiscoveryClient

    try:
        validate_lab_name(args.lab)
        root_pem = args.ca_root.read_bytes()
        token = args.token_file.read_text().strip()
        config = ClientConfig(target=args.discovery_address, root_pem=root_pem, token=token,
                              subscriptions={ADDRESS_TYPE_URL: None}, server_name=args.server_name,
                              node_id=f"node-agent~{args.node}")
    except (OSError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    agent = NodeAgent(args.node, args.state_dir, functools.partial(pod_netns_name, args.lab),
                      DiscoveryClient(config))

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(agent.run)
                print(f"node agent of {args.node} serving ZDS on {agent.zds.socket_path}", flush=True)
                async for signum in signals:
                    log.info("%s: exiting; enrolled pods stay captured (pinned in %s)",
                             signal.Signals(signum).name, agent.bpffs)
                    nursery.cancel_scope.cancel()
                    break

    trio.run(main)
    return 0
