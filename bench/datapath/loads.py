"""The load generators' command lines and what they print, parsed (pure: no I/O here).

- wrk (HTTP/1.1): `--latency` adds the percentiles; with `Connection: close` nginx answers with the
  same header and closes, and wrk opens a new connection for the next request, so requests/s is
  then new connections/s (the bench checks nginx's accepted-connection counter to be sure).
- iperf3 `-J`: one stream; the figure is the receiver's (`end.sum_received`).
- nginx `stub_status`: the accepted-connection counter.

Every parser raises `LoadError` on output it does not recognise, never returns a guess.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

WRK_TIMEOUT_S = 2  # wrk's own per-request timeout (its default); a slower answer counts as an error
WRK_CHECK_CONNECTIONS = 1  # wrk connects (and closes) once before the run, to check the address


class LoadError(ValueError):
    """A load generator's output was not what it prints after a run."""


_UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}
_DURATION = re.compile(r"([0-9.]+)(us|ms|s|m|h)")


def duration_us(text: str) -> float:
    """wrk's time format ("266.00us", "3.33ms", "1.02s", "1.00m") in microseconds."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise LoadError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS_US[match.group(2)]


def wrk_argv(url: str, *, threads: int, connections: int, seconds: float, close: bool) -> list[str]:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency",
            "--timeout", f"{WRK_TIMEOUT_S}s"]
    if close:
        argv += ["-H", "Connection: close"]
    return [*argv, url]


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    rps: float  # wrk's own Requests/sec
    latency_us: dict[str, float]  # "50", "75", "90", "99" -> microseconds
    socket_errors: dict[str, int] = field(default_factory=dict)  # connect, read, write, timeout
    non_2xx: int = 0

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values()) + self.non_2xx


def parse_wrk(text: str) -> WrkResult:
    totals = re.search(r"^\s*(\d+) requests in ([0-9.]+)(us|ms|s|m),", text, re.M)
    rps = re.search(r"^Requests/sec:\s+([0-9.]+)", text, re.M)
    latency = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", text, re.M))
    if not totals or not rps or sorted(latency) != ["50", "75", "90", "99"]:
        raise LoadError(f"no totals, Requests/sec or latency distribution in wrk's output:\n{text}")
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    socket_errors = (dict(zip(("connect", "read", "write", "timeout"), map(int, errors.groups()), strict=True))
                     if errors else {})
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return WrkResult(
        requests=int(totals.group(1)),
        seconds=duration_us(totals.group(2) + totals.group(3)) / 1e6,
        rps=float(rps.group(1)),
        latency_us={k: duration_us(v) for k, v in sorted(latency.items())},
        socket_errors=socket_errors,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def iperf_argv(host: str, port: int, *, seconds: float) -> list[str]:
    # --connect-timeout bounds the control connection; the run itself is bounded by -t (and the bench's timeout).
    return ["iperf3", "-c", host, "-p", str(port), "-t", f"{seconds:g}", "-J", "--connect-timeout", "5000"]


@dataclass(frozen=True)
class IperfResult:
    gbit_s: float  # at the receiver
    bytes: int  # received
    seconds: float
    sender_gbit_s: float
    retransmits: int | None


def parse_iperf(text: str) -> IperfResult:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LoadError(f"iperf3 did not print JSON ({exc}):\n{text[-2000:]}") from None
    if doc.get("error"):
        raise LoadError(f"iperf3: {doc['error']}")
    try:
        received, sent = doc["end"]["sum_received"], doc["end"]["sum_sent"]
        return IperfResult(gbit_s=received["bits_per_second"] / 1e9, bytes=int(received["bytes"]),
                           seconds=float(received["seconds"]), sender_gbit_s=sent["bits_per_second"] / 1e9,
                           retransmits=sent.get("retransmits"))
    except (KeyError, TypeError) as exc:
        raise LoadError(f"iperf3's JSON has no end.sum_received/sum_sent ({exc!r})") from None


@dataclass(frozen=True)
class StubStatus:
    active: int
    accepts: int
    handled: int
    requests: int


def parse_stub_status(text: str) -> StubStatus:
    active = re.search(r"Active connections:\s*(\d+)", text)
    counters = re.search(r"server accepts handled requests\s+(\d+)\s+(\d+)\s+(\d+)", text)
    if not active or not counters:
        raise LoadError(f"not nginx stub_status output:\n{text}")
    return StubStatus(int(active.group(1)), *map(int, counters.groups()))
