"""The attacks' report: the bystander's gaps, a component's before/peak/after, each verdict, the table."""

from __future__ import annotations

from attacks import report


def request(start: float, ok: bool = True, took: float = 0.01, error: str | None = None) -> dict:
    return {"start": start, "end": start + took, "ok": ok, "error": None if ok else (error or "timeout")}


def steady(start: float, end: float, period: float = 0.1) -> list[dict]:
    return [request(start + i * period) for i in range(int((end - start) / period))]


def sample(at: float, fds: int, rss_mib: float, pid: int = 100, component: str = "ztunnel") -> dict:
    return {"at": at, "component": component, "pid": pid, "fds": fds, "rss_kib": int(rss_mib * 1024)}


def test_the_longest_gap_runs_from_the_last_success_before_failures_to_the_next_success():
    requests = steady(0.0, 5.0) + [request(5.0, ok=False, took=5.0), request(10.0, ok=False, took=5.0)] \
        + steady(15.0, 20.0)
    seen = report.bystander_window(requests, 0.0, 20.0)
    assert seen["failed"] == 2 and seen["errors"] == {"timeout": 2}
    assert 10.0 < seen["max_gap_s"] < 10.2  # from the success ending 4.91 to the one ending 15.01


def test_a_window_without_any_success_is_one_gap_as_long_as_the_window():
    seen = report.bystander_window([request(1.0, ok=False, took=5.0)], 0.0, 8.0)
    assert seen == {"requests": 1, "failed": 1, "errors": {"timeout": 1}, "max_gap_s": 8.0, "slowest_s": 5.0,
                    "slowest_at_s": 1.0}


def test_requests_outside_the_window_do_not_count():
    seen = report.bystander_window(steady(0.0, 10.0), 2.0, 4.0)
    assert seen["requests"] == 21 and seen["failed"] == 0 and seen["max_gap_s"] < 0.2


def test_a_component_window_gives_before_peak_after_and_every_pid_seen():
    samples = [sample(0.5, 25, 100.0), sample(1.5, 14_375, 440.0), sample(2.5, 30, 120.0, pid=101),
               sample(1.0, 0, 9000.0, component="controlplane")]
    window = report.component_window(samples, "ztunnel", 1.0, 3.0)
    assert window == {"samples": 2, "pids": [100, 101], "fds_before": 25, "fds_peak": 14_375, "fds_after": 30,
                      "rss_mib_before": 100.0, "rss_mib_peak": 440.0, "rss_mib_after": 120.0}
    assert report.growth(window, "fds") == 14_350 and report.growth(window, "rss_mib") == 340.0
    assert report.component_window(samples, "daemon", 1.0, 3.0) == {"samples": 0}


def record(key: str, detail: dict, fds: tuple[int, int] = (38, 40), rss: tuple[float, float] = (68.0, 68.5),
           requests: list[dict] | None = None, **extra) -> dict:
    samples = [sample(0.0, fds[0], rss[0]), sample(1.0, fds[1], rss[1])]
    requests = steady(0.0, 5.0) if requests is None else requests
    return {"key": key, "detail": detail, "ztunnel": report.component_window(samples, "ztunnel", 0.5, 5.0),
            "bystander": report.bystander_window(requests, 0.5, 5.0), **extra}


LOOP_FIXED = {"plain": {"outcome": "reset"}, "hbone": {"statuses": {"1": "503"}}}


def test_the_forwarding_loop_passes_when_refused_both_ways_and_ztunnel_keeps_its_fds():
    assert report.verdict(record("1-loop", LOOP_FIXED))["pass"]
    looping = record("1-loop", LOOP_FIXED, fds=(25, 18_412))
    assert not report.verdict(looping)["pass"] and "fds +18387" in report.verdict(looping)["why"]
    assert not report.verdict(record("1-loop", {**LOOP_FIXED, "hbone": {"statuses": {"1": "200"}}}))["pass"]


def test_a_flood_passes_on_enhance_your_calm_with_bounded_rss_and_the_bystander_served():
    calm = {"goaway": {"code": "ENHANCE_YOUR_CALM", "last_stream": 401}}
    assert report.verdict(record("3-rapid-reset", calm))["pass"]
    assert not report.verdict(record("4-ping-flood", calm, rss=(91.0, 418.0)))["pass"]
    assert not report.verdict(record("2-continuation", {"goaway": None}))["pass"]
    frozen = steady(0.0, 1.0) + [request(1.0, ok=False, took=5.0)] + steady(50.0, 55.0)
    stalled = report.verdict(record("2-continuation", calm, requests=frozen))
    assert not stalled["pass"] and "1 failed" in stalled["why"]


def test_a_restarted_ztunnel_fails_the_attack_whatever_else_it_shows():
    calm = {"goaway": {"code": "ENHANCE_YOUR_CALM"}}
    restarted = record("3-rapid-reset", calm)
    restarted["ztunnel"]["pids"] = [100, 101]
    assert not report.verdict(restarted)["pass"]


def test_the_plaintext_flood_passes_when_connections_over_the_pod_cap_are_refused():
    flood = {"connected": 7793}
    held = record("5-plaintext-inbound", flood, fds=(38, 8040), pod_cap=4000, refused=4000)
    assert report.verdict(held)["pass"]
    assert not report.verdict(record("5-plaintext-inbound", flood, fds=(38, 15_624), pod_cap=4000,
                                     refused=0))["pass"]


