"""Running ``nft -f -`` inside a network namespace: the lab's kube-proxy (each node's table) and the
node agent's DNS redirect (each captured pod's table) load their rulesets this way.

The child enters the netns (``setns`` on an fd the caller opened and checked) between fork and exec,
so the caller's own namespace, and the host's ruleset, are never touched, and the netns that runs the
script is the one the caller checked (no second lookup by name).
"""

from __future__ import annotations

import subprocess
from functools import partial

from mesh.netns import enter_netns

NFT = "nft"
NFT_TIMEOUT = 10.0  # seconds for one `nft -f`: our rulesets load in milliseconds


class NftError(OSError):
    """nft refused the script (its message says why): an OSError, as other failures to set up a
    namespace's networking are."""


def run_nft(netns_fd: int, script: str, where: str) -> None:
    """Load ``script`` with ``nft -f -`` in the netns open as ``netns_fd`` (``where`` names it in an
    error). ``NftError`` if nft exits non-zero; OSError if it cannot run; TimeoutExpired after
    ``NFT_TIMEOUT``."""
    result = subprocess.run([NFT, "-f", "-"], input=script, text=True, capture_output=True,
                            timeout=NFT_TIMEOUT, preexec_fn=partial(enter_netns, netns_fd))
    if result.returncode != 0:
        raise NftError(f"nft -f in {where} exited {result.returncode}: {result.stderr.strip()}")
