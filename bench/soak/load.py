"""The soak's traffic: a checksumming echo server and two load generators (standard library only: it
runs in the lab's pods with `ambient exec`, or as a pod's container).

    load.py serve --port 9000
    load.py keepalive --host 10.244.1.2 --port 9000 --workers 4 --rate 25 --seconds 600
    load.py newconn   --host 10.244.1.2 --port 9000 --workers 2 --rate 10 --seconds 600

A request is one frame: `MAGIC`, the payload's length (4 bytes, big-endian), the payload (random
bytes of a random length) and its SHA-256. The server checks the digest and answers a status byte
(`STATUS_OK`, or `STATUS_CORRUPTED` if the payload it received does not match its digest) followed by
the very frame it received; the client checks the status, and that the echoed frame is byte for byte
the one it sent and still matches its digest. Any mismatch is *corrupted*; a refused, reset, cut-short
or timed-out exchange is *failed*. `keepalive` keeps `--workers` connections open and sends requests
on them, reconnecting after a failure; `newconn` opens a connection per request.

Each worker paces itself to `--rate` requests per second. Every second the client prints one JSON line
(`Bucket.line`): ok, failed, corrupted, the first and last failure and the last recovery (a success
after a failure) as Unix times, and the failures by kind; at the end a summary line. It stops after
`--seconds` or on SIGTERM/SIGINT. Everything is bounded: frame length, connections the server holds,
per-request I/O time, the failure retry rate.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

MAGIC = b"SOAK"
HEADER_BYTES = len(MAGIC) + 4
DIGEST_BYTES = hashlib.sha256().digest_size
STATUS_OK, STATUS_CORRUPTED = b"+", b"!"
# The largest payload the server accepts: it buffers one whole frame per connection before echoing it,
# so this bounds its memory per connection (x MAX_SERVER_CONNECTIONS: 16 MiB at most). A client sends
# at most this much; 256 KiB spans many HTTP/2 DATA frames and TLS records on the HBONE path.
MAX_PAYLOAD = 256 * 1024
MIN_PAYLOAD = 1
# Connections the server serves at once (a thread each); one more is closed at once. The soak's loads
# hold at most a few dozen.
MAX_SERVER_CONNECTIONS = 64
# A connection with no request for this long is closed by the server (a keep-alive client sends
# several a second; a client whose connection died with a killed ztunnel never comes back).
SERVER_IDLE_TIMEOUT_S = 60.0
# Each socket operation of one exchange (connect, send, each receive): longer counts as a failure. A
# healthy exchange on the lab takes milliseconds; a ztunnel that is down makes connects hang or fail.
REQUEST_TIMEOUT_S = 5.0
# After a failure a worker waits this long before its next attempt, so a dead path costs at most
# 1 / RETRY_PAUSE_S attempts per second per worker, not a busy loop.
RETRY_PAUSE_S = 0.1
MAX_WORKERS = 32
MAX_RATE = 200  # requests per second per worker
MAX_SECONDS = 1800  # a load never outlives the soak's own bound by much
ERROR_KINDS_PER_BUCKET = 16  # distinct failure kinds kept per second; the rest count as "other"


class FrameError(ValueError):
    """Bytes that are not a soak frame (bad magic, a length out of bounds)."""


def checksum(payload: bytes) -> bytes:
    return hashlib.sha256(payload).digest()


def encode_frame(payload: bytes) -> bytes:
    if not MIN_PAYLOAD <= len(payload) <= MAX_PAYLOAD:
        raise FrameError(f"payload of {len(payload)} bytes, not within {MIN_PAYLOAD}-{MAX_PAYLOAD}")
    return MAGIC + len(payload).to_bytes(4, "big") + payload + checksum(payload)


def payload_length(header: bytes) -> int:
    """The payload length a frame's header announces; FrameError if it is not a soak header."""
    if len(header) != HEADER_BYTES or header[:len(MAGIC)] != MAGIC:
        raise FrameError(f"not a soak frame header: {header[:16]!r}")
    length = int.from_bytes(header[len(MAGIC):], "big")
    if not MIN_PAYLOAD <= length <= MAX_PAYLOAD:
        raise FrameError(f"a frame announces {length} bytes, not within {MIN_PAYLOAD}-{MAX_PAYLOAD}")
    return length


def intact(body: bytes) -> bool:
    """Whether a frame's body (payload then digest) still matches its digest."""
    return len(body) > DIGEST_BYTES and checksum(body[:-DIGEST_BYTES]) == body[-DIGEST_BYTES:]


