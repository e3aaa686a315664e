"""Flame graphs of the ztunnels under load: py-spy attached to both while one run goes through them.

After the measured rounds (so the sampling never touches a measured figure), one keep-alive run and
one new-connections run on the ambient path, each with py-spy attached to the two ztunnel processes
(node-0: the client side, outbound; node-1: the server side, inbound). py-spy reads the
interpreter's stacks from outside, without pausing it (`--nonblocking`), `RATE` times a second, for
the run's length plus the `ambient exec` start, and keeps a sample only when a thread holds the GIL
(`--gil`): Python running on a CPU. Waiting in epoll or for the GIL is left out, and so is C code
that releases the GIL (OpenSSL's record encryption inside `ssl`, socket system calls). Two samplers
per ztunnel and figure: one writes the SVG flame graph, the other the same kind of samples as
collapsed stacks (`--format raw`, a .txt beside the SVG: one line per distinct stack,
"outer;...;leaf count").

The waypoint row (issue #19) is profiled the same way: its one waypoint process, during one
keep-alive run (`figures`), files named after it ("<date>-flame-waypoint-keepalive.svg").

`summarize` reads the collapsed stacks (pure, after `parse_collapsed`): the samples' own time (the
frame on top of the stack, not what it called) by package, and the `TOP` functions with the most of
it, as shares of the GIL-holding samples. A package is the top-level one ("trio", "ssl"), or the
module for the mesh's own code ("hbone.http2"): `package_of`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from .lab import BenchFailure
from .measure import Runner

PROFILED_FIGURES = ("keepalive", "conn")
RATE = 200  # samples per second
ATTACH_S = 0.5  # py-spy's start, before the load
EXTRA_S = 2  # beyond the run: `ambient exec` and wrk's start
TOP = 10  # functions named in the summary of each ztunnel and figure
FORMATS = {"flamegraph": "svg", "raw": "txt"}  # py-spy --format: the file's suffix; one sampler each
# The mesh's packages, summarized by module.
OWN = ("ambient", "bpf", "ca", "controlplane", "hbone", "lab", "mesh", "waypoint", "ztunnel")
SAMPLING = "GIL-holding samples only (py-spy record --gil --nonblocking)"

_FRAME = re.compile(r"^(?P<function>.*?) ?\((?P<file>[^()]*?)(?::\d+)?\)$")  # "Func (file:line)"


def py_spy() -> str | None:
    """The venv's py-spy (the bench extra), else one on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


def record_argv(binary: str, pid: int, seconds: int, out: Path, rate: int = RATE,
                fmt: str = "flamegraph") -> list[str]:
    return [binary, "record", "--pid", str(pid), "--rate", str(rate), "--duration", str(seconds),
            "--nonblocking", "--gil", "--format", fmt, "--output", str(out)]


def flame_name(stem: str, ztunnel: str, figure: str, fmt: str = "flamegraph") -> str:
    return f"{stem}-flame-{ztunnel}-{figure}.{FORMATS[fmt]}"


def parse_collapsed(text: str) -> Counter:
    """py-spy's raw output, {(outermost frame, ..., leaf): samples}; lines without a count are skipped."""
    stacks: Counter = Counter()
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if stack and count.isdigit():
            stacks[tuple(stack.split(";"))] += int(count)
    return stacks


def split_frame(frame: str) -> tuple[str, str]:
    """("Func", "file") of py-spy's "Func (file:line)"; ("name", "") when it names no file."""
    match = _FRAME.match(frame)
    return (match["function"], match["file"]) if match else (frame, "")


def package_of(file: str) -> str:
    """Where a frame's code lives: "trio/_core/_run.py" -> "trio", "ssl.py" -> "ssl", the mesh's own
    "hbone/http2.py" -> "hbone.http2", "<attrs generated methods trio._core._run.CancelScope>" ->
    "trio", "<frozen abc>" -> "abc", dataclasses' "<string>" as it is; "?" for anything else (no file,
    a path py-spy did not shorten, or a torn read under --nonblocking)."""
    if file.startswith("<") and file.endswith(">"):
        words = file[1:-1].split()
        return words[-1].split(".")[0] if len(words) > 1 else file
    if file.endswith(".py") and not file.startswith("/"):
        parts = file[:-3].split("/")
        if parts[-1] == "__init__" and len(parts) > 1:
            parts.pop()
        return ".".join(parts[:2]) if parts[0] in OWN else parts[0]
    return "?"


def summarize(stacks: Counter, n: int = TOP) -> dict:
    """Own time (the leaf frame's samples) as shares of all samples: by package (every one, the
    largest first) and by function ("Func (file)", every line of a function together; the `n` largest)."""
    total = sum(stacks.values())
    packages: Counter = Counter()
    functions: Counter = Counter()
    for stack, samples in stacks.items():
        function, file = split_frame(stack[-1])
        packages[package_of(file)] += samples
        functions[f"{function} ({file})".lstrip() if file else function] += samples
    if not total:
        return {"samples": 0, "packages": [], "top_self": []}
    return {"samples": total,
            "packages": [(name, round(samples / total, 4)) for name, samples in packages.most_common()],
            "top_self": [(name, round(samples / total, 4)) for name, samples in functions.most_common(n)]}


def profile(runner: Runner, path: str, pids: dict[str, int], out_dir: Path, stem: str, seconds: float,
            figures: tuple[str, ...] = PROFILED_FIGURES) -> dict:
    """One profiled run of each of `figures` on `path`, with py-spy on each process of `pids` ({name: pid}):
    {figure: {"run": ..., "svg": {name: file}, "stacks": {name: file}, "summary": {name: summarize(...)}, ...}}."""
    binary = py_spy()
    if binary is None:
        raise BenchFailure("py-spy is not installed (the `bench` extra: make bench installs it)")
    duration = int(seconds + EXTRA_S + 0.999)
    out = {}
    for figure in figures:
        files = {(name, fmt): out_dir / flame_name(stem, name, figure, fmt) for name in sorted(pids) for fmt in FORMATS}
        spies = {key: subprocess.Popen(record_argv(binary, pids[key[0]], duration, file, fmt=key[1]),
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for key, file in files.items()}
        try:
            time.sleep(ATTACH_S)
            run = runner.measure(path, figure, seconds)
            failed = {}
            for (name, fmt), spy in spies.items():
                try:
                    output, _ = spy.communicate(timeout=duration + 30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    output, _ = spy.communicate()
                if spy.returncode != 0 or not files[name, fmt].is_file():
                    failed[f"{name} {fmt}"] = f"py-spy exited {spy.returncode}: {output.strip()[-500:]}"
        finally:
            for spy in spies.values():  # only ours, by their Popen handles
                if spy.poll() is None:
                    spy.kill()
                    spy.wait()
        if failed:
            raise BenchFailure(f"profiling {path} {figure}: {failed}")
        out[figure] = {"run": run, "sampling": SAMPLING, "rate": RATE, "duration_s": duration,
                       "svg": {name: files[name, "flamegraph"].name for name in sorted(pids)},
                       "stacks": {name: files[name, "raw"].name for name in sorted(pids)},
                       "summary": {name: summarize(parse_collapsed(files[name, "raw"].read_text()))
                                   for name in sorted(pids)}}
    return out
