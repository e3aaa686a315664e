"""The soak's report: requests per phase, each kill's failure window and recovery, drift, the verdict."""

from __future__ import annotations

from soak import report


def bucket(second: float, ok: int = 10, failed: int = 0, corrupted: int = 0, first: float | None = None,
           last: float | None = None, recovered: float | None = None, gap: float = 0.1) -> dict:
    return {"second": second, "ok": ok, "failed": failed, "corrupted": corrupted, "first_failure": first,
            "last_failure": last, "recovered": recovered, "longest_gap": gap, "errors": {}}


def phases() -> list[dict]:
    return [{"name": "warm-up", "kill": None, "start": 0.0, "end": 10.0},
            {"name": "baseline", "kill": None, "start": 10.0, "end": 20.0},
            {"name": "kill ztunnel-node-1", "kill": "ztunnel-node-1", "start": 20.0, "end": 40.0,
             "killed_pid": 100, "back_pid": 200, "back_at": 20.6, "ready_at": 21.0, "served_at": 24.0}]


def steady(start: int, end: int) -> list[dict]:
    return [bucket(s) for s in range(start, end)]


def sample(at: float, phase: str, component: str, pid: int, fds: int, rss_kib: int, point: str = "start") -> dict:
    return {"at": at, "phase": phase, "point": point, "component": component, "pid": pid, "fds": fds,
            "rss_kib": rss_kib}


def test_the_failure_window_spans_the_first_to_the_last_failure_after_the_kill() -> None:
    seconds = steady(0, 20) + [
        bucket(20, ok=3, failed=2, first=20.4, last=20.9),
        bucket(21, ok=5, failed=4, first=21.0, last=21.5, recovered=21.6, gap=1.2),
        *steady(22, 40)]
    window = report.failure_window(seconds, 20.0, 40.0)
    assert window == {"failed": 6, "first_s": 0.4, "last_s": 1.5, "window_s": 1.1, "recovered_s": 1.6, "stall_s": 1.2}


def test_a_load_held_up_without_failing_has_an_empty_window_and_a_stall() -> None:
    seconds = steady(0, 20) + [bucket(20, ok=4, gap=0.9), bucket(21, ok=6, gap=1.3)] + steady(22, 40)
    assert report.failure_window(seconds, 20.0, 40.0) == {
        "failed": 0, "first_s": None, "last_s": None, "window_s": 0.0, "recovered_s": 0.0, "stall_s": 1.3}


def test_failures_just_after_a_kill_count_for_it_even_in_a_second_that_started_before() -> None:
    seconds = steady(0, 19) + [bucket(19.5, ok=5, failed=4, first=20.01, last=20.03, recovered=21.0)] + steady(21, 40)
    assert [c["failed"] for c in report.per_phase(seconds, phases())] == [0, 0, 4]
    assert [c["ok"] for c in report.per_phase(seconds, phases())] == [100, 95, 190]


def test_a_load_still_failing_at_the_end_has_not_recovered() -> None:
    seconds = [bucket(s, ok=0, failed=5, first=s + 0.1, last=s + 0.9) for s in range(20, 40)]
    assert report.failure_window(seconds, 20.0, 40.0)["recovered_s"] is None


def test_an_earlier_recovery_does_not_count_for_a_later_failure() -> None:
    seconds = [bucket(20, failed=1, first=20.1, last=20.1, recovered=20.2),
               bucket(25, failed=1, first=25.5, last=25.5), bucket(26, recovered=26.3)]
    assert report.failure_window(seconds, 20.0, 40.0)["recovered_s"] == 6.3


def test_kill_recovery_is_the_latest_of_back_ready_served_and_each_loads_recovery() -> None:
    buckets = {"keepalive": steady(0, 20) + [bucket(20, failed=3, first=20.1, last=20.8, recovered=22.5)]
               + steady(21, 40),
               "newconn": steady(0, 40)}
    outcome = report.kill_outcome(phases()[2], buckets)
    assert (outcome["back_s"], outcome["ready_s"], outcome["served_s"]) == (0.6, 1.0, 4.0)
    assert outcome["recovery_s"] == 4.0 and outcome["recovered"]
    assert outcome["windows"]["keepalive"]["recovered_s"] == 2.5
    late = {**phases()[2], "served_at": 20.0 + report.RECOVERY_BOUND_S + 1}
    assert not report.kill_outcome(late, buckets)["recovered"]
    never = report.kill_outcome({**phases()[2], "back_pid": None, "back_at": None}, buckets)
    assert (never["recovery_s"], never["recovered"]) == (None, False)


