"""From the runs to the report: medians, ratios to the baseline, issue #7's bars, markdown, charts.

Everything but `charts` is pure (dicts in, dicts or text out), so it is tested without a lab. The
shapes: `rounds` is a list (one per round) of {path: {figure: run}}, a run being the flat dict
`measure.Runner.measure` returns; `summary` (the JSON's "medians") is {path: {row key: value}}, a
row key being "<figure>.<field>" (the median over the rounds) or "rss_idle.<side>" and
"rss_load.<side>" (memory: idle once, under load the max of the keep-alive runs). `ROWS` says which
keys the table shows and how; a new figure is one more `Row`, a new path one more column.

The L7 rows (issue #19) are columns of the same table (with "–" for the figures they do not run),
and have a section of their own (`l7_lines`): the waypoint path against the haproxy pair in http
mode, the CPU of each side by itself, the waypoint's memory, and issue #19's bars (`L7_BARS`).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

RSS_LIMIT_MIB = 64.0  # issue #7: "ztunnel RSS at most 64 MB idle", read as MiB


@dataclass(frozen=True)
class Row:
    key: str  # in a path's summary
    label: str
    unit: str
    digits: int  # decimals shown
    chart: str  # the chart it is drawn in
    proxies_only: bool = False  # none for a path without proxies


ROWS = (
    Row("keepalive.rps", "keep-alive requests/s", "req/s", 0, "requests"),
    Row("keepalive.p50_ms", "keep-alive p50 latency", "ms", 3, "latency"),
    Row("keepalive.p99_ms", "keep-alive p99 latency", "ms", 3, "latency"),
    Row("conn.cps", "new connections/s", "conn/s", 0, "connections"),
    Row("conn.p50_ms", "new-connection p50 latency", "ms", 2, "latency"),
    Row("conn.p99_ms", "new-connection p99 latency", "ms", 2, "latency"),
    Row("bulk.gbit_s", "bulk, 1 stream", "Gbit/s", 2, "bulk"),
    Row("keepalive.cpu_ms_per_1k", "proxies' CPU per 1,000 requests", "CPU-ms", 1, "cpu", True),
    Row("conn.cpu_ms_per_1k", "proxies' CPU per 1,000 connections", "CPU-ms", 1, "cpu", True),
    Row("bulk.cpu_ms_per_gib", "proxies' CPU per GiB", "CPU-ms", 0, "cpu", True),
    Row("rss_idle.client", "proxy RSS idle, client side", "MiB", 1, "rss", True),
    Row("rss_idle.server", "proxy RSS idle, server side", "MiB", 1, "rss", True),
    Row("rss_load.client", "proxy RSS under load (max), client side", "MiB", 1, "rss", True),
    Row("rss_load.server", "proxy RSS under load (max), server side", "MiB", 1, "rss", True),
    Row("pss_idle.client", "proxy PSS idle (shared pages split), client side", "MiB", 1, "rss", True),
    Row("pss_idle.server", "proxy PSS idle (shared pages split), server side", "MiB", 1, "rss", True),
)
CHARTS = {  # chart -> title
    "requests": "keep-alive requests/s (wrk, HTTP/1.1)",
    "latency": "latency p50 / p99 (ms)",
    "connections": "new connections/s (wrk, Connection: close)",
    "bulk": "bulk throughput, 1 stream (iperf3, Gbit/s at the receiver)",
    "cpu": "proxies' CPU (both sides), CPU-ms per unit",
    "rss": "proxies' RSS (MiB)",
}


def _median(values: list) -> float | None:
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return round(statistics.median(numbers), 4) if numbers else None


def medians(rounds: list[dict]) -> dict[str, dict[str, float | None]]:
    """{path: {"figure.field": median over the rounds}} of every numeric field of the runs."""
    out: dict[str, dict] = {}
    for path in rounds[0]:
        out[path] = {}
        for figure in rounds[0][path]:
            runs = [r[path][figure] for r in rounds]
            fields = dict.fromkeys(k for run in runs for k, v in run.items() if not isinstance(v, dict))
            for field in fields:
                value = _median([run.get(field) for run in runs])
                if value is not None:
                    out[path][f"{figure}.{field}"] = value
    return out


def load_rss(rounds: list[dict]) -> dict[str, dict[str, float]]:
    """{path: {side: MiB}}: the max RSS sampled over every keep-alive run."""
    out: dict[str, dict] = {}
    for one in rounds:
        for path, figures in one.items():
            for side, mib in figures.get("keepalive", {}).get("rss_max_mib", {}).items():
                out.setdefault(path, {})[side] = max(out.get(path, {}).get(side, 0.0), mib)
    return out


def summarize(rounds: list[dict], idle_rss: dict[str, dict[str, float]],
              idle_pss: dict[str, dict[str, float]] | None = None) -> dict[str, dict[str, float | None]]:
    summary = medians(rounds)
    under_load = load_rss(rounds)
    for path in summary:
        for side, mib in idle_rss.get(path, {}).items():
            summary[path][f"rss_idle.{side}"] = mib
        for side, mib in (idle_pss or {}).get(path, {}).items():
            summary[path][f"pss_idle.{side}"] = mib
        for side, mib in under_load.get(path, {}).items():
            summary[path][f"rss_load.{side}"] = mib
    return summary


def connection_checks(rounds: list[dict]) -> dict[str, dict[str, float]]:
    """What nginx saw, median over the rounds, per path: connections per request in the `conn` runs
    (about 1: wrk reconnected each time) and connections in the keep-alive runs (about -c)."""
    out: dict[str, dict] = {"conn_connections_per_request": {}, "keepalive_connections": {}}
    for path in rounds[0]:
        conn = [r[path]["conn"] for r in rounds if "conn" in r[path]]
        keepalive = [r[path]["keepalive"] for r in rounds if "keepalive" in r[path]]
        if conn:
            out["conn_connections_per_request"][path] = _median(
                [run["nginx_connections"] / run["requests"] for run in conn if run["requests"]])
        if keepalive:
            out["keepalive_connections"][path] = _median([run["nginx_connections"] for run in keepalive])
    return out


def run_warnings(rounds: list[dict]) -> list[str]:
    """Runs that passed but not cleanly: wrk errors (under the 1% that fails a run)."""
    out = []
    for n, one in enumerate(rounds, 1):
        for path, figures in one.items():
            for figure, run in figures.items():
                if run.get("errors"):
                    out.append(f"round {n}, {path} {figure}: {run['errors']} wrk errors in {run['requests']} requests")
    return out


def ratios(summary: dict, baseline: str) -> dict[str, dict[str, float | None]]:
    """{path: {row key: value / the baseline's}}; None where either is missing or the baseline is 0."""
    base = summary.get(baseline, {})
    out: dict[str, dict[str, float | None]] = {}
    for path, values in summary.items():
        out[path] = {}
        for row in ROWS:
            value, ref = values.get(row.key), base.get(row.key)
            out[path][row.key] = round(value / ref, 4) if value is not None and ref else None
    return out


# -- issue #7's bars


@dataclass(frozen=True)
class Bar:
    label: str
    key: str
    limit: float
    at_least: bool  # the value must be >= limit; else <= limit
    relative: bool = True  # limit is a ratio to the baseline; else an absolute value in `unit`
    unit: str = "x"


BARS = (
    Bar("requests/s at least 0.4x stunnel's", "keepalive.rps", 0.4, True),
    Bar("bulk Gbit/s at least 0.5x stunnel's", "bulk.gbit_s", 0.5, True),
    Bar("new connections/s at least 1.0x stunnel's", "conn.cps", 1.0, True),
    Bar("keep-alive p99 at most 3x stunnel's", "keepalive.p99_ms", 3.0, False),
    Bar("new-connection p99 at most 3x stunnel's", "conn.p99_ms", 3.0, False),
    Bar("ztunnel RSS idle at most 64 MiB, node-0", "rss_idle.client", RSS_LIMIT_MIB, False, False, "MiB"),
    Bar("ztunnel RSS idle at most 64 MiB, node-1", "rss_idle.server", RSS_LIMIT_MIB, False, False, "MiB"),
)


# Issue #19's first bars, for the waypoint path against the haproxy pair in http mode. Istio's published
# figure for its Envoy waypoint is about 0.25 vCPU per 1,000 req/s, i.e. 250 CPU-ms per 1,000 requests.
WAYPOINT_CPU_LIMIT_MS = 250.0
L7_BARS = (
    Bar("waypoint path requests/s at least 0.5x haproxy-l7's", "keepalive.rps", 0.5, True),
    Bar("waypoint alone at most 250 CPU-ms per 1,000 requests", "keepalive.waypoint_cpu_ms_per_1k",
        WAYPOINT_CPU_LIMIT_MS, False, False, "CPU-ms"),
)


def check_bars(summary: dict, subject: str = "ambient", baseline: str = "stunnel",
               bars: tuple[Bar, ...] = BARS) -> list[dict]:
    """Each bar: the value (a ratio, or an absolute value in its unit), PASS or MISS, and the margin as
    a share of the limit (positive: by how much it passes; negative: by how much it misses). Empty when
    the subject or the baseline was not measured."""
    if subject not in summary or baseline not in summary:
        return []
    out = []
    for bar in bars:
        value = summary[subject].get(bar.key)
        if bar.relative:
            ref = summary[baseline].get(bar.key)
            value = value / ref if value is not None and ref else None
        if value is None:
            out.append({"bar": bar.label, "key": bar.key, "limit": bar.limit, "at_least": bar.at_least,
                        "unit": bar.unit, "value": None, "result": "n/a", "margin": None})
            continue
        margin = (value / bar.limit - 1) if bar.at_least else (1 - value / bar.limit)
        out.append({"bar": bar.label, "key": bar.key, "limit": bar.limit, "at_least": bar.at_least,
                    "unit": bar.unit, "value": round(value, 4), "result": "PASS" if margin >= 0 else "MISS",
                    "margin": round(margin, 4)})
    return out


def describe_bar(check: dict) -> str:
    if check["result"] == "n/a":
        return "n/a (not measured)"
    share = f"{abs(check['margin']) * 100:.0f}%"
    if check["result"] == "PASS":
        return f"PASS, {share} {'above' if check['at_least'] else 'under'} the bar"
    return f"MISS, {share} {'short of' if check['at_least'] else 'over'} the bar"


# -- markdown


def fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def cell(value: float | None, ratio: float | None, digits: int, is_baseline: bool) -> str:
    if value is None:
        return "–"
    if is_baseline or ratio is None:
        return fmt(value, digits)
    return f"{fmt(value, digits)} ({ratio:.2f}×)"


def table(result: dict) -> str:
    names = [p["name"] for p in result["paths"]]
    baseline, summary, rat = result["baseline"], result["medians"], result["ratios"]
    head = ["figure", *[f"{n} (baseline)" if n == baseline else n for n in names]]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * len(names) + "|"]
    for row in ROWS:
        cells = [cell(summary[n].get(row.key), rat[n].get(row.key), row.digits, n == baseline) for n in names]
        lines.append(f"| {row.label} ({row.unit}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bars_table(checks: list[dict], subject: str = "ambient", baseline: str = "stunnel") -> str:
    if not checks:
        return f"(not checked: the {subject} or the {baseline} path was not measured)"
    lines = [f"| bar ({subject} against {baseline}) | value | limit | result |", "|---|---:|---:|---|"]
    for c in checks:
        unit = "×" if c["unit"] == "x" else f" {c['unit']}"
        value = "–" if c["value"] is None else f"{c['value']:.2f}{unit}"
        lines.append(f"| {c['bar']} | {value} | {c['limit']:g}{unit} | {describe_bar(c)} |")
    return "\n".join(lines)


def _reconnects(checks: dict) -> str:
    per_request = [v for v in checks["conn_connections_per_request"].values() if v is not None]
    if not per_request:
        return "not checked"
    low, high = min(per_request), max(per_request)
    spread = f"{low:.2f}" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f} to {high:.2f}"
    return f"nginx accepted {spread} connections per request, median per path"


def _code(code: dict | None) -> str:
    if not code or not code.get("commit"):
        return ""
    modified = f", with {len(code['modified'])} modified files" if code.get("modified") else ""
    return f", commit {code['commit'][:10]}{modified}"


PROFILE_NOTE = (
    "py-spy (`record --gil --nonblocking`) kept a sample only while a ztunnel thread held the GIL, so the "
    "flame graphs and the shares below are the interpreter's CPU time, **GIL-holding samples only**: "
    "waiting (epoll, the GIL) is left out, and so is C code that releases the GIL (OpenSSL's encryption "
    "inside `ssl`, socket system calls), which the CPU rows above do count. A share is of that side's "
    "GIL-holding samples, counted for the frame on top of the stack (own time, not in what it called), by "
    "package (by module for the mesh's own code) and by function.")
TOP_PACKAGES = 8  # named in the summary; the rest is "other"


def _shares(pairs: list, limit: int) -> str:
    shown = ", ".join(f"`{name}` {share * 100:.1f}%" for name, share in pairs[:limit])
    rest = sum(share for _, share in pairs[limit:])
    return shown + (f", other {rest * 100:.1f}%" if rest else "")


def profile_lines(figure: str, one: dict) -> list[str]:
    """A profiled figure in the report: its run, links to the flame graphs and collapsed stacks, and
    each ztunnel's own time by package and by function (`profile.summarize`)."""
    run = one["run"]
    rate = f"{run['rps']:,.0f} req/s" if "rps" in run else f"{run['cps']:,.0f} conn/s"
    links = ", ".join(f"[{name}]({svg}) ([stacks]({one['stacks'][name]}))" for name, svg in one["svg"].items())
    lines = [f"- {figure} ({rate} while sampled at {one['rate']} Hz, not in the medians): {links}"]
    ticks = one["rate"] * one["duration_s"]
    for name, summary in one["summary"].items():
        if not summary["samples"]:
            lines.append(f"  - {name}: no GIL-holding sample in {ticks:,} ticks")
            continue
        lines += [f"  - {name}: {summary['samples']:,} GIL-holding samples of {ticks:,} ticks "
                  f"({one['duration_s']} s at {one['rate']} Hz)",
                  f"    - own time by package: {_shares(summary['packages'], TOP_PACKAGES)}",
                  f"    - own time by function (top {len(summary['top_self'])}): "
                  f"{_shares(summary['top_self'], len(summary['top_self']))}"]
    return lines


MEMORY_TOP = 6  # mappings named in the memory breakdown


def memory_lines(by_ztunnel: dict[str, dict[str, int]]) -> list[str]:
    """Where each ztunnel's idle RSS is (KiB by mapping, from `lab.rss_by_mapping`): anonymous memory
    (Python's objects, the heap) and the largest shared libraries, whose clean text pages every
    process mapping them counts in full in its RSS."""
    out = ["## ztunnel idle memory by mapping (VmRSS)", ""]
    for name, mappings in sorted(by_ztunnel.items()):
        total = sum(mappings.values())
        anonymous = mappings.get("anonymous", 0)
        files = sorted(((kib, file) for file, kib in mappings.items() if file != "anonymous"), reverse=True)
        named = ", ".join(f"`{file}` {kib / 1024:.1f}" for kib, file in files[:MEMORY_TOP])
        rest = sum(kib for kib, _ in files[MEMORY_TOP:])
        out.append(f"- {name}: {total / 1024:.1f} MiB = anonymous {anonymous / 1024:.1f} + files "
                   f"{(total - anonymous) / 1024:.1f} ({named}, other {rest / 1024:.1f})")
    return out + [""]


# The L7 section's rows: (label, summary key of the waypoint, of haproxy-l7, digits, unit); None: not
# measured that way on that path. Each side's CPU comes from `measure.cpu_figures(..., alone=...)`.
L7_ROWS = (
    ("keep-alive requests/s", "keepalive.rps", "keepalive.rps", 0, "req/s"),
    ("keep-alive p50 latency", "keepalive.p50_ms", "keepalive.p50_ms", 3, "ms"),
    ("keep-alive p99 latency", "keepalive.p99_ms", "keepalive.p99_ms", 3, "ms"),
    ("CPU per 1,000 requests, whole path", "keepalive.cpu_ms_per_1k", "keepalive.cpu_ms_per_1k", 1, "CPU-ms"),
    ("CPU per 1,000 requests, the waypoint alone", "keepalive.waypoint_cpu_ms_per_1k", None, 1, "CPU-ms"),
    ("CPU per 1,000 requests, client side (ztunnel node-0; haproxy)", "keepalive.client_cpu_ms_per_1k",
     "keepalive.client_cpu_ms_per_1k", 1, "CPU-ms"),
    ("CPU per 1,000 requests, server side (ztunnel node-1; haproxy with the ACL)", "keepalive.server_cpu_ms_per_1k",
     "keepalive.server_cpu_ms_per_1k", 1, "CPU-ms"),
    ("RSS idle, the waypoint", "rss_idle.waypoint", None, 1, "MiB"),
    ("PSS idle, the waypoint", "pss_idle.waypoint", None, 1, "MiB"),
    ("RSS under load (max), the waypoint", "rss_load.waypoint", None, 1, "MiB"),
    ("RSS idle, server side (ztunnel node-1; haproxy with the ACL)", "rss_idle.server", "rss_idle.server", 1, "MiB"),
)


def l7_table(summary: dict, subject: str, baseline: str) -> str:
    """The waypoint and the haproxy pair side by side, with their ratio where both have the figure."""
    mine, theirs = summary.get(subject, {}), summary.get(baseline, {})
    lines = [f"| figure | {baseline} | {subject} | {subject} / {baseline} |", "|---|---:|---:|---:|"]
    for label, key, base_key, digits, unit in L7_ROWS:
        value = mine.get(key) if key else None
        ref = theirs.get(base_key) if base_key else None
        if value is None and ref is None:
            continue
        ratio = f"{value / ref:.2f}×" if value is not None and ref else "–"
        lines.append(f"| {label} ({unit}) | {fmt(ref, digits)} | {fmt(value, digits)} | {ratio} |")
    return "\n".join(lines)


def l7_lines(result: dict) -> list[str]:
    """The L7 section: what both rows do, the table, issue #19's bars, where the waypoint ran."""
    subject, baseline = result.get("l7_subject", "waypoint"), result.get("l7_baseline", "haproxy-l7")
    summary = result["medians"]
    if subject not in summary and baseline not in summary:
        return []
    placed = result.get("waypoint_node")
    where = f" The lab placed the waypoint pod on {placed}." if placed else ""
    checked = result.get("l7_checks") or {}
    answers = "; ".join(f"{name}: " + ", ".join(f"GET {p} {code}" for p, code in codes.items())
                        for name, codes in checked.items())
    return [
        "## L7: the waypoint against a haproxy pair in http mode (issue #19)",
        "",
        "Both rows apply the same rule (allow `/` and `/public/*`, deny anything else with 403) to every "
        "request of the same keep-alive wrk load; the keep-alive figure only. The waypoint path is client "
        "pod → ztunnel node-0 → HBONE → waypoint (L7 policy) → pooled HBONE → ztunnel node-1 → nginx; its "
        "whole-path CPU is both ztunnels' cgroups and the waypoint's (the ztunnels carry no other path's "
        "traffic meanwhile: runs are one after another), the waypoint alone its own cgroup. haproxy-l7 is "
        "the haproxy pair in `mode http` with the same mTLS 1.3 certificates, the path ACL on the server "
        f"side and `http-reuse always` towards the next hop; its CPU is both sides' cgroups.{where}"
        + (f" Checked before measuring: {answers}." if answers else ""),
        "",
        l7_table(summary, subject, baseline),
        "",
        "### Bars (issue #19)",
        "",
        bars_table(result.get("bars_l7", []), subject, baseline),
        "",
    ]


def wasm_lines(result: dict) -> list[str]:
    """Issue #20: the waypoint alone with and without a header plugin, the same load in the same run."""
    summary = result["medians"]
    plain, plugin = summary.get(result.get("l7_subject", "waypoint"), {}), summary.get("waypoint-wasm", {})
    without, with_plugin = plain.get("keepalive.waypoint_cpu_ms_per_1k"), plugin.get("keepalive.waypoint_cpu_ms_per_1k")
    if without is None or with_plugin is None:
        return []
    cost = with_plugin - without  # CPU-ms per 1,000 requests is CPU-µs per request
    lines = ["| figure | waypoint | waypoint-wasm | difference |", "|---|---:|---:|---:|",
             f"| CPU per request, the waypoint alone (CPU-µs) | {without:.1f} | {with_plugin:.1f} | {cost:+.1f} |"]
    for label, key, digits in (("keep-alive requests/s", "keepalive.rps", 0),
                               ("keep-alive p99 latency (ms)", "keepalive.p99_ms", 3),
                               ("RSS idle, the waypoint (MiB)", "rss_idle.waypoint", 1)):
        a, b = plain.get(key), plugin.get(key)
        if a is not None and b is not None:
            lines.append(f"| {label} | {fmt(a, digits)} | {fmt(b, digits)} | {fmt(b - a, digits)} |")
    return ["## A header plugin in the waypoint (issue #20)", "",
            "The waypoint row and the same with a WasmPlugin on its Gateway (an AssemblyScript plugin built with "
            "gcore's SDK that adds a request header from its pluginConfig), the same keep-alive load, one after "
            "the other in each round. The waypoint's own cgroup: the difference is the plugin's cost per request "
            f"(issue #20's goal: at most 50 CPU-µs): **{cost:.1f} CPU-µs**.", "", *lines, ""]


def markdown(result: dict) -> str:
    p, m = result["parameters"], result["machine"]
    paths = "\n".join(f"- `{x['name']}` (namespace `{x['namespace']}`): {x['title']}" for x in result["paths"])
    out = [
        f"# Data path benchmark, {result['date'][:10]}",
        "",
        *[f"**Warning:** {w}  " for w in result.get("warnings", [])],
        *([""] if result.get("warnings") else []),
        f"One lab, 2 nodes (client pods on node-0, server pods on node-1), {m['cpus']} CPUs, kernel {m['kernel']}"
        f"{_code(m.get('code'))}. "
        f"Median of {p['rounds']} interleaved rounds (path order rotated each round). keep-alive: "
        f"`wrk -t{p['threads']} -c{p['connections']} -d{p['seconds']:g}s --latency`; new connections: the same "
        f"with `Connection: close` ({_reconnects(result['checks'])}); bulk: `iperf3 -t {p['bulk_seconds']:g}`, "
        "one stream. CPU: both proxy sides' "
        "cgroups (`cpu.stat`); RSS: VmRSS summed over each side's processes; PSS: the same with every "
        "shared page divided among the processes that map it (shared library text counts once per node). "
        f"Ratios are to {result['baseline']}: above 1 is more throughput, or more latency, CPU or memory.",
        "",
        paths,
        "",
        table(result),
        "",
        "## Bars (issue #7)",
        "",
        bars_table(result["bars"]),
        "",
    ]
    out += l7_lines(result)
    out += wasm_lines(result)
    if result.get("charts"):
        out += ["## Charts", "", *[f"![{name}]({name})" for name in result["charts"]], ""]
    if result.get("ztunnel_memory"):
        out += memory_lines(result["ztunnel_memory"])
    profile = result.get("profile") or {}
    if profile:
        out += ["## Profile: ztunnel flame graphs (py-spy, GIL-holding samples: Python CPU)", "", PROFILE_NOTE, ""]
        for figure, one in profile.items():
            out += profile_lines(figure, one)
        out.append("")
    waypoint_profile = result.get("profile_waypoint") or {}
    if waypoint_profile:
        out += ["## Profile: the waypoint's flame graph (py-spy, GIL-holding samples: Python CPU)", "",
                PROFILE_NOTE.replace("a ztunnel thread", "a waypoint thread"), ""]
        for figure, one in waypoint_profile.items():
            out += profile_lines(figure, one)
        out.append("")
    out += [f"Lab up in {result['lab_up_s']:.0f} s; {result['seconds']:.0f} s in all. "
            f"Every run: [{result['json']}]({result['json']}).", ""]
    return "\n".join(out)


# -- charts


def charts(result: dict, out_dir: Path, stem: str) -> list[str]:
    """One PNG per chart group (matplotlib, Agg); each bar labelled with its value and its ratio to
    the baseline. Returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [p["name"] for p in result["paths"]]
    baseline, summary, rat = result["baseline"], result["medians"], result["ratios"]
    written = []
    for chart, title in CHARTS.items():
        rows = [row for row in ROWS if row.chart == chart]
        fig, axes = plt.subplots(1, len(rows), figsize=(max(5.0, 3.6 * len(rows)), 3.8), squeeze=False)
        for ax, row in zip(axes[0], rows, strict=True):
            shown = [n for n in names if summary[n].get(row.key) is not None]
            values = [summary[n][row.key] for n in shown]
            bars = ax.bar(shown, values, color=["#9aa5b1" if n == baseline else "#3b6ea5" for n in shown])
            for bar, n, value in zip(bars, shown, values, strict=True):
                ratio = rat[n].get(row.key)
                label = fmt(value, row.digits) + ("" if n == baseline or ratio is None else f"\n{ratio:.2f}×")
                ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                            va="bottom", fontsize=8)
            ax.set_title(f"{row.label}", fontsize=9)
            ax.set_ylabel(row.unit, fontsize=8)
            ax.tick_params(labelsize=8)
            ax.margins(y=0.25)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        name = f"{stem}-{chart}.png"
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        written.append(name)
    return written
