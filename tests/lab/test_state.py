"""The lab's state directory: the daemon's lock says whether a lab runs; commands pick the lab."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lab import state
from lab.state import LabLock, LabNotFoundError, LabPaths, daemon_pid, is_running, pick_lab, pidfd_wait, write_record
from lab.topology import LabPlanError


def test_the_lock_says_whether_the_lab_runs_and_refuses_a_second_daemon(tmp_path):
    paths = LabPaths.of("one", tmp_path)
    assert not is_running(paths)
    lock = LabLock(paths)
    lock.acquire()
    assert is_running(paths)
    with pytest.raises(RuntimeError, match="lab 'one' is already running"):
        LabLock(paths).acquire()
    lock.release()
    assert not is_running(paths)  # the file stays; the lock is what counts


def test_the_lock_dies_with_its_process(tmp_path):
    paths = LabPaths.of("gone", tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom pathlib import Path\nfrom lab.state import LabLock, LabPaths\n"
         f"LabLock(LabPaths.of('gone', Path({str(tmp_path)!r}))).acquire()\n"
         "print('locked', flush=True)\nsys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "locked\n"
    assert is_running(paths)
    holder.kill()
    holder.wait()
    assert not is_running(paths)


def test_daemon_pid_is_only_a_live_lab_daemon(tmp_path):
    paths = LabPaths.of("pid", tmp_path)
    lock = LabLock(paths)
    lock.acquire()
    write_record(paths, {"pid": os.getpid()})
    # This pytest process holds the lock but is not `ambient lab ...pid`: never signalled.
    assert daemon_pid(paths) is None
    lock.release()


def test_pick_lab_takes_the_only_one_or_asks(tmp_path, monkeypatch):
    # Only the state directories count here, not the labs this machine may be running meanwhile.
    monkeypatch.setattr(state, "_names_from_netns", set)
    monkeypatch.setattr(state, "_names_from_cgroups", set)
    monkeypatch.delenv("AMBIENT_LAB", raising=False)
    with pytest.raises(LabNotFoundError, match="no lab is running"):
        pick_lab(None, tmp_path)
    (tmp_path / "not-a-lab").mkdir()  # no lock, no record: not a lab's
    (tmp_path / "zz-unknown-lab-a").mkdir()
    (tmp_path / "zz-unknown-lab-a" / "lab.lock").touch()
    assert pick_lab(None, tmp_path).name == "zz-unknown-lab-a"
    (tmp_path / "zz-unknown-lab-b").mkdir()
    (tmp_path / "zz-unknown-lab-b" / "lab.json").touch()
    with pytest.raises(LabNotFoundError, match=r"^2 labs are running \(zz-unknown-lab-a, zz-unknown-lab-b\): "
                       "pick one with --name or AMBIENT_LAB$"):
        pick_lab(None, tmp_path)
    assert pick_lab("zz-unknown-lab-b", tmp_path).root == tmp_path / "zz-unknown-lab-b"
    with pytest.raises(LabPlanError, match="^--name: invalid lab name"):
        pick_lab("Not_A_Label", tmp_path)
    monkeypatch.setenv("AMBIENT_LAB", "zz-unknown-lab-b")
    assert pick_lab(None, tmp_path).name == "zz-unknown-lab-b"
    assert pick_lab("zz-unknown-lab-a", tmp_path).name == "zz-unknown-lab-a"  # the flag wins


def test_pidfd_wait_sees_an_exit_without_reaping():
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    assert not pidfd_wait(child.pid, 0.05)
    child.stdin.close()
    assert pidfd_wait(child.pid, 10)
    assert child.wait() == 0  # still ours to reap
