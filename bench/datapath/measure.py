"""One run of one figure on one path, with what the proxies spent on it; and the order of the runs.

A run is a load generator in the path's client pod (`ambient exec`), bounded in time, between two
readings of the kernel's accounting of the path's proxies (`lab.cgroup_cpu_usec` of each side's
cgroup). The figures:

- `keepalive`: wrk, `--connections` connections kept open, `--seconds`; requests/s, p50/p99 latency,
  proxy CPU-ms per 1,000 requests; the proxies' RSS sampled every 0.1 s during the run (the max).
- `conn`: the same with `Connection: close`: wrk reconnects after every answer, so requests/s is
  new connections/s; nginx's accepted-connection counter (`stub_status`, read in the server pod
  before and after) must have grown by about as many connections as there were requests, or the run
  fails. CPU-ms per 1,000 connections.
- `bulk`: iperf3, one stream, `--bulk-seconds`; Gbit/s at the receiver, CPU-ms per GiB.

A path runs only its own `figures` (the L7 rows: keep-alive). Where a path names sides to give
`alone` (the waypoint), each such side's CPU per unit is also a field of its own
("waypoint_cpu_ms_per_1k"), beside the whole path's. `check_l7` is the L7 rows' check before any
run: the allowed path answers 200 and `DENIED_PATH` 403 (`l7_problems`, pure).

`round_order` rotates the paths between rounds, so that no path always runs first (or right after
the same neighbour) within a round.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .lab import BenchFailure, Lab, cgroup_cpu_usec, cgroup_kib, rss_kib
from .loads import WRK_CHECK_CONNECTIONS, LoadError, iperf_argv, parse_iperf, parse_stub_status, parse_wrk, wrk_argv
from .paths import DENIED_PATH, FIGURES, STATUS_PORT, DataPath

__all__ = ["FIGURES", "Runner", "Settings", "cpu_figures", "l7_problems", "round_order"]
RUN_GRACE_S = 30  # beyond a run's own length: `ambient exec`, connecting, wrk's last timeouts
MAX_ERROR_SHARE = 0.01  # wrk errors (socket errors, non-2xx) above this share of requests fail the run
MIN_CONNECTIONS_PER_REQUEST = 0.95  # `conn`: nginx must have accepted about one connection per request
RSS_SAMPLE_INTERVAL_S = 0.1
CHECK_TIMEOUT_S = 5  # curl's bound on each request of the L7 check
CHECK_ATTEMPTS = 3  # requests of the L7 check that got no answer at all are tried this often
# A 503 (a WasmPlugin still loading fails closed) is tried again this often, CHECK_WARMING_WAIT_S apart.
CHECK_WARMING_ATTEMPTS = 50
CHECK_WARMING_WAIT_S = 0.2
# The L7 check: the request wrk makes, and one the L7 rule denies, with the status each must get.
L7_EXPECTED = (("/", 200), (DENIED_PATH, 403))


def round_order(names: list[str] | tuple[str, ...], round_index: int) -> list[str]:
    """The paths in round `round_index`: the list rotated left by the round's number."""
    shift = round_index % len(names)
    return [*names[shift:], *names[:shift]]


@dataclass(frozen=True)
class Settings:
    threads: int = 2
    connections: int = 16
    seconds: float = 5.0  # each wrk run
    bulk_seconds: float = 5.0  # each iperf3 run


class RssSampler:
    """The max summed VmRSS of each cgroup, sampled by a thread until `stop()`."""

    def __init__(self, cgroups: dict[str, Path], interval: float = RSS_SAMPLE_INTERVAL_S) -> None:
        self.cgroups, self.interval = cgroups, interval
        self.max_kib = {side: 0 for side in cgroups}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            for side, cgroup in self.cgroups.items():
                self.max_kib[side] = max(self.max_kib[side], cgroup_kib(cgroup))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> RssSampler:
        if self.cgroups:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


def cpu_figures(cpu_usec: dict[str, int], units: float, per: str, alone: tuple[str, ...] = ()) -> dict:
    """CPU-ms of each side and in all, and per 1,000 units or per GiB; {} for a path without proxies.
    Each side of `alone` also gets its own per-unit field, "<side>_<per>"."""
    if not cpu_usec:
        return {}
    total_ms = sum(cpu_usec.values()) / 1000
    out = {"cpu_ms": {**{side: round(us / 1000, 1) for side, us in cpu_usec.items()}, "total": round(total_ms, 1)},
           per: round(total_ms / units, 3) if units else None}
    for side in alone:
        out[f"{side}_{per}"] = round(cpu_usec[side] / 1000 / units, 3) if units else None
    return out


def l7_problems(statuses: dict[str, int | None]) -> list[str]:
    """What is wrong with the L7 check's answers ({request path: HTTP status, None if none came}),
    against L7_EXPECTED; empty when the rule is in force."""
    out = []
    for request_path, expected in L7_EXPECTED:
        got = statuses.get(request_path)
        if got != expected:
            out.append(f"GET {request_path} answered {got if got is not None else 'nothing'}, expected {expected}")
    return out


