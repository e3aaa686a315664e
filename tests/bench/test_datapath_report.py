"""Medians, ratios, issue #7's bars and the markdown, from runs shaped as the bench records them.

The figures are made up (no measured figure is asserted anywhere); only the arithmetic is checked.
"""

from __future__ import annotations

import pytest

from datapath import report
from datapath.measure import cpu_figures, l7_problems, round_order


def run(rps=None, cps=None, gbit_s=None, p99=1.0, cpu=None, rss=None, connections=16, requests=1000):
    out = {"p50_ms": p99 / 2, "p99_ms": p99, "requests": requests, "nginx_connections": connections,
           "errors": 0}
    if rps is not None:
        out["rps"] = rps
    if cps is not None:
        out["cps"] = cps
    if gbit_s is not None:
        out = {"gbit_s": gbit_s, "bytes": 2**30}
    if cpu is not None:
        out.update(cpu)
    if rss is not None:
        out["rss_max_mib"] = rss
    return out


def one_round(scale: float, stunnel_rss: float = 10.0, ztunnel_rss: float = 70.0) -> dict:
    """One round of three paths; `scale` moves every throughput so the medians are the middle round."""
    return {
        "direct": {"keepalive": run(rps=50000 * scale, p99=0.5), "conn": run(cps=5000 * scale, p99=5),
                   "bulk": run(gbit_s=20 * scale)},
        "stunnel": {"keepalive": run(rps=10000 * scale, p99=4, cpu={"cpu_ms_per_1k": 50.0},
                                     rss={"client": stunnel_rss, "server": stunnel_rss + 1}),
                    "conn": run(cps=800 * scale, p99=40, cpu={"cpu_ms_per_1k": 900.0}, connections=800),
                    "bulk": run(gbit_s=4 * scale, cpu={"cpu_ms_per_gib": 700.0})},
        "ambient": {"keepalive": run(rps=5000 * scale, p99=10, cpu={"cpu_ms_per_1k": 150.0},
                                     rss={"client": ztunnel_rss, "server": ztunnel_rss}),
                    "conn": run(cps=1000 * scale, p99=30, cpu={"cpu_ms_per_1k": 600.0}, connections=1000),
                    "bulk": run(gbit_s=1.5 * scale, cpu={"cpu_ms_per_gib": 2000.0})},
    }


ROUNDS = [one_round(1.1, stunnel_rss=12), one_round(0.9), one_round(1.0, ztunnel_rss=75)]
IDLE = {"stunnel": {"client": 9.6, "server": 9.6}, "ambient": {"client": 60.0, "server": 69.1}}


def test_round_order_rotates_so_each_path_leads_once():
    names = ["direct", "stunnel", "haproxy", "ambient"]
    orders = [round_order(names, n) for n in range(4)]
    assert orders[0] == names
    assert orders[1] == ["stunnel", "haproxy", "ambient", "direct"]
    assert [o[0] for o in orders] == names
    assert round_order(names, 4) == names
    assert all(sorted(o) == sorted(names) for o in orders)


def test_medians_take_the_middle_round_of_each_field():
    med = report.medians(ROUNDS)
    assert med["direct"]["keepalive.rps"] == 50000
    assert med["stunnel"]["conn.cps"] == 800
    assert med["ambient"]["bulk.gbit_s"] == 1.5
    assert med["ambient"]["keepalive.cpu_ms_per_1k"] == 150
    assert "keepalive.rss_max_mib" not in med["ambient"]  # nested: memory has its own rows
    assert "keepalive.cpu_ms_per_1k" not in med["direct"]  # no proxies, no CPU figure


def test_medians_skip_missing_values():
    rounds = [{"p": {"f": {"x": 1.0, "y": None}}}, {"p": {"f": {"x": 3.0}}}, {"p": {"f": {"x": 2.0, "y": 5}}}]
    assert report.medians(rounds) == {"p": {"f.x": 2.0, "f.y": 5}}


def test_summary_adds_idle_and_the_max_under_load():
    summary = report.summarize(ROUNDS, IDLE)
    assert summary["stunnel"]["rss_idle.client"] == 9.6
    assert summary["stunnel"]["rss_load.client"] == 12  # the max of the rounds, not the median
    assert summary["ambient"]["rss_load.server"] == 75
    assert "rss_idle.client" not in summary["direct"]


