"""The node's bpffs: mountinfo parsing, then (root) mounting a private bpffs in tmp_path and
unmounting every bpffs under a directory, and only those."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from bpf.bpffs import ensure_mounted, is_bpffs, mounts, unmount_under

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
35 22 0:30 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:12 - bpf bpf rw,mode=700
80 22 0:40 / /tmp/lab\\040one/node-0/bpf rw,relatime - bpf bpf rw,mode=700
81 22 0:41 /sub /mnt/data rw master:3 shared:7 propagate_from:2 - tmpfs tmpfs rw

a line that is not a mount
"""


def test_mounts_are_read_in_order_with_their_type():
    assert mounts(MOUNTINFO) == [
        (Path("/"), "ext4"),
        (Path("/sys/fs/bpf"), "bpf"),
        (Path("/tmp/lab one/node-0/bpf"), "bpf"),
        (Path("/mnt/data"), "tmpfs"),
    ]


@pytest.mark.parametrize("field, point", [
    pytest.param("/a\\040b", "/a b", id="space"),
    pytest.param("/a\\011b", "/a\tb", id="tab"),
    pytest.param("/a\\012b", "/a\nb", id="newline"),
    pytest.param("/a\\134b", "/a\\b", id="backslash"),
    pytest.param("/café", "/café", id="UTF-8, not escaped"),
])
def test_mount_points_are_unescaped(field, point):
    assert mounts(f"90 22 0:50 / {field} rw - bpf bpf rw\n") == [(Path(point), "bpf")]


def test_the_live_mountinfo_has_the_root():
    assert Path("/") in [point for point, _ in mounts()]


NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mounts a bpffs")


def propagation(point: Path) -> list[str]:
    """The optional fields (shared:N, master:N) of the mount at ``point``, from the live mountinfo."""
    with open("/proc/self/mountinfo") as f:
        lines = [line.split() for line in f]
    fields = [fields for fields in lines if fields[4] == os.fsdecode(point)][-1]  # the mount in view
    return fields[6:fields.index("-")]


@pytest.fixture
def workdir(tmp_path):
    """tmp_path, with every bpffs below it unmounted at the end, whatever the test did."""
    yield tmp_path
    for point, fstype in mounts():
        if fstype == "bpf" and point.is_relative_to(tmp_path.resolve()):
            subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.mark.root
@NEEDS_ROOT
def test_ensure_mounted_mounts_a_private_bpffs_once(workdir):
    path = workdir / "nodes" / "node-0" / "bpf"
    assert not is_bpffs(path)
    assert ensure_mounted(path) is True
    assert is_bpffs(path)
    assert stat.S_IMODE(path.stat().st_mode) & 0o777 == 0o700  # only root may reach the pins
    assert not any(tag.startswith("shared:") for tag in propagation(path.resolve()))
    assert ensure_mounted(path) is False
    assert [point for point, fstype in mounts() if point == path.resolve()] == [path.resolve()]  # not twice


@pytest.mark.root
@NEEDS_ROOT
def test_unmount_under_unmounts_the_bpffs_below_a_directory_and_no_other(workdir):
    inside = [workdir / "lab" / "nodes" / "node-0" / "bpf", workdir / "lab" / "nodes" / "node-1" / "bpf"]
    outside = workdir / "lab2" / "bpf"  # shares a prefix of the path's characters, not of its parts
    for path in (*inside, outside):
        ensure_mounted(path)
    assert sorted(unmount_under(workdir / "lab")) == sorted(path.resolve() for path in inside)
    assert [is_bpffs(path) for path in inside] == [False, False]
    assert is_bpffs(outside)
    assert unmount_under(workdir / "lab") == []