def check_echo(sent: bytes, status: bytes, echoed: bytes) -> str | None:
    """None if the echo of frame `sent` is intact; otherwise what is wrong (that is a corruption)."""
    if status != STATUS_OK:
        return "the server received a payload that does not match its digest" if status == STATUS_CORRUPTED \
            else f"unknown status byte {status!r}"
    if echoed == sent:
        return None
    if len(echoed) != len(sent):
        return f"echo of {len(echoed)} bytes for a frame of {len(sent)}"
    if not intact(echoed[HEADER_BYTES:]):
        return "the echoed payload does not match its digest"
    return "the echo differs from the frame sent"


def recv_exactly(sock: socket.socket, count: int) -> bytes:
    chunks, left = [], count
    while left:
        chunk = sock.recv(min(left, 65536))
        if not chunk:
            raise ConnectionError(f"connection closed with {left} of {count} bytes unread")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# -- the server


class _Handler(socketserver.BaseRequestHandler):
    server: EchoServer

    def handle(self) -> None:
        if not self.server.slots.acquire(blocking=False):
            return  # over MAX_SERVER_CONNECTIONS: closed at once
        try:
            self.request.settimeout(SERVER_IDLE_TIMEOUT_S)
            while True:
                try:
                    header = self.request.recv(HEADER_BYTES, socket.MSG_WAITALL)
                except (OSError, TimeoutError):
                    return
                if len(header) < HEADER_BYTES:
                    return  # closed, or cut short between frames (a killed proxy): not a protocol error
                try:
                    body = recv_exactly(self.request, payload_length(header) + DIGEST_BYTES)
                except FrameError as exc:
                    print(f"echo: {exc}; closing", file=sys.stderr, flush=True)
                    return
                except (OSError, TimeoutError):
                    return
                ok = intact(body)
                if not ok:
                    self.server.corrupted += 1  # one counter, GIL-atomic enough for a report
                    print(f"echo: a corrupted frame ({len(body)} bytes)", file=sys.stderr, flush=True)
                try:
                    self.request.sendall((STATUS_OK if ok else STATUS_CORRUPTED) + header + body)
                except OSError:
                    return
        finally:
            self.server.slots.release()


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = MAX_SERVER_CONNECTIONS

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self.slots = threading.BoundedSemaphore(MAX_SERVER_CONNECTIONS)
        self.corrupted = 0


# -- the clients


@dataclass
class Bucket:
    """What happened in one second (from `second`, a Unix time)."""

    second: float
    ok: int = 0
    failed: int = 0
    corrupted: int = 0
    first_failure: float | None = None
    last_failure: float | None = None
    recovered: float | None = None  # the last success that followed a failure
    longest_gap: float = 0.0  # the longest time without a success (any worker's) seen in this second
    errors: dict[str, int] = field(default_factory=dict)

    def line(self, load: str) -> str:
        return json.dumps({"load": load, "second": round(self.second, 3), "ok": self.ok, "failed": self.failed,
                           "corrupted": self.corrupted, "first_failure": self.first_failure,
                           "last_failure": self.last_failure, "recovered": self.recovered,
                           "longest_gap": round(self.longest_gap, 3), "errors": self.errors})