class Runner:
    def __init__(self, lab: Lab, paths: tuple[DataPath, ...], server_ips: dict[str, str], settings: Settings) -> None:
        self.lab, self.settings = lab, settings
        self.paths = {path.name: path for path in paths}
        self.server_ips = server_ips  # path name -> server pod IP
        self.cgroups = {path.name: path.accounted(lab.layout) for path in paths}

    def idle_mib(self, name: str, per_process=rss_kib) -> dict[str, float]:
        """Each side's memory now, in MiB: RSS, or PSS with `per_process=pss_kib`."""
        return {side: round(cgroup_kib(cg, per_process) / 1024, 1) for side, cg in self.cgroups[name].items()}

    def _cpu(self, name: str) -> dict[str, int]:
        return {side: cgroup_cpu_usec(cg) for side, cg in self.cgroups[name].items()}

    def nginx_accepts(self, path: DataPath) -> int:
        text = self.lab.run_in(path.namespace, "server", "curl", "-sS", "-m", "5",
                               f"http://127.0.0.1:{STATUS_PORT}/status", timeout=20)
        return parse_stub_status(text).accepts

    def check_l7(self, name: str) -> dict[str, int | None]:
        """One request per entry of L7_EXPECTED through the path, from the client pod; BenchFailure
        unless each gets its status (the L7 proxy is in the path and applies the rule)."""
        path = self.paths[name]
        endpoint = path.http_endpoint(self.server_ips[name])
        statuses: dict[str, int | None] = {}
        for request_path, _expected in L7_EXPECTED:
            # The path's first request may wait for certificates and upstream pools: a request without
            # any answer is tried again, a bounded number of times; a wrong answer is final.
            silent = warming = 0
            while True:
                try:
                    text = self.lab.run_in(path.namespace, "client", "curl", "-sS", "-o", "/dev/null", "-w",
                                           "%{http_code}", "-m", str(CHECK_TIMEOUT_S), endpoint.url(request_path),
                                           timeout=CHECK_TIMEOUT_S + RUN_GRACE_S)
                    statuses[request_path] = int(text.strip()) or None  # curl writes 000 without an answer
                except (BenchFailure, ValueError):
                    statuses[request_path] = None
                if statuses[request_path] is None:
                    silent += 1
                    if silent < CHECK_ATTEMPTS:
                        continue
                elif statuses[request_path] == 503 and path.warms_up:
                    warming += 1
                    if warming < CHECK_WARMING_ATTEMPTS:
                        time.sleep(CHECK_WARMING_WAIT_S)  # no event to await: the plugin loads in the waypoint
                        continue
                break
        problems = l7_problems(statuses)
        if problems:
            raise BenchFailure(f"{name}: the L7 rule is not in force before measuring: {'; '.join(problems)}")
        return statuses

    def measure(self, name: str, figure: str, seconds: float | None = None) -> dict:
        if figure == "bulk":
            return self._bulk(self.paths[name], seconds or self.settings.bulk_seconds)
        return self._http(self.paths[name], figure, seconds or self.settings.seconds)

    def _http(self, path: DataPath, figure: str, seconds: float) -> dict:
        s, close = self.settings, figure == "conn"
        argv = wrk_argv(path.http_endpoint(self.server_ips[path.name]).url(), threads=s.threads,
                        connections=s.connections, seconds=seconds, close=close)
        accepts_before = self.nginx_accepts(path)
        before = self._cpu(path.name)
        with RssSampler(self.cgroups[path.name] if figure == "keepalive" else {}) as rss:
            text = self.lab.run_in(path.namespace, "client", *argv, timeout=seconds + RUN_GRACE_S)
        after = self._cpu(path.name)
        # The second reading's own connection is counted before it answers, and wrk connects once
        # before the run to check the address: neither carried a request of the run.
        connections = self.nginx_accepts(path) - accepts_before - 1 - WRK_CHECK_CONNECTIONS
        try:
            wrk = parse_wrk(text)
        except LoadError as exc:
            raise BenchFailure(f"{path.name} {figure}: {exc}") from None
        where = f"{path.name} {figure}"
        if wrk.requests == 0 or wrk.errors > MAX_ERROR_SHARE * wrk.requests:
            raise BenchFailure(f"{where}: {wrk.requests} requests, {wrk.errors} errors "
                               f"({wrk.socket_errors}, non-2xx {wrk.non_2xx}):\n{text}")
        if close and connections < MIN_CONNECTIONS_PER_REQUEST * wrk.requests:
            raise BenchFailure(f"{where}: nginx accepted {connections} connections for {wrk.requests} requests: "
                               "wrk did not open a new connection per request")
        rate = "cps" if close else "rps"
        result = {
            rate: round(wrk.rps, 1), "p50_ms": wrk.latency_us["50"] / 1000, "p99_ms": wrk.latency_us["99"] / 1000,
            "p90_ms": wrk.latency_us["90"] / 1000, "requests": wrk.requests, "seconds": wrk.seconds,
            "nginx_connections": connections, "requests_per_connection": round(wrk.requests / max(connections, 1), 2),
            "errors": wrk.errors,
            **cpu_figures({side: after[side] - before[side] for side in before}, wrk.requests / 1000,
                          "cpu_ms_per_1k", path.alone),
        }
        if figure == "keepalive" and rss.max_kib:
            result["rss_max_mib"] = {side: round(kib / 1024, 1) for side, kib in rss.max_kib.items()}
        return result

    def _bulk(self, path: DataPath, seconds: float) -> dict:
        endpoint = path.iperf_endpoint(self.server_ips[path.name])
        before = self._cpu(path.name)
        text = self.lab.run_in(path.namespace, "client", *iperf_argv(endpoint.host, endpoint.port, seconds=seconds),
                               timeout=seconds + RUN_GRACE_S)
        after = self._cpu(path.name)
        try:
            iperf = parse_iperf(text)
        except LoadError as exc:
            raise BenchFailure(f"{path.name} bulk: {exc}") from None
        return {"gbit_s": round(iperf.gbit_s, 3), "bytes": iperf.bytes, "seconds": round(iperf.seconds, 3),
                "sender_gbit_s": round(iperf.sender_gbit_s, 3), "retransmits": iperf.retransmits,
                **cpu_figures({side: after[side] - before[side] for side in before}, iperf.bytes / 2**30,
                              "cpu_ms_per_gib")}
