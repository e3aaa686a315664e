"""``hbone``'s own namespace: every public name of the package, each loaded only when first used."""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import hbone

REPO = Path(__file__).resolve().parents[2]


def test_every_exported_name_is_the_object_its_module_defines():
    for name in hbone.__all__:
        module = importlib.import_module(hbone._MODULE_OF[name])
        assert getattr(hbone, name) is getattr(module, name), name
    assert sorted(hbone._MODULE_OF) == sorted(hbone.__all__)


def test_the_names_mypy_sees_are_the_names_loaded_at_run_time():
    tree = ast.parse(Path(hbone.__file__).read_text())
    typed = {alias.name: node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
             for alias in node.names if node.module and node.module.startswith("hbone.")}
    assert typed == hbone._MODULE_OF


def test_no_exported_name_is_also_a_submodule_name():
    """``import hbone.relay`` rebinds ``hbone.relay`` to the module: a function of that name would vanish."""
    submodules = {info.name for info in pkgutil.iter_modules(hbone.__path__)}
    assert not submodules & set(hbone.__all__)


def test_importing_the_package_or_one_name_loads_only_what_it_needs():
    child = """
import json, sys
import hbone
first = sorted(m for m in sys.modules if m.startswith("hbone"))
from hbone import TcpStream
print(json.dumps([first, sorted(m for m in sys.modules if m.startswith("hbone"))]))
"""
    done = subprocess.run([sys.executable, "-c", child], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [["hbone"], ["hbone", "hbone.tcp_stream"]]