def test_ratios_are_to_the_baseline():
    summary = report.summarize(ROUNDS, IDLE)
    rat = report.ratios(summary, "stunnel")
    assert rat["stunnel"]["keepalive.rps"] == 1.0
    assert rat["ambient"]["keepalive.rps"] == 0.5
    assert rat["direct"]["bulk.gbit_s"] == 5.0
    assert rat["ambient"]["conn.p99_ms"] == 0.75
    assert rat["direct"]["keepalive.cpu_ms_per_1k"] is None  # direct has no proxies
    assert rat["ambient"]["rss_idle.server"] == pytest.approx(69.1 / 9.6, abs=1e-4)


def test_bars_pass_and_miss_with_their_margin():
    checks = {c["key"]: c for c in report.check_bars(report.summarize(ROUNDS, IDLE))}
    assert [c["bar"] for c in checks.values()] == [b.label for b in report.BARS]
    rps = checks["keepalive.rps"]  # 0.5x against a 0.4x bar
    assert (rps["value"], rps["result"], rps["margin"]) == (0.5, "PASS", 0.25)
    bulk = checks["bulk.gbit_s"]  # 0.375x against 0.5x
    assert (bulk["result"], bulk["margin"]) == ("MISS", -0.25)
    assert checks["conn.cps"]["result"] == "PASS"  # 1.25x against 1.0x
    p99 = checks["keepalive.p99_ms"]  # 2.5x against at most 3x
    assert (p99["result"], round(p99["margin"], 4)) == ("PASS", round(1 - 2.5 / 3, 4))
    assert checks["rss_idle.client"]["result"] == "PASS"  # 60 MiB
    assert checks["rss_idle.server"]["result"] == "MISS"  # 69.1 MiB
    assert checks["rss_idle.server"]["unit"] == "MiB"
    assert report.describe_bar(bulk) == "MISS, 25% short of the bar"
    assert report.describe_bar(rps) == "PASS, 25% above the bar"
    assert report.describe_bar(checks["rss_idle.server"]) == "MISS, 8% over the bar"


def test_bars_need_both_paths():
    summary = report.summarize(ROUNDS, IDLE)
    del summary["stunnel"]
    assert report.check_bars(summary) == []
    summary = report.summarize(ROUNDS, {})
    rss = [c for c in report.check_bars(summary) if c["key"].startswith("rss_idle")]
    assert [c["result"] for c in rss] == ["n/a", "n/a"]
    assert report.describe_bar(rss[0]) == "n/a (not measured)"


def test_connection_checks():
    checks = report.connection_checks(ROUNDS)
    assert checks["conn_connections_per_request"] == {"direct": 0.016, "stunnel": 0.8, "ambient": 1.0}
    assert checks["keepalive_connections"]["ambient"] == 16


def test_cpu_figures():
    assert cpu_figures({}, 10, "cpu_ms_per_1k") == {}
    figures = cpu_figures({"client": 1_500_000, "server": 500_000}, 40.0, "cpu_ms_per_1k")
    assert figures == {"cpu_ms": {"client": 1500.0, "server": 500.0, "total": 2000.0}, "cpu_ms_per_1k": 50.0}
    assert cpu_figures({"client": 1}, 0, "cpu_ms_per_gib")["cpu_ms_per_gib"] is None


def result_for(rounds, idle) -> dict:
    summary = report.summarize(rounds, idle)
    return {
        "date": "2026-11-21T10:00:00+00:00",
        "machine": {"cpus": 2, "kernel": "6.18", "code": {"commit": "fee610e1e961d5b8dc84", "modified": []}},
        "parameters": {"rounds": 3, "threads": 2, "connections": 16, "seconds": 5, "bulk_seconds": 5},
        "paths": [{"name": n, "namespace": f"dp-{n}", "title": f"the {n} path"} for n in summary],
        "baseline": "stunnel",
        "medians": summary,
        "ratios": report.ratios(summary, "stunnel"),
        "bars": report.check_bars(summary),
        "checks": report.connection_checks(rounds),
        "charts": ["2026-11-21-requests.png"],
        "profile": {"keepalive": {"run": {"rps": 4000.0}, "rate": 200, "duration_s": 8,
                                  "svg": {"ztunnel-node-0": "2026-11-21-flame-ztunnel-node-0-keepalive.svg"},
                                  "stacks": {"ztunnel-node-0": "2026-11-21-flame-ztunnel-node-0-keepalive.txt"},
                                  "summary": {"ztunnel-node-0": {
                                      "samples": 1200, "packages": [["trio", 0.6], ["hbone.tcp_stream", 0.4]],
                                      "top_self": [["TcpStream.send_all (hbone/tcp_stream.py)", 0.2276]]}}}},
        "lab_up_s": 5.2, "seconds": 420.0, "json": "2026-11-21.json",
    }


