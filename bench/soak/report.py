"""What a soak run measured, summed up (pure: the soak's records in, figures, a verdict and markdown out).

The records (`bench/soak.py` makes them; times are Unix seconds):

- `phases`: one dict per phase: `name`, `kill` (a component or None), `start`, `end`, `not_enrolled`
  (the soak's pods not enrolled at its end), and for a kill
  `killed_pid`, `back_pid`, `back_at` (running again under a new pid), `ready_at` (ztunnel's 15021
  said ready; None for the others), `served_at` (both loads served again without failures; None if
  not within the bound);
- `buckets`: `{load: [one dict per second, as `load.Bucket.line` prints it]}`;
- `samples`: one dict per component per sampling point: `at`, `phase`, `point` ("start" or "end" of
  the phase's steady stretch, or "periodic"), `component`, `pid`, `fds`, `rss_kib`.

A second's requests belong to the phase it started in, its failures to the phase of its first failure
(`per_phase`). A kill's failure window is the span from its first to its
last failed request in the kill's phase; the load recovered at the last success that followed a failure
(`Bucket.recovered`). Drift compares a process with itself: its first sample after the warm-up
against its last one, per pid (a killed component's new process starts its own series).
"""

from __future__ import annotations

from collections.abc import Iterable

from .plan import RECOVERY_BOUND_S

# Drift worth a line among the notes (not a failure: the issue asks to report it). Over a soak of
# minutes a steady process holds its connections' fds (a few per connection) and its memory: more
# than a handful of fds or a few MiB more is a leak's first sign, or a pool that grew.
FD_DRIFT_NOTE = 8
RSS_DRIFT_NOTE_KIB = 8 * 1024
WARMUP = "warm-up"


def _phase_of(second: float, phases: list[dict]) -> int:
    """Index of the phase a bucket started in; before the first: the first; after the last: the last."""
    for i, phase in enumerate(phases):
        if second < phase["end"]:
            return i
    return len(phases) - 1


def counts(buckets: Iterable[dict]) -> dict[str, int]:
    out = {"ok": 0, "failed": 0, "corrupted": 0}
    for bucket in buckets:
        for key in out:
            out[key] += bucket[key]
    return out


def per_phase(buckets: list[dict], phases: list[dict]) -> list[dict[str, int]]:
    """Each phase's ok, failed and corrupted requests. A second's successes and corruptions count in
    the phase it started in; its failures in the phase of its first failure, so that failures just
    after a kill count for the kill, even in a second that started before it."""
    out = [{"ok": 0, "failed": 0, "corrupted": 0} for _ in phases]
    for bucket in buckets:
        started = _phase_of(bucket["second"], phases)
        out[started]["ok"] += bucket["ok"]
        out[started]["corrupted"] += bucket["corrupted"]
        first = bucket.get("first_failure")
        out[started if first is None else _phase_of(first, phases)]["failed"] += bucket["failed"]
    return out


def failure_window(buckets: list[dict], start: float, end: float) -> dict:
    """The failures of one load from `start` (a kill) to `end`, times relative to `start`: their count,
    the first and the last, the window between, and when the load recovered after the last one
    (None: it still failed at `end`)."""
    inside = [b for b in buckets if b["second"] < end and b["second"] + 1.0 > start]
    failing = [b for b in inside if b["failed"] and b["last_failure"] is not None and b["last_failure"] >= start]
    # The longest time without any success, failed or hung (a proxy that holds a connection until its
    # peer is back delays requests rather than failing them).
    stall = round(max((b.get("longest_gap", 0.0) for b in inside), default=0.0), 3)
    if not failing:
        return {"failed": 0, "first_s": None, "last_s": None, "window_s": 0.0, "recovered_s": 0.0, "stall_s": stall}
    first = max(start, min(b["first_failure"] for b in failing))
    last = max(b["last_failure"] for b in failing)
    recoveries = [b["recovered"] for b in inside if b["recovered"] is not None and b["recovered"] >= last]
    return {"failed": sum(b["failed"] for b in failing),
            "first_s": round(first - start, 3), "last_s": round(last - start, 3),
            "window_s": round(last - first, 3),
            "recovered_s": round(min(recoveries) - start, 3) if recoveries else None, "stall_s": stall}


