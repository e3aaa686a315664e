"""The data path side by side (issues #7, #19; root): direct TCP, stunnel, haproxy, ambient, and the L7 rows.

One lab (`ambient lab up`, lab `bench-dp`, 2 nodes, its state under a private AMBIENT_LAB_ROOT in a
temporary directory); each path (`bench/datapath/paths.py`) is a namespace with a server pod on
node-1 (nginx, iperf3 -s, and the path's server-side proxy) and a client pod on node-0 (where the
load generators run with `ambient exec`, and the client-side proxy). After one short untimed warm-up
of every figure on every path, --rounds rounds; each round runs every figure (keep-alive requests,
new connections, bulk) on every path back to back, the path order rotated by one each round. Every
run is bounded in time (wrk -d, iperf3 -t, and a timeout on the command). The proxies' CPU comes
from their cgroups, their RSS from /proc (`bench/datapath/lab.py`). Then one profiled keep-alive and
one profiled new-connections run on the ambient path with py-spy on both ztunnels (GIL-holding
samples: SVG flame graphs, and collapsed stacks that the report summarizes).

The L7 rows (issue #19): `haproxy-l7` (the haproxy pair in http mode with a path ACL) and `waypoint`
(client -> ztunnel -> waypoint -> ztunnel -> server, with the same rule as an AuthorizationPolicy on
the waypoint). They run the keep-alive figure only, in the same rounds and with the same wrk load;
before the warm-up each must answer "/" with 200 and a denied path with 403, else the bench fails.
The waypoint is profiled during one more keep-alive run, as the ztunnels are.

The lab is always taken down, also on an error or SIGTERM (`ambient lab down`; should that fail,
SIGTERM to the lab's daemon); on a failure the lab's logs are first copied to a directory whose path
is printed. All traffic stays inside the lab's namespaces. Writes bench/results/<date>.json (every
run), <date>.md (the table, the bars), <date>-*.png (charts) and <date>-flame-{ztunnel-*,waypoint}-*.{svg,txt}.

Run: `make bench` (or `sudo .venv/bin/python bench/datapath_bench.py --rounds 5`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from datapath import report  # noqa: E402
from datapath.lab import (  # noqa: E402
    BenchFailure,
    Lab,
    code_state,
    container_pids,
    exit_on_sigterm,
    lab_preflight,
    lab_session,
    only_pid,
    process_rss_by_mapping,
    pss_kib,
    temporary_lab,
    ztunnel_pids,
)
from datapath.measure import FIGURES, Runner, Settings, round_order  # noqa: E402
from datapath.paths import (  # noqa: E402
    BASELINE,
    L7_BASELINE,
    L7_SUBJECT,
    PATHS,
    WASM_PLUGIN,
    MtlsProxyPath,
    Waypoint,
    manifests,
    planned_pods,
    spiffe_id,
)
from datapath.profile import profile, py_spy  # noqa: E402

LAB = "bench-dp"
READY_TIMEOUT_S = 90
ENROLL_TIMEOUT_S = 60
TOOLS = ("wrk", "h2load", "iperf3", "nginx", "stunnel", "haproxy", "ss", "curl")
# (argv, stream) of each tool's version, for the record.
VERSIONS = {"wrk": ["wrk", "-v"], "h2load": ["h2load", "--version"], "iperf3": ["iperf3", "--version"],
            "nginx": ["nginx", "-v"], "stunnel": ["stunnel", "-version"], "haproxy": ["haproxy", "-v"],
            "openssl": ["openssl", "version"]}
# (name, low, high) of each bounded parameter; --rounds at most 5 keeps a run under 20 minutes.
BOUNDS = (("rounds", 3, 5), ("seconds", 2, 10), ("bulk_seconds", 2, 10), ("connections", 1, 64),
          ("threads", 1, 4), ("warmup_seconds", 1, 5), ("profile_seconds", 0, 10))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians over them (3-5)")
    parser.add_argument("--seconds", type=float, default=5.0, help="each wrk run (2-10)")
    parser.add_argument("--bulk-seconds", type=float, default=5.0, help="each iperf3 run (2-10)")
    parser.add_argument("--connections", type=int, default=16, help="wrk -c (1-64)")
    parser.add_argument("--threads", type=int, default=2, help="wrk -t (1-4)")
    parser.add_argument("--warmup-seconds", type=float, default=1.0, help="the untimed warm-up of each figure (1-5)")
    parser.add_argument("--profile-seconds", type=float, default=5.0,
                        help="each profiled ambient and waypoint run (0-10; 0: no flame graphs)")
    parser.add_argument("--paths", default=",".join(p.name for p in PATHS),
                        help=f"which paths, in report order (default: all of {', '.join(p.name for p in PATHS)})")
    args = parser.parse_args()
    for name, low, high in BOUNDS:
        if not low <= getattr(args, name) <= high:
            parser.error(f"--{name.replace('_', '-')} must be within {low}-{high}")
    known = {p.name: p for p in PATHS}
    wanted = [n.strip() for n in args.paths.split(",") if n.strip()]
    if not wanted or any(n not in known for n in wanted) or len(set(wanted)) != len(wanted):
        parser.error(f"--paths: a comma-separated subset of {', '.join(known)}")
    args.selected = tuple(p for p in PATHS if p.name in wanted)
    if any(p.warms_up for p in args.selected) and not WASM_PLUGIN.is_file():
        parser.error(f"{WASM_PLUGIN} is not built: run `make wasm-plugins` (make bench does)")
    if args.threads > args.connections:
        parser.error("--threads must not exceed --connections (wrk gives each thread at least one connection)")
    return args


def preflight(args) -> str | None:
    also = ["py-spy"] if args.profile_seconds and py_spy() is None else []
    if importlib.util.find_spec("matplotlib") is None:
        also.append("matplotlib")
    return lab_preflight(REPO, TOOLS, also, " (`make bench` installs them)")


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), None)
    versions = {}
    for tool, argv in VERSIONS.items():
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            versions[tool] = next((line.strip() for line in (done.stdout + done.stderr).splitlines()
                                   if line.strip() and "inetd" not in line), None)
        except (OSError, subprocess.TimeoutExpired):
            versions[tool] = None
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(), "tools": versions, "code": code_state(REPO)}


def check_lab(lab: Lab, paths, planned: dict) -> dict:
    """Every pod on its node, at its planned IP, ready (a waypoint's pod too); the ambient pods enrolled
    (a bounded wait: the node agent enrolls a pod once it runs)."""
    deadline = time.monotonic() + ENROLL_TIMEOUT_S
    while True:
        status = lab.status()
        pods = {(p["namespace"], p["name"]): p for p in status["pods"]}
        wrong, waiting = [], []
        for path in paths:
            for name in ("server", "client", *path.extra_pods()):
                pod, (node, ip) = pods.get((path.namespace, name)), planned[(path.namespace, name)]
                if pod is None:
                    wrong.append(f"{path.namespace}/{name} is missing")
                elif (pod["node"], pod["ip"], pod["all_ready"]) != (node, ip, True):
                    wrong.append(f"{path.namespace}/{name}: on {pod['node']} at {pod['ip']} (planned {node} at {ip}), "
                                 f"ready {pod['ready']}: {pod['message']}")
                elif path.enrolled and name not in path.extra_pods() and not pod["enrolled"]:
                    waiting.append(f"{path.namespace}/{name} is not enrolled ({pod['capture']})")
        if not wrong and not waiting:
            return status
        if wrong or time.monotonic() > deadline:
            raise BenchFailure("the lab is not as planned:\n  " + "\n  ".join(wrong + waiting))
        time.sleep(0.5)


def progress_line(one: dict, order: list[str]) -> str:
    shown = {"keepalive": ("rps", "{:,.0f} req/s"), "conn": ("cps", "{:,.0f} conn/s"),
             "bulk": ("gbit_s", "{:.2f} Gbit/s")}
    parts = []
    for name in order:
        figures = [template.format(one[name][figure][key]) for figure, (key, template) in shown.items()
                   if figure in one[name]]
        parts.append(f"{name} {', '.join(figures)}")
    return "; ".join(parts)


def profile_waypoint(args, runner: Runner, path: Waypoint, out_dir: Path, stem: str, warnings: list[str]) -> dict:
    """py-spy on the waypoint's one process during one keep-alive run; {} (and a warning) if that fails."""
    try:
        pid = only_pid(runner.cgroups[path.name]["waypoint"])
        return profile(runner, path.name, {"waypoint": pid}, out_dir, stem, args.profile_seconds, ("keepalive",))
    except BenchFailure as exc:  # the measured rounds stand without the flame graph
        warnings.append(f"no waypoint flame graph: {exc}")
        print(f"warning: {warnings[-1]}", file=sys.stderr, flush=True)
        return {}


def run_lab(args, lab: Lab, out_dir: Path, stem: str, started: float) -> dict:
    """Build the lab, measure, profile; the raw figures. The caller takes the lab down."""
    layout, paths = lab.layout, args.selected
    names = [p.name for p in paths]
    layout.config_dir.mkdir()
    docs = manifests(paths, layout)
    planned = planned_pods(docs, LAB)
    ips = {key: ip for key, (_node, ip) in planned.items()}
    for path in paths:
        path.prepare(layout, ips[(path.namespace, "server")])
    (layout.config_dir / "pods.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))

    lab_up_s = lab.up(nodes=2, ready_timeout=READY_TIMEOUT_S,
                      workload_tokens=tuple(spiffe_id(p.namespace) for p in paths if isinstance(p, MtlsProxyPath)))
    status = check_lab(lab, paths, planned)
    placed = {f"{p.namespace}/{name}": planned[(p.namespace, name)][0] for p in paths for name in p.extra_pods()}
    pids = {**container_pids(status), **ztunnel_pids(status)}
    servers = {p.name: ips[(p.namespace, "server")] for p in paths}
    runner = Runner(lab, paths, servers, Settings(threads=args.threads, connections=args.connections,
                                                  seconds=args.seconds, bulk_seconds=args.bulk_seconds))
    idle = {p.name: runner.idle_mib(p.name) for p in paths if p.accounted(layout)}
    idle_pss = {p.name: runner.idle_mib(p.name, pss_kib) for p in paths if p.accounted(layout)}
    ztunnel_memory = {name: process_rss_by_mapping(pid) for name, pid in ztunnel_pids(status).items()}
    print(f"lab up in {lab_up_s:.0f} s; idle RSS (MiB): " + "; ".join(f"{n} {v}" for n, v in idle.items())
          + "; PSS: " + "; ".join(f"{n} {v}" for n, v in idle_pss.items())
          + "".join(f"; {pod} on {node}" for pod, node in placed.items()), flush=True)

    # Before anything is measured: the L7 rows' proxies are in the path and apply the rule.
    l7_checks = {p.name: runner.check_l7(p.name) for p in paths if p.l7}
    if l7_checks:
        print("L7 rule in force: " + "; ".join(f"{name} " + ", ".join(f"{rp} {code}" for rp, code in codes.items())
                                                for name, codes in l7_checks.items()), flush=True)
    warmup = {p.name: {f: runner.measure(p.name, f, args.warmup_seconds) for f in p.figures} for p in paths}
    print(f"warm-up done ({time.monotonic() - started:.0f} s)", flush=True)
    rounds, orders = [], []
    for n in range(args.rounds):
        order = round_order(names, n)
        one: dict[str, dict] = {name: {} for name in names}
        for figure in FIGURES:
            for name in order:
                if figure in runner.paths[name].figures:
                    one[name][figure] = runner.measure(name, figure)
        rounds.append({name: one[name] for name in names})
        orders.append(order)
        print(f"round {n + 1}/{args.rounds} ({time.monotonic() - started:.0f} s; order {', '.join(order)}): "
              + progress_line(one, names), flush=True)

    profiled, warnings = {}, []
    if args.profile_seconds and "ambient" in names:
        try:
            profiled = profile(runner, "ambient", ztunnel_pids(status), out_dir, stem, args.profile_seconds)
            print(f"profiled ({time.monotonic() - started:.0f} s): "
                  + ", ".join(name for one in profiled.values() for kind in ("svg", "stacks")
                              for name in one[kind].values()), flush=True)
        except BenchFailure as exc:  # the measured rounds stand without the flame graphs
            warnings.append(f"no flame graphs: {exc}")
            print(f"warning: {warnings[-1]}", file=sys.stderr, flush=True)
    waypoint_profiled = {}
    waypoints = [p for p in paths if isinstance(p, Waypoint)]
    if args.profile_seconds and waypoints:
        waypoint_profiled = profile_waypoint(args, runner, waypoints[0], out_dir, stem, warnings)
        if waypoint_profiled:
            print(f"profiled the waypoint ({time.monotonic() - started:.0f} s): "
                  + ", ".join(waypoint_profiled["keepalive"]["svg"].values()), flush=True)
    final = lab.status()
    now = {**container_pids(final), **ztunnel_pids(final)}
    restarted = sorted(name for name in pids if now.get(name) != pids[name])
    if restarted:  # kept, but said first: a restart changes that side's CPU and memory figures
        warnings.append(f"restarted during the run: {', '.join(restarted)}")
        print(f"warning: {warnings[-1]}", file=sys.stderr, flush=True)
    return {"lab_up_s": lab_up_s, "servers": servers, "idle": idle, "idle_pss": idle_pss,
            "ztunnel_memory": ztunnel_memory, "warmup": warmup,
            "rounds": rounds, "orders": orders, "profile": profiled, "warnings": warnings,
            "placed": placed, "l7_checks": l7_checks, "profile_waypoint": waypoint_profiled}


def build_result(args, measured: dict, info: dict, stem: str) -> dict:
    rounds, idle, idle_pss = measured["rounds"], measured["idle"], measured["idle_pss"]
    summary = report.summarize(rounds, idle, idle_pss)
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": info,
        "parameters": {"rounds": args.rounds, "threads": args.threads, "connections": args.connections,
                       "seconds": args.seconds, "bulk_seconds": args.bulk_seconds,
                       "warmup_seconds": args.warmup_seconds, "profile_seconds": args.profile_seconds,
                       "lab": LAB, "nodes": 2, "client_node": "node-0", "server_node": "node-1"},
        "paths": [{"name": p.name, "namespace": p.namespace, "title": p.title, "proxy": p.proxy,
                   "enrolled": p.enrolled, "server_ip": measured["servers"][p.name]} for p in args.selected],
        "baseline": BASELINE,
        "medians": summary,  # {path: {row key: median over the rounds}}, and memory (idle; max under load)
        "ratios": report.ratios(summary, BASELINE),
        "bars": report.check_bars(summary, "ambient", BASELINE),
        "l7_subject": L7_SUBJECT, "l7_baseline": L7_BASELINE,
        "bars_l7": report.check_bars(summary, L7_SUBJECT, L7_BASELINE, report.L7_BARS),
        "l7_checks": measured["l7_checks"],  # {path: {request path: HTTP status}} before the warm-up
        "placed": measured["placed"],  # {"<ns>/<pod>": node} of the pods the lab placed (the waypoint's)
        "waypoint_node": next(iter(measured["placed"].values()), None),
        "memory": {"idle_mib": idle, "idle_pss_mib": idle_pss, "under_load_max_mib": report.load_rss(rounds)},
        "ztunnel_memory": measured["ztunnel_memory"],  # idle KiB by mapping
        "checks": report.connection_checks(rounds),
        "warnings": measured["warnings"] + report.run_warnings(rounds),
        "warmup": measured["warmup"],
        "round_orders": measured["orders"],
        "all_runs": rounds,  # every round: {path: {figure: run}}
        "profile": measured["profile"],
        "profile_waypoint": measured["profile_waypoint"],
        "lab_up_s": round(measured["lab_up_s"], 1),
        "json": f"{stem}.json",
    }


def main() -> int:
    args = parse_args()
    problem = preflight(args)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    exit_on_sigterm()
    started = time.monotonic()
    stem = dt.date.today().isoformat()
    out_dir = REPO / "bench" / "results"
    seconds = {"keepalive": args.seconds + 2, "conn": args.seconds + 2, "bulk": args.bulk_seconds + 2}
    estimate = (60 + sum(args.rounds * sum(seconds[f] for f in p.figures) + len(p.figures) * args.warmup_seconds + 8
                         for p in args.selected) + 3 * args.profile_seconds + 20)
    print(f"data path bench: {', '.join(p.name for p in args.selected)}; {args.rounds} rounds; "
          f"about {estimate / 60:.0f} minutes", flush=True)

    lab, work = temporary_lab(LAB)
    with lab_session(lab, work):
        info = machine()
        measured = run_lab(args, lab, out_dir, stem, started)

    result = build_result(args, measured, info, stem)
    result["charts"] = report.charts(result, out_dir, stem)
    result["seconds"] = round(time.monotonic() - started, 1)
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    text = report.markdown(result)
    (out_dir / f"{stem}.md").write_text(text)
    print("\n" + text)
    print(f"written: bench/results/{stem}.json, {stem}.md, {', '.join(result['charts'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
