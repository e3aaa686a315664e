"""The Kubernetes side of the node agent without the kernel: which CNI captures reconcile must spare, and
when the /proc scan runs (the scan itself is tests/bpf/test_proc_netns.py, the whole flow test_cni_plugin.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from bpf import cni_agent
from bpf.cni_agent import PROC_RESCAN_INTERVAL, KubernetesPods, protected
from bpf.proc_netns import NetnsCandidate


@pytest.mark.parametrize(("pending", "targets", "now", "spared"), [
    pytest.param({"a": 10.0}, set(), 5.0, {"a"}, id="waiting for its Workload"),
    pytest.param({"a": 10.0}, {"a"}, 5.0, set(), id="its Workload came: a target like any other"),
    pytest.param({"a": 10.0}, set(), 10.0, set(), id="its wait is over"),
    pytest.param({"a": 10.0, "b": 1.0}, {"c"}, 5.0, {"a"}, id="each on its own"),
])
def test_protected(pending, targets, now, spared):
    assert protected(pending, targets, now) == spared


class NoLookup:
    def captured(self, namespace: str, name: str) -> bool:
        raise AssertionError("no lookup here")


def test_settle_forgets_the_pods_it_no_longer_spares():
    pods = KubernetesPods(NoLookup(), Path("/x"))
    pods.pending = {"came": 10.0, "waiting": 10.0, "expired": 1.0}
    assert pods.settle({"came"}, 5.0) == {"waiting"}
    assert pods.pending == {"waiting": 10.0}


class Scans:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self, proc: Path) -> list[NetnsCandidate]:
        self.count += 1
        return []


async def test_the_proc_scan_runs_for_new_unknown_pods_and_at_most_once_an_interval_for_the_same(
        monkeypatch, autojump_clock):
    scans = Scans()
    monkeypatch.setattr(cni_agent, "scan_proc", scans)
    pods = KubernetesPods(NoLookup(), Path("/x"))
    await pods.find_unknown({})
    assert scans.count == 0  # nothing to look for
    await pods.find_unknown({"a": "10.0.0.1"})
    await pods.find_unknown({"a": "10.0.0.1"})
    assert scans.count == 1
    await pods.find_unknown({"a": "10.0.0.1", "b": "10.0.0.2"})  # a new pod: at once
    assert scans.count == 2
    await pods.find_unknown({"b": "10.0.0.2"})  # already looked for
    assert scans.count == 2
    await trio.sleep(PROC_RESCAN_INTERVAL)
    await pods.find_unknown({"b": "10.0.0.2"})
    assert scans.count == 3


@pytest.mark.parametrize("flag", [["--cni-socket", "/run/x.sock"], ["--proc-root", "/host/proc"],
                                  ["--kubeconfig", "/etc/kube.conf"]])
def test_the_kubernetes_flags_are_refused_in_the_lab(flag, tmp_path, capsys):
    from ambient.cli import main

    status = main(["node-agent", "--node", "n", "--state-dir", str(tmp_path), "--discovery-address", "h:1",
                   "--ca-root", str(tmp_path / "root.pem"), "--token-file", str(tmp_path / "t"), "--lab", "x", *flag])
    assert status != 0 and "go with --kubernetes" in capsys.readouterr().err
