"""The packages import one another only in the directions pyproject.toml's import-linter contracts
allow (ambient > lab > ztunnel | controlplane | waypoint > hbone | ca | bpf > mesh), so that
`make test` fails on a forbidden edge as `make lint` does. Imports inside functions count too."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def lint_imports() -> str | None:
    """The lint-imports beside this interpreter (the venv's), else one on PATH."""
    beside = Path(sys.executable).with_name("lint-imports")
    return str(beside) if beside.exists() else shutil.which("lint-imports")


def test_packages_import_only_downwards() -> None:
    command = lint_imports()
    if command is None:
        pytest.skip("lint-imports is not installed (the dev extra: pip install -e '.[dev]')")
    result = subprocess.run([command, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"an import breaks the layering contract:\n{result.stdout}{result.stderr}"
