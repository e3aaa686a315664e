"""Flame graphs of the ztunnels under load: py-spy attached to both while one run goes through them.

After the measured rounds (so the sampling never touches a measured figure), one keep-alive run and
one new-connections run on the ambient path, each with `py-spy record --nonblocking` attached to the
two ztunnel processes (node-0: the client side, outbound; node-1: the server side, inbound). py-spy
reads the interpreter's stacks from outside, without pausing it (--nonblocking), `RATE` times a
second, for the run's length plus the `ambient exec` start; it writes one SVG flame
graph per ztunnel and figure. The run's own figures are kept, marked as profiled.

`top_self` reads a flame graph back (pure): the functions with the most samples of their own (not
in a function they called), as shares of all samples, for the report's one-line summary of where
the time goes. It relies on what py-spy's SVG carries for each frame: the title, the depth (`y`) and
the span in samples (`fg:x`, `fg:w`).
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from .lab import BenchFailure
from .measure import Runner

PROFILED_FIGURES = ("keepalive", "conn")
RATE = 200  # samples per second
ATTACH_S = 0.5  # py-spy's start, before the load
EXTRA_S = 2  # beyond the run: `ambient exec` and wrk's start
TOP = 8  # functions named in the summary of each flame graph

_FRAME = re.compile(r'<g><title>([^<]*)</title><rect [^>]*?y="([0-9.]+)"[^>]*?fg:x="(\d+)" fg:w="(\d+)"')
_SAMPLES = re.compile(r" \(\d+ samples?, [0-9.]+%\)$")
_LINE = re.compile(r":\d+\)$")


def py_spy() -> str | None:
    """The venv's py-spy (the bench extra), else one on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


def record_argv(binary: str, pid: int, seconds: int, out: Path, rate: int = RATE) -> list[str]:
    return [binary, "record", "--pid", str(pid), "--rate", str(rate), "--duration", str(seconds),
            "--nonblocking", "--format", "flamegraph", "--output", str(out)]


def flame_name(stem: str, ztunnel: str, figure: str) -> str:
    return f"{stem}-flame-{ztunnel}-{figure}.svg"


def top_self(svg: str, n: int = TOP) -> list[tuple[str, float]]:
    """The `n` functions ("Func (file)", every line of a function together) with the largest share of
    samples spent in themselves: a frame's own samples are its span minus its callees' spans."""
    frames = [(_SAMPLES.sub("", html.unescape(title)), float(y), int(x), int(w))
              for title, y, x, w in _FRAME.findall(svg)]
    root = next((f for f in frames if f[0] == "all"), None)
    if root is None or not root[3]:
        return []
    levels = sorted({f[1] for f in frames})
    step = min((b - a for a, b in zip(levels, levels[1:])), default=1.0)
    by_depth: dict[int, list] = defaultdict(list)
    for frame in frames:
        by_depth[round(abs(frame[1] - root[1]) / step)].append(frame)
    own: Counter = Counter()
    for depth, level in by_depth.items():
        for name, _, x, w in level:
            if depth == 0:
                continue
            callees = sum(c[3] for c in by_depth.get(depth + 1, ()) if x <= c[2] < x + w)
            own[_LINE.sub(")", name)] += w - callees
    return [(name, round(samples / root[3], 4)) for name, samples in own.most_common(n) if samples > 0]


def profile(runner: Runner, path: str, pids: dict[str, int], out_dir: Path, stem: str, seconds: float) -> dict:
    """One profiled run of each figure of PROFILED_FIGURES on `path`; {figure: {"run": ..., "svg": {...}}}."""
    binary = py_spy()
    if binary is None:
        raise BenchFailure("py-spy is not installed (the `bench` extra: make bench installs it)")
    duration = int(seconds + EXTRA_S + 0.999)
    out = {}
    for figure in PROFILED_FIGURES:
        svgs = {name: out_dir / flame_name(stem, name, figure) for name in sorted(pids)}
        spies = {name: subprocess.Popen(record_argv(binary, pids[name], duration, svgs[name]),
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for name in sorted(pids)}
        try:
            time.sleep(ATTACH_S)
            run = runner.measure(path, figure, seconds)
            failed = {}
            for name, spy in spies.items():
                try:
                    output, _ = spy.communicate(timeout=duration + 30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    output, _ = spy.communicate()
                if spy.returncode != 0 or not svgs[name].is_file():
                    failed[name] = f"py-spy exited {spy.returncode}: {output.strip()[-500:]}"
        finally:
            for spy in spies.values():  # only ours, by their Popen handles
                if spy.poll() is None:
                    spy.kill()
                    spy.wait()
        if failed:
            raise BenchFailure(f"profiling {path} {figure}: {failed}")
        out[figure] = {"run": run, "svg": {name: svg.name for name, svg in svgs.items()},
                       "top_self": {name: top_self(svg.read_text()) for name, svg in svgs.items()},
                       "rate": RATE, "duration_s": duration}
    return out
