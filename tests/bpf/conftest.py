"""Fixtures of the eBPF tests."""

from __future__ import annotations

import subprocess

import pytest


@pytest.fixture
def bpffs(tmp_path):
    """A bpffs of the test's own (each mount is a new, empty instance), unmounted afterwards."""
    mount = tmp_path / "bpffs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "bpf", "bpf", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", str(mount)], check=True)
