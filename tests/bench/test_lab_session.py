"""The clean-up every lab bench shares (``datapath.lab.lab_session``): logs kept on a failure, the lab
taken down, the work directory removed, or what is left said."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from datapath.lab import lab_session


class FakeLab:
    def __init__(self, started: bool, goes_down: bool = True) -> None:
        self.started = started
        self.goes_down = goes_down
        self.saved: list = []
        self.downs = 0
        self.layout = SimpleNamespace(state_root=Path("/state"), name="bench")

    def save_logs(self, patterns=None):
        self.saved.append(patterns)
        return Path("/kept")

    def down(self) -> bool:
        self.downs += 1
        return self.goes_down


def test_a_run_that_ends_well_takes_the_lab_down_and_removes_its_work(tmp_path):
    lab = FakeLab(started=True)
    with lab_session(lab, tmp_path / "work"):
        (tmp_path / "work").mkdir()
    assert lab.downs == 1 and lab.saved == [] and not (tmp_path / "work").exists()


def test_a_failure_keeps_the_logs_and_still_takes_the_lab_down(tmp_path, capsys):
    lab = FakeLab(started=True)
    with pytest.raises(RuntimeError), lab_session(lab, tmp_path, ("ztunnel-*.log",)):
        raise RuntimeError("boom")
    assert lab.saved == [("ztunnel-*.log",)] and lab.downs == 1
    assert "the lab's logs are kept in /kept" in capsys.readouterr().err


def test_a_lab_that_will_not_go_down_is_said_and_its_work_kept(tmp_path, capsys):
    lab = FakeLab(started=True, goes_down=False)
    with lab_session(lab, tmp_path):
        pass
    assert tmp_path.exists() and "ambient lab down --name bench" in capsys.readouterr().err


def test_a_lab_never_started_is_not_taken_down(tmp_path):
    lab = FakeLab(started=False)
    with pytest.raises(KeyboardInterrupt), lab_session(lab, tmp_path):
        raise KeyboardInterrupt
    assert lab.downs == 0 and lab.saved == [] and not tmp_path.exists()


def test_lab_preflight_says_what_is_missing(tmp_path, monkeypatch):
    import datapath.lab as lab_module
    from datapath.lab import lab_preflight

    monkeypatch.setattr(lab_module.os, "geteuid", lambda: 1000)
    assert lab_preflight(tmp_path, ()) == "the lab needs root"
    monkeypatch.setattr(lab_module.os, "geteuid", lambda: 0)
    assert lab_preflight(tmp_path, ()) == "needs bpf/capture.bpf.o (`make bpf`)"
    (tmp_path / "bpf").mkdir()
    (tmp_path / "bpf" / "capture.bpf.o").write_bytes(b"")
    assert lab_preflight(tmp_path, ("sh",)) is None
    assert lab_preflight(tmp_path, ("sh", "no-such-tool-here"), ["matplotlib"], " (make bench)") == \
        "missing: no-such-tool-here, matplotlib (make bench)"