def kill_outcome(phase: dict, buckets: dict[str, list[dict]], bound: float = RECOVERY_BOUND_S) -> dict:
    """One kill: when the component was back and ready, each load's failure window, the recovery
    (the latest of those), and whether it came within `bound`."""
    kill = phase["start"]
    windows = {load: failure_window(b, kill, phase["end"]) for load, b in sorted(buckets.items())}
    back = phase.get("back_at")
    ready = phase.get("ready_at") if phase.get("ready_at") is not None else back
    marks = [back, ready, phase.get("served_at")] + [
        kill + w["recovered_s"] if w["recovered_s"] is not None else None for w in windows.values()]
    recovery = None if any(m is None for m in marks) else round(max(marks) - kill, 3)
    return {"component": phase["kill"], "killed_pid": phase.get("killed_pid"), "new_pid": phase.get("back_pid"),
            "back_s": None if back is None else round(back - kill, 3),
            "ready_s": None if phase.get("ready_at") is None else round(phase["ready_at"] - kill, 3),
            "served_s": None if phase.get("served_at") is None else round(phase["served_at"] - kill, 3),
            "recovery_s": recovery, "recovered": recovery is not None and recovery <= bound,
            "windows": windows}


def drift(samples: list[dict]) -> list[dict]:
    """Per component and pid: the first sample after the warm-up against the last one."""
    series: dict[tuple[str, int], list[dict]] = {}
    for sample in sorted(samples, key=lambda s: s["at"]):
        if sample["phase"] != WARMUP and sample["pid"]:
            series.setdefault((sample["component"], sample["pid"]), []).append(sample)
    out = []
    for (component, pid), taken in sorted(series.items(), key=lambda kv: (kv[0][0], kv[1][0]["at"])):
        first, last = taken[0], taken[-1]
        # The second half alone: growth that levels off (arenas, pools warming up) against growth that goes on.
        middle = [s for s in taken if s["at"] <= (first["at"] + last["at"]) / 2][-1]
        out.append({"component": component, "pid": pid, "samples": len(taken),
                    "seconds": round(last["at"] - first["at"], 1),
                    "first": {k: first[k] for k in ("phase", "point", "fds", "rss_kib")},
                    "last": {k: last[k] for k in ("phase", "point", "fds", "rss_kib")},
                    "fds_delta": last["fds"] - first["fds"], "rss_kib_delta": last["rss_kib"] - first["rss_kib"],
                    "second_half": {"seconds": round(last["at"] - middle["at"], 1),
                                    "fds_delta": last["fds"] - middle["fds"],
                                    "rss_kib_delta": last["rss_kib"] - middle["rss_kib"]}})
    return out


