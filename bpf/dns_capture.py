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
apply or undo them again. ``nft`` runs with the calling process in the pod's netns (``setns`` in the
child before exec), so the host's own ruleset is never touched.
"""

from __future__ import annotations

import os
import subprocess
from functools import partial

from bpf.capture import PROXY_MARK
from mesh.netns import enter_netns
from mesh.ports import DNS_PROXY_PORT

NFT = "nft"
NFT_TIMEOUT = 10.0  # seconds for one `nft -f`: it loads these few lines in milliseconds
TABLE = "ambient_dns"
DNS_PORT = 53
NAT_OUTPUT_PRIORITY = -100  # nftables' dstnat priority, as a number (older nft takes no names in output)


class NftError(OSError):
    """nft refused the script (its message), or could not run: an OSError, as the agent treats every
    failure to set up a pod's capture."""


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


def run_nft(netns_path: str, script: str) -> None:
    """``nft -f -`` with ``script``, in the netns at ``netns_path`` (a /run/netns file or
    /proc/<pid>/ns/net). ``NftError`` with nft's message if it fails."""
    fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        result = subprocess.run([NFT, "-f", "-"], input=script, text=True, capture_output=True,
                                timeout=NFT_TIMEOUT, preexec_fn=partial(enter_netns, fd))
    finally:
        os.close(fd)
    if result.returncode != 0:
        raise NftError(f"nft -f in {netns_path} exited {result.returncode}: {result.stderr.strip()}")


def install_dns_redirect(netns_path: str, port: int = DNS_PROXY_PORT) -> None:
    run_nft(netns_path, redirect_ruleset(port))


def remove_dns_redirect(netns_path: str) -> None:
    run_nft(netns_path, removal_ruleset())