def test_the_yaml_bomb_passes_with_bounded_rss_and_a_finding_in_the_logs():
    def bomb(cp_peak: float, findings: list[str]) -> dict:
        rec = record("7-yaml-bomb", {}, findings=findings, watch_s=20.0)
        rec["controlplane"] = report.component_window([sample(0.0, 0, 69.0), sample(1.0, 0, cp_peak)],
                                                      "ztunnel", 0.5, 5.0)
        rec["daemon"] = report.component_window([sample(0.0, 0, 75.0), sample(1.0, 0, 94.0)], "ztunnel", 0.5, 5.0)
        return rec

    line = "controlplane.log: bomb.yaml:8: aliases expand to more than 500000 nodes; file refused"
    assert report.verdict(bomb(151.0, [line]))["pass"]
    assert not report.verdict(bomb(7000.0, [line]))["pass"]
    assert not report.verdict(bomb(151.0, []))["pass"]


def test_the_half_written_policy_passes_only_with_no_denial_and_the_final_policy_in_force():
    assert report.verdict(record("8-half-written", {}, policy_applied=True))["pass"]
    assert not report.verdict(record("8-half-written", {}, policy_applied=False))["pass"]
    denied = steady(0.0, 1.0) + [request(1.0 + i * 0.1, ok=False) for i in range(60)] + steady(7.0, 10.0)
    assert not report.verdict(record("8-half-written", {}, requests=denied, policy_applied=True))["pass"]


def test_the_markdown_table_puts_each_after_figure_beside_the_issues():
    rec = record("1-loop", LOOP_FIXED)
    rec["verdict"] = report.verdict(rec)
    rec["ztunnel_warnings"] = {"count": 2, "first": ["WARNING ambient.ztunnel.proxy: a loop refused"]}
    result = {"date": "2026-12-06T22:34:13+00:00", "code": {"commit": "abc1234", "modified": []},
              "parameters": {"lab": "attacks", "target_node": "node-1"}, "seconds": 120.0, "attacks": [rec],
              "notes": ["a note"], "json": "2026-12-06-attacks.json"}
    text = report.markdown(result)
    row = next(line for line in text.splitlines() if line.startswith("| 1. "))
    assert "18,412 fds in 12 s" in row and "HBONE: :status 503" in row and row.endswith("| PASS |")
    assert "ztunnel logged 2 warning(s), first: `WARNING ambient.ztunnel.proxy: a loop refused`" in text
    assert "- a note" in text and "`2026-12-06-attacks.json`" in text


def test_the_slowest_request_is_named_with_when_it_was_sent():
    requests = steady(0.0, 5.0) + [request(5.0, took=1.9)] + steady(7.0, 8.0)
    seen = report.bystander_window(requests, 1.0, 8.0)
    assert (seen["slowest_s"], seen["slowest_at_s"]) == (1.9, 4.0)
    why = report.verdict(record("8-half-written", {}, requests=requests, policy_applied=True))["why"]
    assert "slowest 1.90 s (sent 4.5 s into the window)" in why  # record()'s window starts at 0.5


def test_the_ping_flood_passes_only_if_the_server_also_closes_its_paced_run():
    calm = {"goaway": {"code": "ENHANCE_YOUR_CALM"}, "batch": 3855, "pings_sent": 3855}
    closed = {"goaway": None, "batch": 500, "pause_s": 0.005, "pings_sent": 554_500,
              "write_outcome": "server closed: ConnectionResetError", "write_seconds": 31.2, "connection": "reset"}
    assert report.verdict(record("4-ping-flood", {**calm, "paced": closed}))["pass"]
    # Open for the whole bound; the end came only once the attacker read what the server had sent.
    held_open = {**closed, "write_outcome": "time bound (45 s)", "connection": "eof"}
    assert not report.verdict(record("4-ping-flood", {**calm, "paced": held_open}))["pass"]
    figure = report.after_figure(record("4-ping-flood", {**calm, "paced": closed}))
    assert "554,500 PINGs in writes of 500 with pauses: server closed" in figure


def test_a_slow_bystander_request_gets_a_note_even_when_the_attack_passes():
    slow = record("5-plaintext-inbound", {"connected": 8000}, requests=steady(0.0, 5.0) + [request(4.0, took=1.95)])
    fast = record("1-loop", LOOP_FIXED)
    assert report.findings([slow, fast]) == [
        "5-plaintext-inbound: the slowest bystander request took 1.95 s, sent 3.5 s after the attack began"]


def test_a_paced_flood_held_open_until_the_attacker_read_is_a_finding():
    held = {"write_outcome": "time bound (45 s)", "write_seconds": 45.9, "bytes_sent": 9_435_000,
            "bytes_read": 2_890_055, "connection": "eof", "goaway": None}
    (note,) = report.findings([record("4-ping-flood", {"goaway": {"code": "ENHANCE_YOUR_CALM"}, "paced": held})])
    assert "stayed open for its whole bound (45.9 s, 9,435,000 bytes written" in note