def analyze(phases: list[dict], buckets: dict[str, list[dict]], samples: list[dict],
            restarts: dict[str, int] | None = None, bound: float = RECOVERY_BOUND_S) -> dict:
    """The soak's figures and verdict. `restarts`: each lab component's restart count at the end."""
    by_load = {load: per_phase(seconds, phases) for load, seconds in sorted(buckets.items())}
    rows = []
    for i, phase in enumerate(phases):
        row = {"name": phase["name"], "kill": phase["kill"], "seconds": round(phase["end"] - phase["start"], 1),
               "loads": {load: by_load[load][i] for load in by_load}}
        if phase["kill"]:
            row["outcome"] = kill_outcome(phase, buckets, bound)
        rows.append(row)
    totals = {load: counts(b) for load, b in sorted(buckets.items())}
    drifts = drift(samples)

    failures, notes = [], []
    corrupted = sum(t["corrupted"] for t in totals.values())
    if corrupted:
        failures.append(f"{corrupted} corrupted requests (checksum mismatches)")
    for row in rows:
        outcome = row.get("outcome")
        if outcome and not outcome["recovered"]:
            took = "never" if outcome["recovery_s"] is None else f"after {outcome['recovery_s']:g} s"
            failures.append(f"{row['kill']}: not recovered within {bound:g} s ({took})")
        if not outcome:
            failed = sum(c["failed"] for c in row["loads"].values())
            if failed:
                notes.append(f"{failed} requests failed in the {row['name']} phase, with nothing killed")
    for load, total in totals.items():
        if not total["ok"]:
            failures.append(f"the {load} load had no successful request at all")
    killed = {p["kill"] for p in phases if p["kill"]}
    for component, count in sorted((restarts or {}).items()):
        expected = 1 if component in killed else 0
        if count != expected:
            notes.append(f"{component} restarted {count} times (expected {expected})")
    for d in drifts:
        if abs(d["fds_delta"]) >= FD_DRIFT_NOTE or abs(d["rss_kib_delta"]) >= RSS_DRIFT_NOTE_KIB:
            late = d["second_half"]
            notes.append(f"{d['component']} (pid {d['pid']}): {d['fds_delta']:+d} fds, "
                         f"{d['rss_kib_delta'] / 1024:+.1f} MiB RSS over {d['seconds']:g} s "
                         f"({late['fds_delta']:+d} fds, {late['rss_kib_delta'] / 1024:+.1f} MiB in the last "
                         f"{late['seconds']:g} s)")
    for phase in phases:
        if phase.get("not_enrolled"):
            notes.append(f"not enrolled at the end of the {phase['name']} phase: {', '.join(phase['not_enrolled'])}")
    return {"phases": rows, "totals": totals, "corrupted": corrupted, "drift": drifts,
            "verdict": {"pass": not failures, "failures": failures, "notes": notes}}


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def markdown(result: dict) -> str:
    analysis, params = result["analysis"], result["parameters"]
    verdict = analysis["verdict"]
    loads = sorted(analysis["totals"])
    lines = [f"# Soak: {result['date']}", "",
             f"**Verdict: {'PASS' if verdict['pass'] else 'FAIL'}**" + (
                 "" if verdict["pass"] else ": " + "; ".join(verdict["failures"])), ""]
    lines += [f"Lab `{params['lab']}` (2 nodes), commit `{((result.get('code') or {}).get('commit') or '?')[:10]}`: "
              f"{params['duration_s']:g} s planned, {result['seconds']:g} s in all (lab up and down included). "
              f"Client pod on node-0, echo server on node-1 (ambient namespace): capture -> ztunnel node-0 -> "
              f"HBONE -> ztunnel node-1 -> server. Loads, in the client pod: "
              + "; ".join(f"`{name}` {spec}" for name, spec in params["loads"].items())
              + f". Recovery bound {params['recovery_bound_s']:g} s.", ""]
    lines += ["## Requests per phase", "",
              "| phase | seconds | "
              + " | ".join(f"{load} ok | {load} failed | {load} corrupted" for load in loads) + " |",
              "|---|---:|" + "---:|" * (3 * len(loads))]
    for row in analysis["phases"]:
        cells = [f"{row['loads'][load][k]:,}" for load in loads for k in ("ok", "failed", "corrupted")]
        lines.append(f"| {row['name']} | {row['seconds']:g} | " + " | ".join(cells) + " |")
    total_cells = [f"**{analysis['totals'][load][k]:,}**" for load in loads for k in ("ok", "failed", "corrupted")]
    lines += ["| **total** | | " + " | ".join(total_cells) + " |", ""]
    lines += ["## Kills", "",
              "Seconds after the SIGKILL: the component running again under a new pid, ztunnel ready on 15021, "
              "both loads served again (a full second without failures); for each load its failed requests, "
              "the window from its first to its last failure, the recovery (the first success after it) and the "
              "longest stretch without any success (failed or held up).", "",
              "| component | pid (new) | back | ready | served | " + " | ".join(
                  f"{load}: failed, window, recovered, stall" for load in loads) + " | recovery | within bound |",
              "|---|---|---:|---:|---:|" + "---|" * len(loads) + "---:|---|"]
    for row in analysis["phases"]:
        o = row.get("outcome")
        if not o:
            continue
        windows = [f"{w['failed']}, {_s(w['window_s'])} s, {_s(w['recovered_s'])} s, {_s(w['stall_s'])} s" for _, w in
                   sorted(o["windows"].items())]
        lines.append(f"| {o['component']} | {o['killed_pid']} ({o['new_pid']}) | {_s(o['back_s'])} | "
                     f"{_s(o['ready_s'])} | {_s(o['served_s'])} | " + " | ".join(windows)
                     + f" | {_s(o['recovery_s'])} | {'yes' if o['recovered'] else '**no**'} |")
    lines += ["", "## fd and RSS drift", "",
              "Each process against itself: its first sample after the warm-up and its last (a killed "
              "component's new process has its own row).", "",
              "| component | pid | from | to | seconds | fds | Δ fds | RSS MiB | Δ RSS MiB "
              "| 2nd half: Δ fds, Δ RSS MiB |",
              "|---|---:|---|---|---:|---|---:|---|---:|---|"]
    for d in analysis["drift"]:
        f, t = d["first"], d["last"]
        lines.append(f"| {d['component']} | {d['pid']} | {f['phase']} ({f['point']}) | {t['phase']} ({t['point']}) | "
                     f"{d['seconds']:g} | {f['fds']} -> {t['fds']} | {d['fds_delta']:+d} | "
                     f"{f['rss_kib'] / 1024:.1f} -> {t['rss_kib'] / 1024:.1f} | {d['rss_kib_delta'] / 1024:+.1f} | "
                     f"{d['second_half']['fds_delta']:+d}, {d['second_half']['rss_kib_delta'] / 1024:+.1f} |")
    lines += ["", "## Notes", ""]
    lines += [f"- {note}" for note in verdict["notes"] + result.get("warnings", [])] or ["- none"]
    excerpts = result.get("load_stderr") or {}
    if any(excerpts.values()):
        lines += ["", "## The loads' own messages (last lines)", ""]
        for load, text in sorted(excerpts.items()):
            if text:
                lines += [f"`{load}`:", "", "```", *text, "```", ""]
    lines += ["", f"Raw records: `{result['json']}` (every second of every load, every sample, the timeline)."]
    return "\n".join(lines) + "\n"