def test_markdown_table_has_a_row_per_figure_and_a_column_per_path():
    text = report.markdown(result_for(ROUNDS, IDLE))
    lines = text.splitlines()
    head = next(line for line in lines if line.startswith("| figure"))
    assert head == "| figure | direct | stunnel (baseline) | ambient |"
    rows = {line.split(" | ")[0][2:]: line for line in lines if line.startswith("| ") and " | " in line}
    for row in report.ROWS:
        assert f"{row.label} ({row.unit})" in rows
    assert rows["keep-alive requests/s (req/s)"] == (
        "| keep-alive requests/s (req/s) | 50,000 (5.00×) | 10,000 | 5,000 (0.50×) |")
    assert rows["proxies' CPU per 1,000 requests (CPU-ms)"].split(" | ")[1] == "–"  # direct
    assert "| bulk Gbit/s at least 0.5x stunnel's | 0.38× | 0.5× | MISS, 25% short of the bar |" in lines
    assert "| ztunnel RSS idle at most 64 MiB, node-1 | 69.10 MiB | 64 MiB | MISS, 8% over the bar |" in lines
    assert "![2026-11-21-requests.png](2026-11-21-requests.png)" in lines
    assert ("[ztunnel-node-0](2026-11-21-flame-ztunnel-node-0-keepalive.svg) "
            "([stacks](2026-11-21-flame-ztunnel-node-0-keepalive.txt))") in text
    assert "**GIL-holding samples only**" in text
    assert "  - ztunnel-node-0: 1,200 GIL-holding samples of 1,600 ticks (8 s at 200 Hz)" in lines
    assert "    - own time by package: `trio` 60.0%, `hbone.tcp_stream` 40.0%" in lines
    assert "    - own time by function (top 1): `TcpStream.send_all (hbone/tcp_stream.py)` 22.8%" in lines
    assert "0.02 to 1.00 connections per request" in text
    assert "kernel 6.18, commit fee610e1e9. " in text


def test_profile_lines_name_the_largest_packages_and_sum_the_rest():
    one = {"run": {"cps": 850.0}, "rate": 100, "duration_s": 4,
           "svg": {"node-0": "a.svg", "node-1": "b.svg"}, "stacks": {"node-0": "a.txt", "node-1": "b.txt"},
           "summary": {"node-0": {"samples": 200,  # the largest first, as profile.summarize gives them
                                  "packages": [["q", 0.3], *([f"p{i}", 0.08] for i in range(7)),
                                               ["r", 0.08], ["s", 0.06]],
                                  "top_self": [["f (p0/x.py)", 0.1], ["g (q.py)", 0.055]]},
                       "node-1": {"samples": 0, "packages": [], "top_self": []}}}
    assert report.profile_lines("conn", one) == [
        "- conn (850 conn/s while sampled at 100 Hz, not in the medians): "
        "[node-0](a.svg) ([stacks](a.txt)), [node-1](b.svg) ([stacks](b.txt))",
        "  - node-0: 200 GIL-holding samples of 400 ticks (4 s at 100 Hz)",
        "    - own time by package: `q` 30.0%, " + ", ".join(f"`p{i}` 8.0%" for i in range(7)) + ", other 14.0%",
        "    - own time by function (top 2): `f (p0/x.py)` 10.0%, `g (q.py)` 5.5%",
        "  - node-1: no GIL-holding sample in 400 ticks",
    ]


def test_markdown_without_the_bars_paths():
    rounds = [{k: v for k, v in r.items() if k != "ambient"} for r in ROUNDS]
    result = result_for(rounds, IDLE)
    result["profile"] = {}
    text = report.markdown(result)
    assert "not checked: the ambient or the stunnel path was not measured" in text
    assert "flame" not in text


