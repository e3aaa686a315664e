"""A captured pod's DNS goes to ztunnel's DNS proxy: an nftables redirect in the pod's netns.

Istio ≥ 1.25 captures an ambient pod's DNS by default: istio-cni redirects TCP and UDP to port 53 to
ztunnel's proxy on 15053 inside the pod's netns, and a pod opts out with the annotation
``ambient.istio.io/dns-capture: "false"``. The eBPF capture (``bpf.capture``) steers TCP connections
only, and a UDP reply must come from the address the pod asked, so DNS takes Istio's way: a NAT
redirect whose conntrack entry gives each reply the nameserver's address and port back. The rules,
one table of our own in the pod's netns, replaced whole by one ``nft -f -``:

    table ip ambient_dns {
        chain output {
            type nat hook output priority -100; policy accept;
            meta mark 0x539 return          ztunnel's own sockets: its forwarded queries go out
            ip daddr 127.0.0.0/8 return     a resolver on the pod's own loopback is the pod's business
            udp dport 53 redirect to :15053
            tcp dport 53 redirect to :15053
        }
    }

Both functions are idempotent (the table is created before it is deleted), so a restarted agent can
apply or undo them again. ``nft`` runs inside the pod's netns (``mesh.nft``), so the host's own
ruleset is never touched; a failure is ``mesh.nft.NftError``, an OSError.
"""

from __future__ import annotations

import os

from bpf.capture import PROXY_MARK
from mesh.nft import run_nft
from mesh.ports import DNS_PROXY_PORT

TABLE = "ambient_dns"
DNS_PORT = 53
NAT_OUTPUT_PRIORITY = -100  # nftables' dstnat priority, as a number (older nft takes no names in output)


def redirect_ruleset(port: int = DNS_PROXY_PORT) -> str:
    """Pure: the script that (re)creates the pod's redirect table."""
    return (f"table ip {TABLE}\ndelete table ip {TABLE}\n"
            f"table ip {TABLE} {{\n\tchain output {{\n"
            f"\t\ttype nat hook output priority {NAT_OUTPUT_PRIORITY}; policy accept;\n"
            f"\t\tmeta mark {PROXY_MARK:#x} return\n"
            f"\t\tip daddr 127.0.0.0/8 return\n"
            f"\t\tudp dport {DNS_PORT} redirect to :{port}\n"
            f"\t\ttcp dport {DNS_PORT} redirect to :{port}\n"
            f"\t}}\n}}\n")


def removal_ruleset() -> str:
    """Pure: the script that removes the table, present or not."""
    return f"table ip {TABLE}\ndelete table ip {TABLE}\n"


def _run(netns_path: str, script: str) -> None:
    fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        run_nft(fd, script, netns_path)
    finally:
        os.close(fd)


def install_dns_redirect(netns_path: str, port: int = DNS_PROXY_PORT) -> None:
    _run(netns_path, redirect_ruleset(port))


def remove_dns_redirect(netns_path: str) -> None:
    _run(netns_path, removal_ruleset())
