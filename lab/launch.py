"""Running ``ambient`` commands as child processes: for the demo, the benchmarks and the CLI tests.

``start_ca_server`` and ``start_controlplane`` return once the server is ready. Each server prints
its "serving ... on HOST:PORT" line only after it has bound (and its "metrics on URL" line after the
metrics port), so reading those lines is the readiness signal: no polling, no sleeps. If they have not come within
``READY_TIMEOUT``, the child is killed, which ends the read.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO

READY_TIMEOUT = 30.0
COMMAND_TIMEOUT = 60.0


def run_ambient(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``ambient ARGS...`` with its output captured, bounded by COMMAND_TIMEOUT."""
    return subprocess.run([sys.executable, "-m", "ambient", *args], capture_output=True, text=True, check=check,
                          timeout=COMMAND_TIMEOUT)


@dataclass
class CaServerProcess:
    proc: subprocess.Popen
    address: str  # HOST:PORT it serves gRPC on
    metrics_url: str | None
    ready_line: str

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (if still running) and wait; the exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=timeout)


def _wait_for_lines(proc: subprocess.Popen, prefixes: tuple[str, ...]) -> dict[str, str]:
    """The first stdout line of ``proc`` starting with each prefix, in whatever order they come."""
    found: dict[str, str] = {}
    watchdog = threading.Timer(READY_TIMEOUT, proc.kill)
    watchdog.start()
    try:
        while len(found) < len(prefixes):
            line = proc.stdout.readline()
            if not line:
                errors = proc.stderr.read() if proc.stderr else ""
                raise RuntimeError(f"server exited (status {proc.wait()}) before it was ready {errors}".rstrip())
            found.update({p: line.strip() for p in prefixes if line.startswith(p) and p not in found})
    finally:
        watchdog.cancel()
    return found


def _start(args: list[str], prefixes: tuple[str, ...], stderr) -> tuple[subprocess.Popen, dict[str, str]]:
    proc = subprocess.Popen([sys.executable, "-m", "ambient", *args], stdout=subprocess.PIPE, stderr=stderr, text=True)
    return proc, _wait_for_lines(proc, prefixes)


def _server_process(proc: subprocess.Popen, lines: dict[str, str]) -> CaServerProcess:
    serving = lines["serving "]
    address = serving.split(" on ", 1)[1].split()[0]
    metrics_url = lines["metrics on "].split(" on ", 1)[1] if "metrics on " in lines else None
    return CaServerProcess(proc, address, metrics_url, serving)


def start_ca_server(ca_dir: Path, *, metrics: bool = False, log_level: str = "info",
                    stderr: IO | int | None = None) -> CaServerProcess:
    """``ambient ca serve`` for ``ca_dir`` on a free loopback port (and metrics on another if
    ``metrics``); returns once it is ready. ``stderr`` receives its log."""
    proc, lines = _start(
        ["--log-level", log_level, "ca", "serve", "--dir", str(ca_dir),
         "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0" if metrics else "off"],
        ("serving ", "metrics on ") if metrics else ("serving ",), stderr)
    return _server_process(proc, lines)


def start_controlplane(config_dir: Path, state_dir: Path, *, metrics: bool = False, log_level: str = "info",
                       stderr: IO | int | None = None) -> CaServerProcess:
    """``ambient controlplane`` (CA and discovery) on a free loopback port; returns once it has
    bound and published its first view. The CA is in ``state_dir/ca``."""
    proc, lines = _start(
        ["--log-level", log_level, "controlplane", "--config", str(config_dir), "--state", str(state_dir),
         "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0" if metrics else "off"],
        ("serving ", "metrics on ") if metrics else ("serving ",), stderr)
    return _server_process(proc, lines)