class Tally:
    """The outcomes of every worker, by second (thread-safe). `clock` is a Unix-time clock."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.bucket = Bucket(clock())
        self.failing = False  # the last outcome was a failure (of any worker)
        self.last_ok = self.bucket.second  # the time of the last success (the start, before the first)
        self.totals = {"ok": 0, "failed": 0, "corrupted": 0}

    def ok(self) -> None:
        with self.lock:
            now = self.clock()
            self.bucket.ok += 1
            self.totals["ok"] += 1
            self.bucket.longest_gap = max(self.bucket.longest_gap, now - self.last_ok)
            self.last_ok = now
            if self.failing:
                self.bucket.recovered = now
                self.failing = False

    def failed(self, kind: str, corrupted: bool = False) -> None:
        with self.lock:
            now = self.clock()
            bucket = self.bucket
            if corrupted:
                bucket.corrupted += 1
                self.totals["corrupted"] += 1
            else:
                bucket.failed += 1
                self.totals["failed"] += 1
                bucket.first_failure = bucket.first_failure or now
                bucket.last_failure = now
                self.failing = True
            if kind not in bucket.errors and len(bucket.errors) >= ERROR_KINDS_PER_BUCKET:
                kind = "other"
            bucket.errors[kind] = bucket.errors.get(kind, 0) + 1

    def rotate(self) -> Bucket:
        """The bucket so far; a new one starts now."""
        with self.lock:
            now = self.clock()
            done, self.bucket = self.bucket, Bucket(now)
            done.longest_gap = max(done.longest_gap, now - self.last_ok)  # a gap still open counts too
            return done


def failure_kind(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout"
    return type(exc).__name__


def exchange(sock: socket.socket, rng: random.Random, max_payload: int) -> str | None:
    """One request on `sock`: None if its echo is intact, else the corruption. Raises on I/O failures."""
    frame = encode_frame(rng.randbytes(rng.randint(MIN_PAYLOAD, max_payload)))
    sock.sendall(frame)
    status = recv_exactly(sock, 1)
    return check_echo(frame, status, recv_exactly(sock, len(frame)))


def connect(host: str, port: int) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=REQUEST_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def worker(args: argparse.Namespace, tally: Tally, stop: threading.Event, index: int) -> None:
    rng = random.Random(int.from_bytes(os.urandom(8), "big") + index)
    period, due = 1.0 / args.rate, time.monotonic() + rng.random() / args.rate  # spread the workers' starts
    sock: socket.socket | None = None
    try:
        while not stop.is_set():
            if stop.wait(max(0.0, due - time.monotonic())):  # pacing to --rate, not a synchronisation
                break
            due = max(due + period, time.monotonic() - period)  # never a burst to catch up
            try:
                if sock is None:
                    sock = connect(args.host, args.port)
                problem = exchange(sock, rng, args.max_payload)
            except (OSError, TimeoutError) as exc:
                tally.failed(failure_kind(exc))
                if sock is not None:
                    sock.close()
                    sock = None
                stop.wait(RETRY_PAUSE_S)
                continue
            if problem:
                print(f"{args.mode}: corrupted: {problem}", file=sys.stderr, flush=True)
                tally.failed("corrupted", corrupted=True)
                sock.close()  # the stream can no longer be trusted to be in step
                sock = None
            else:
                tally.ok()
            if args.mode == "newconn" and sock is not None:
                sock.close()
                sock = None
    finally:
        if sock is not None:
            sock.close()


def run_client(args: argparse.Namespace) -> int:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    tally = Tally()
    threads = [threading.Thread(target=worker, args=(args, tally, stop, i), daemon=True) for i in range(args.workers)]
    for thread in threads:
        thread.start()
    end = time.monotonic() + args.seconds
    while not stop.wait(max(0.0, min(1.0, end - time.monotonic()))):
        print(tally.rotate().line(args.mode), flush=True)
        if time.monotonic() >= end:
            stop.set()
    for thread in threads:
        thread.join(REQUEST_TIMEOUT_S * 3 + 1)  # a worker is at most in one exchange (connect, send, receive)
    print(tally.rotate().line(args.mode), flush=True)
    print(json.dumps({"load": args.mode, "summary": tally.totals}), flush=True)
    return 0


def run_server(args: argparse.Namespace) -> int:
    with EchoServer((args.listen, args.port)) as server:
        signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
        print(f"echo: listening on {args.listen}:{args.port}", file=sys.stderr, flush=True)
        server.serve_forever()
        print(f"echo: stopped; corrupted frames received: {server.corrupted}", file=sys.stderr, flush=True)
    return 0


def bounded(low: float, high: float, kind: type = int) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is not within {low:g}-{high:g}")
        return value
    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    serve = modes.add_parser("serve", help="the checksumming echo server")
    serve.add_argument("--listen", default="0.0.0.0")
    serve.add_argument("--port", type=bounded(1, 65535), default=9000)
    for mode in ("keepalive", "newconn"):
        client = modes.add_parser(mode, help=f"the {mode} load")
        client.add_argument("--host", required=True)
        client.add_argument("--port", type=bounded(1, 65535), default=9000)
        client.add_argument("--workers", type=bounded(1, MAX_WORKERS), default=4)
        client.add_argument("--rate", type=bounded(0.1, MAX_RATE, float), default=10.0,
                            help="requests per second per worker")
        client.add_argument("--seconds", type=bounded(1, MAX_SECONDS, float), default=60.0)
        client.add_argument("--max-payload", type=bounded(MIN_PAYLOAD, MAX_PAYLOAD), default=64 * 1024)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_server(args) if args.mode == "serve" else run_client(args)


if __name__ == "__main__":
    sys.exit(main())
