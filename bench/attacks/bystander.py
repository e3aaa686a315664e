"""The bystander: small requests to an echo server (`bench/soak/load.py serve`), a new connection
each, at a steady pace, from a mesh pod on the attacked node; one JSON line per request
({"start", "end", "ok", "error"}), so the harness can tell what an attack did to other pods' service.

    bystander.py --host 10.244.1.3 --port 9000 --rate 10 --seconds 300

It stops after `--seconds` or on SIGTERM. Each exchange is bounded by `soak.load.REQUEST_TIMEOUT_S`
per socket operation; requests never overlap, so a frozen proxy shows as a run of timeouts.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for the soak's echo protocol

from soak.load import connect, exchange, failure_kind  # noqa: E402

MAX_RATE = 50.0  # requests per second: a probe of service, not a load
MAX_SECONDS = 1800.0
# Small requests: the bystander measures whether it is served, not throughput.
PAYLOAD_BYTES = 256


def run(host: str, port: int, rate: float, seconds: float, stop: threading.Event) -> None:
    rng = random.Random()
    period, ends = 1.0 / rate, time.monotonic() + seconds
    due = time.monotonic()
    while not stop.is_set() and time.monotonic() < ends:
        if stop.wait(max(0.0, due - time.monotonic())):  # pacing, not a synchronisation
            break
        due = max(due + period, time.monotonic())  # never a burst to catch up after a slow request
        start, error = time.time(), None
        try:
            with connect(host, port) as sock:
                problem = exchange(sock, rng, PAYLOAD_BYTES)
            error = f"corrupted: {problem}" if problem else None
        except (OSError, TimeoutError) as exc:
            error = failure_kind(exc)
        print(json.dumps({"start": round(start, 3), "end": round(time.time(), 3), "ok": error is None,
                          "error": error}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=300.0)
    args = parser.parse_args(argv)
    if not 0 < args.rate <= MAX_RATE or not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"--rate must be within (0, {MAX_RATE:g}] and --seconds within (0, {MAX_SECONDS:g}]")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    run(args.host, args.port, args.rate, args.seconds, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