def test_charts(tmp_path):
    pytest.importorskip("matplotlib")
    names = report.charts(result_for(ROUNDS, IDLE), tmp_path, "2026-11-21")
    assert names == [f"2026-11-21-{chart}.png" for chart in report.CHARTS]
    assert all((tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in names)


def test_warnings_name_the_runs_with_errors():
    rounds = [one_round(1.0), one_round(1.0)]
    rounds[1]["ambient"]["conn"] = {**rounds[1]["ambient"]["conn"], "errors": 3}
    assert report.run_warnings(rounds) == ["round 2, ambient conn: 3 wrk errors in 1000 requests"]
    result = result_for(rounds, IDLE)
    result["warnings"] = report.run_warnings(rounds)
    assert "**Warning:** round 2, ambient conn: 3 wrk errors in 1000 requests  " in report.markdown(result)


def test_idle_pss_rows_sit_beside_rss():
    pss = {path: {"client": 30.5, "server": 31.0} for path in IDLE}
    summary = report.summarize(ROUNDS, IDLE, pss)
    path = next(iter(IDLE))
    assert summary[path]["pss_idle.client"] == 30.5 and summary[path]["pss_idle.server"] == 31.0
    result = result_for(ROUNDS, IDLE) | {"medians": summary, "ratios": report.ratios(summary, "stunnel")}
    [row] = [line for line in report.markdown(result).splitlines() if "proxy PSS idle" in line and "client" in line]
    assert "30.5" in row


def test_cpu_figures_give_the_sides_asked_for_alone():
    usec = {"client": 400_000, "waypoint": 2_000_000, "server": 600_000}
    figures = cpu_figures(usec, 10.0, "cpu_ms_per_1k", ("waypoint",))
    assert figures["cpu_ms_per_1k"] == 300.0  # the whole path
    assert figures["waypoint_cpu_ms_per_1k"] == 200.0  # the waypoint alone
    assert "client_cpu_ms_per_1k" not in figures
    assert cpu_figures({"waypoint": 1}, 0, "cpu_ms_per_1k", ("waypoint",))["waypoint_cpu_ms_per_1k"] is None


def test_l7_problems():
    assert l7_problems({"/": 200, "/private": 403}) == []
    assert l7_problems({"/": 200, "/private": 200}) == ["GET /private answered 200, expected 403"]
    assert l7_problems({"/": None, "/private": 403}) == ["GET / answered nothing, expected 200"]
    assert len(l7_problems({})) == 2


def l7_round(scale: float) -> dict:
    """The L7 rows as the bench records them: keep-alive only, each side's CPU also alone."""
    return {
        "haproxy-l7": {"keepalive": run(rps=8000 * scale, p99=5, cpu={
            "cpu_ms_per_1k": 80.0, "client_cpu_ms_per_1k": 40.0, "server_cpu_ms_per_1k": 40.0},
            rss={"client": 12.0, "server": 12.0})},
        "waypoint": {"keepalive": run(rps=2000 * scale, p99=30, cpu={
            "cpu_ms_per_1k": 900.0, "client_cpu_ms_per_1k": 200.0, "waypoint_cpu_ms_per_1k": 500.0,
            "server_cpu_ms_per_1k": 200.0}, rss={"client": 70.0, "waypoint": 90.0, "server": 70.0})},
    }


def test_l7_section_and_bars():
    rounds = [{**one, **l7_round(scale)} for one, scale in zip(ROUNDS, (1.1, 0.9, 1.0), strict=True)]
    idle = {**IDLE, "waypoint": {"client": 60.0, "waypoint": 80.5, "server": 69.1},
            "haproxy-l7": {"client": 9.0, "server": 9.5}}
    result = result_for(rounds, idle)
    summary = result["medians"]
    assert "keepalive.waypoint_cpu_ms_per_1k" in summary["waypoint"] and "conn.cps" not in summary["waypoint"]
    checks = report.check_bars(summary, "waypoint", "haproxy-l7", report.L7_BARS)
    assert [(c["value"], c["result"]) for c in checks] == [(0.25, "MISS"), (500.0, "MISS")]
    assert report.check_bars(summary, "ambient", "stunnel", report.L7_BARS)[1]["result"] == "n/a"
    result |= {"bars_l7": checks, "waypoint_node": "node-0",
               "l7_checks": {"waypoint": {"/": 200, "/private": 403}}}
    lines = report.markdown(result).splitlines()
    assert "## L7: the waypoint against a haproxy pair in http mode (issue #19)" in lines
    assert "| keep-alive requests/s (req/s) | 8,000 | 2,000 | 0.25× |" in lines
    assert "| CPU per 1,000 requests, whole path (CPU-ms) | 80.0 | 900.0 | 11.25× |" in lines
    assert "| CPU per 1,000 requests, the waypoint alone (CPU-ms) | – | 500.0 | – |" in lines
    assert "| RSS idle, the waypoint (MiB) | – | 80.5 | – |" in lines
    assert "| RSS under load (max), the waypoint (MiB) | – | 90.0 | – |" in lines
    assert ("| waypoint path requests/s at least 0.5x haproxy-l7's | 0.25× | 0.5× | MISS, 50% short of the bar |"
            in lines)
    assert ("| waypoint alone at most 250 CPU-ms per 1,000 requests | 500.00 CPU-ms | 250 CPU-ms | "
            "MISS, 100% over the bar |") in lines
    text = "\n".join(lines)
    assert "placed the waypoint pod on node-0" in text and "waypoint: GET / 200, GET /private 403" in text
    # The L7 rows are columns of the main table too, with "–" for the figures they do not run.
    row = next(line for line in lines if line.startswith("| new connections/s"))
    assert row.endswith("| – | – |")


def test_no_l7_section_without_the_l7_rows():
    assert "## L7" not in report.markdown(result_for(ROUNDS, IDLE))


def test_the_waypoint_profile_has_its_own_section():
    result = result_for(ROUNDS, IDLE)
    result["profile_waypoint"] = {"keepalive": {
        "run": {"rps": 1500.0}, "rate": 200, "duration_s": 8,
        "svg": {"waypoint": "2026-11-21-flame-waypoint-keepalive.svg"},
        "stacks": {"waypoint": "2026-11-21-flame-waypoint-keepalive.txt"},
        "summary": {"waypoint": {"samples": 900, "packages": [["h11", 0.5], ["waypoint.h1", 0.5]],
                                 "top_self": [["f (waypoint/h1.py)", 0.1]]}}}}
    text = report.markdown(result)
    assert "## Profile: the waypoint's flame graph" in text
    assert "[waypoint](2026-11-21-flame-waypoint-keepalive.svg)" in text
    assert "a waypoint thread held the GIL" in text


class FakeLab:
    """`run_in` answers curl's status line from a table (request URL -> answers in turn); no lab."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers, self.calls = answers, []
        self.layout = None

    def run_in(self, namespace, pod, *command, timeout):
        url = command[-1]
        self.calls.append((namespace, pod, url))
        return self.answers[url].pop(0)


def l7_runner(answers):
    from datapath.measure import Runner, Settings
    from datapath.paths import Waypoint

    lab = FakeLab(answers)
    runner = Runner.__new__(Runner)  # without the cgroups: check_l7 reads none
    runner.lab, runner.settings = lab, Settings()
    runner.paths, runner.server_ips = {"waypoint": Waypoint()}, {"waypoint": "10.244.1.6"}
    return runner, lab


def test_check_l7_passes_when_the_rule_is_in_force_and_retries_no_answer_only():
    runner, lab = l7_runner({"http://10.244.1.6:8080/": ["000", "200"], "http://10.244.1.6:8080/private": ["403"]})
    assert runner.check_l7("waypoint") == {"/": 200, "/private": 403}
    assert [c[:2] for c in lab.calls] == [("dp-waypoint", "client")] * 3


def test_check_l7_fails_when_the_denied_path_is_served():
    from datapath.lab import BenchFailure

    runner, _lab = l7_runner({"http://10.244.1.6:8080/": ["200"], "http://10.244.1.6:8080/private": ["200"]})
    with pytest.raises(BenchFailure, match="GET /private answered 200, expected 403"):
        runner.check_l7("waypoint")


def test_the_wasm_section_gives_the_plugins_cost_as_the_waypoints_difference():
    result = {"l7_subject": "waypoint", "medians": {
        "waypoint": {"keepalive.waypoint_cpu_ms_per_1k": 197.8, "keepalive.rps": 4380.0, "rss_idle.waypoint": 64.0},
        "waypoint-wasm": {"keepalive.waypoint_cpu_ms_per_1k": 241.3, "keepalive.rps": 3900.0,
                          "rss_idle.waypoint": 83.1}}}
    text = "\n".join(report.wasm_lines(result))
    assert "**43.5 CPU-µs**" in text
    assert "| CPU per request, the waypoint alone (CPU-µs) | 197.8 | 241.3 | +43.5 |" in text
    assert "| RSS idle, the waypoint (MiB) | 64.0 | 83.1 | 19.1 |" in text
    assert report.wasm_lines({"medians": {"waypoint": {"keepalive.waypoint_cpu_ms_per_1k": 1.0}}}) == []
