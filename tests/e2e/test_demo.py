"""`make demo` (`ambient demo`): the sample lab comes up, its pods talk, and it leaves nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the demo runs the lab"),
]


def test_demo_brings_up_the_sample_lab_shows_traffic_and_tears_it_down(tmp_path):
    env = {**os.environ, "AMBIENT_LAB_ROOT": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "mesh", "demo"], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Lab 'demo' is up in" in out
    legacy_ip = re.search(r"legacy/sleep \((10\.244\.\d+\.\d+), node-\d\)", out).group(1)
    # Outside the mesh, plain TCP: the echo server saw the client pod's own address.
    assert re.search(rf"(same node|across nodes): legacy/echo saw GET /hello\?from=legacy from {re.escape(legacy_ip)}\n", out)
    # The three ambient pods are captured, one sk_lookup program each, and held without ztunnel.
    assert len(re.findall(r"demo/\S+ on node-\d: captured, awaiting ztunnel", out)) == 3
    assert "sk_lookup programs attached to their network namespaces (bpftool): 3" in out
    assert out.count("held (timed out), never delivered uncaptured") == 2
    assert len(re.findall(r"INFO ambient.nodeagent: pod demo/\S+ \(10\.244\.0\.\d+\) captured in", out)) >= 1
    assert re.search(r"legacy\s+echo\s+node-\d\s+10\.244\.\d+\.\d+\s+1/1\s+Running\s+0\s+none", out)
    assert "Lab 'demo' is down" in out and "lab network namespaces left: 0" in out
    assert not (tmp_path / "demo").exists()
