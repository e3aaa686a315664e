"""The Proxy-Wasm test plugins (issue #20), built by `make wasm-plugins` into build/wasm-plugins/.

`plugin_path(name)` gives a plugin's .wasm file. The first call in a process runs `make wasm-plugins`
(a no-op of a few milliseconds when everything is up to date, a rebuild of what changed otherwise), so a
single `pytest tests/...` works from a clean checkout and never tests a stale build; the build is guarded
by a file lock, so parallel test processes build once. Building needs node and npm (tests/wasm_plugins/
README.md). Nothing here imports wasmtime: a waypoint without a WasmPlugin must never load it, and tests
may check that in this interpreter.
"""

from __future__ import annotations

import fcntl
import subprocess
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_DIR = REPO / "build" / "wasm-plugins"

# Each behaviour is built with both AssemblyScript SDKs: `<behaviour>-gcore` (@gcoredev/proxy-wasm-sdk-as,
# ABI 0.2.1) and `<behaviour>-solo` (@solo-io/proxy-runtime, ABI 0.2.0). README.md says what each does.
BEHAVIOURS = (
    "add-header",
    "deny-without-header",
    "properties-metric",
    "http-call",
    "endless-loop",
    "unbounded-alloc",
    "trap",
)
SDKS = ("gcore", "solo")
# Hand-written modules (wat/): the import sets of the other SDKs, and ABI 0.1.0.
WAT_MODULES = ("tinygo-shape", "emscripten-shape", "abi-0-1-0")

PLUGINS: tuple[str, ...] = tuple(f"{b}-{sdk}" for sdk in SDKS for b in BEHAVIOURS) + WAT_MODULES

# A clean build takes well under a minute (npm ci, then 14 compiles on two cores); this bounds a hung one.
BUILD_TIMEOUT_SECONDS = 600

_built = False
_build_lock = threading.Lock()


class PluginBuildError(RuntimeError):
    """`make wasm-plugins` failed; the message carries its output."""


def plugin_path(name: str) -> Path:
    """The built .wasm file of the plugin `name` (one of PLUGINS), built or brought up to date first."""
    if name not in PLUGINS:
        raise KeyError(f"no test plugin {name!r}; the plugins are {', '.join(PLUGINS)}")
    build()
    path = BUILD_DIR / f"{name}.wasm"
    if not path.is_file():
        raise PluginBuildError(f"`make wasm-plugins` succeeded but wrote no {path}")
    return path


def build() -> None:
    """Runs `make wasm-plugins` once per process (later calls return at once)."""
    global _built
    with _build_lock:
        if _built:
            return
        BUILD_DIR.mkdir(parents=True, exist_ok=True)
        # Another process (a parallel test run) may be building: wait for it rather than race it.
        with open(BUILD_DIR / ".build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                done = subprocess.run(
                    ["make", "--no-print-directory", "wasm-plugins"],
                    cwd=REPO,
                    capture_output=True,
                    text=True,
                    timeout=BUILD_TIMEOUT_SECONDS,
                    check=False,
                )
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        if done.returncode != 0:
            raise PluginBuildError(f"`make wasm-plugins` failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        _built = True