def test_drift_compares_each_process_with_itself_after_the_warm_up() -> None:
    samples = [sample(5, "warm-up", "ztunnel-node-1", 100, 10, 30_000),  # warm-up: not the reference
               sample(10, "baseline", "ztunnel-node-1", 100, 20, 40_000),
               sample(20, "baseline", "ztunnel-node-1", 100, 21, 41_000, "end"),
               sample(25, "kill ztunnel-node-1", "ztunnel-node-1", 200, 15, 35_000),  # restarted: a new series
               sample(40, "kill ztunnel-node-1", "ztunnel-node-1", 200, 40, 50_000, "end")]
    rows = report.drift(samples)
    assert [(r["pid"], r["fds_delta"], r["rss_kib_delta"], r["samples"]) for r in rows] == [
        (100, 1, 1_000, 2), (200, 25, 15_000, 2)]


def analyzed(buckets: dict, samples: list[dict] | None = None, restarts: dict | None = None) -> dict:
    return report.analyze(phases(), buckets, samples or [], restarts)


def test_a_clean_run_passes_and_counts_requests_per_phase() -> None:
    buckets = {"keepalive": steady(0, 40), "newconn": steady(0, 41)}  # a last second after the end: the last phase
    result = analyzed(buckets, restarts={"ztunnel-node-1": 1, "controlplane": 0})
    assert result["verdict"] == {"pass": True, "failures": [], "notes": []}
    assert [row["loads"]["newconn"]["ok"] for row in result["phases"]] == [100, 100, 210]
    assert result["totals"]["keepalive"] == {"ok": 400, "failed": 0, "corrupted": 0}


def test_one_corrupted_request_fails_the_soak() -> None:
    buckets = {"keepalive": steady(0, 15) + [bucket(15, corrupted=1)] + steady(16, 40), "newconn": steady(0, 40)}
    result = analyzed(buckets)
    assert not result["verdict"]["pass"]
    assert result["corrupted"] == 1
    assert result["verdict"]["failures"] == ["1 corrupted requests (checksum mismatches)"]


def test_a_kill_not_recovered_from_fails_the_soak() -> None:
    buckets = {"keepalive": steady(0, 20) + [bucket(s, ok=0, failed=5, first=s, last=s + 0.5) for s in range(20, 40)],
               "newconn": steady(0, 40)}
    result = analyzed(buckets)
    assert result["verdict"]["failures"] == [
        f"ztunnel-node-1: not recovered within {report.RECOVERY_BOUND_S:g} s (never)"]


def test_notes_failures_without_a_kill_unexpected_restarts_and_drift() -> None:
    buckets = {"keepalive": steady(0, 12) + [bucket(12, failed=2, first=12.1, last=12.2)] + steady(13, 40),
               "newconn": steady(0, 40)}
    samples = [sample(10, "baseline", "controlplane", 7, 30, 50_000),
               sample(25, "kill ztunnel-node-1", "controlplane", 7, 32, 50_000, "periodic"),
               sample(40, "kill ztunnel-node-1", "controlplane", 7, 30 + report.FD_DRIFT_NOTE, 50_000, "end")]
    result = report.analyze([*phases()[:2], {**phases()[2], "not_enrolled": ["soak/server: awaiting ztunnel"]}],
                            buckets, samples, restarts={"ztunnel-node-1": 1, "ztunnel-node-0": 2})
    assert result["verdict"]["pass"]  # reported, not failed: the exit criteria are corruption and recovery
    assert result["verdict"]["notes"] == [
        "2 requests failed in the baseline phase, with nothing killed",
        "ztunnel-node-0 restarted 2 times (expected 0)",
        f"controlplane (pid 7): +{report.FD_DRIFT_NOTE} fds, +0.0 MiB RSS over 30 s "
        f"(+{report.FD_DRIFT_NOTE - 2} fds, +0.0 MiB in the last 15 s)",
        "not enrolled at the end of the kill ztunnel-node-1 phase: soak/server: awaiting ztunnel"]


def test_markdown_shows_the_verdict_the_kills_and_the_drift() -> None:
    buckets = {"keepalive": steady(0, 40), "newconn": steady(0, 40)}
    samples = [sample(10, "baseline", "controlplane", 7, 30, 51_200),
               sample(40, "kill ztunnel-node-1", "controlplane", 7, 31, 52_224, "end")]
    result = {"date": "2026-12-06T00:00:00+00:00", "code": {"commit": "abc1234"}, "seconds": 100.0,
              "json": "x-soak.json", "warnings": [], "load_stderr": {"keepalive": ["a line"]},
              "parameters": {"lab": "soak", "duration_s": 40, "recovery_bound_s": 30,
                             "loads": {"keepalive": "--workers 4", "newconn": "--workers 2"}},
              "analysis": analyzed(buckets, samples)}
    text = report.markdown(result)
    assert "**Verdict: PASS**" in text
    assert "| ztunnel-node-1 | 100 (200) | 0.6 | 1.0 | 4.0 |" in text
    assert ("| controlplane | 7 | baseline (start) | kill ztunnel-node-1 (end) | 30 | 30 -> 31 | +1 | 50.0 -> 51.0 "
            "| +1.0 | +1, +1.0 |") in text
    assert "a line" in text
