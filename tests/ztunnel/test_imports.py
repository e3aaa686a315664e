"""What a ztunnel process imports: libraries it no longer needs stay out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Packages (and their submodules) by full name: hbone.http2 is ours and welcome, h2 is not.
UNWANTED = ("h2", "hpack", "prometheus_client", "pyroute2", "lab", "controlplane", "mesh.resources", "mesh.parse",
            "importlib.metadata", "yaml")
# Run in a fresh interpreter (this one has imported whatever other tests needed). A meta-path finder
# that finds nothing notes, for each unwanted package, the modules being imported when it was asked for.
CHILD = f"""
import json, sys, traceback
UNWANTED = {UNWANTED!r}
chains = {{}}

class Witness:
    def find_spec(self, name, path=None, target=None):
        for unwanted in UNWANTED:
            if (name == unwanted or name.startswith(unwanted + ".")) and unwanted not in chains:
                frames = [f for f, _ in traceback.walk_stack(None) if f.f_code.co_name == "<module>"]
                chains[unwanted] = [f.f_globals.get("__name__") for f in reversed(frames)]
        return None

sys.meta_path.insert(0, Witness())
from ambient.cli import build_parser
build_parser(["ztunnel", "--node", "node-0"])  # what `ambient ztunnel` loads before it runs
import ztunnel.proxy, hbone.driver
print(json.dumps({{"loaded": [name for name in UNWANTED if name in sys.modules], "chains": chains}}))
"""


def test_ztunnel_loads_only_what_it_runs():
    """ztunnel's idle memory is a benchmarked bar (64 MiB RSS, issue #7). These are modules it does
    not run: h2, hpack and prometheus_client (ztunnel has its own, leaner), pyroute2 and the lab
    (the lab's own commands), the control plane (discovery server, view: 0.6 MiB and more), the
    resource model, importlib.metadata (over 1 MiB for a version string) and YAML. This catches any of
    them coming back through an import."""
    child = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    seen = json.loads(child.stdout.splitlines()[-1])
    assert seen["loaded"] == [], f"imported by ztunnel (outermost module first): {seen['chains']}"
