"""The lab's DNS server: ``lab.dns.answer`` served over UDP and TCP, port 53 of one lab address.

How it works: ``serve`` binds both sockets first and only then reports started. Each datagram is
answered from the view as it is at that moment (``view()``: the lab daemon rewrites the view's file
on every change and ``WatchedJsonFile`` re-reads it when its signature changes, so a query never waits
for a reload and a bad file keeps the last good view). A TCP connection carries length-prefixed
queries (RFC 1035 4.2.2) one after another; at most ``MAX_TCP_CONNECTIONS`` at once (one more is
closed at once) and each is closed after ``TCP_IDLE_TIMEOUT`` without a whole query. What cannot be
answered is dropped with a debug line; a bug in the answerer is logged and answered SERVFAIL, and the
server serves on.

Run by the lab daemon in the control plane's netns (``lab.components.dns_process``), as
``python -m lab.dns_server --view FILE --listen HOST:PORT``.
"""

from __future__ import annotations

import argparse
import logging
import socket
import struct
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import trio

from lab.dns import DnsView, answer
from mesh.dns_wire import MAX_TCP_QUERY, TCP, UDP, MalformedQuery, servfail
from mesh.watched_file import WatchedJsonFile

log = logging.getLogger("ambient.lab.dns")

MAX_DATAGRAM = 65535  # read whole: a datagram cut at the buffer's size would look like a short query
MAX_TCP_CONNECTIONS = 64  # a lab's pods, each with a resolver that falls back to TCP now and then
TCP_IDLE_TIMEOUT = 10.0  # CoreDNS's read timeout on a TCP connection


def respond(query: bytes, view: DnsView, transport: str) -> bytes | None:
    """``answer``, or None to drop the query; never raises (the server must outlive any query)."""
    try:
        return answer(query, view, transport)
    except MalformedQuery as exc:
        log.debug("dropped a %s query: %s", transport, exc)
        return None
    except Exception:
        log.exception("answering a %s query failed", transport)
        return servfail(query)


async def _serve_udp(sock: trio.socket.SocketType, view: Callable[[], DnsView]) -> None:
    while True:
        try:
            query, peer = await sock.recvfrom(MAX_DATAGRAM)
        except OSError as exc:  # an ICMP error of an earlier reply, reported on this socket
            log.debug("UDP receive: %s", exc)
            continue
        reply = respond(query, view(), UDP)
        if reply is not None:
            try:
                await sock.sendto(reply, peer)
            except OSError as exc:
                log.debug("UDP reply to %s: %s", peer, exc)


async def _receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


async def _serve_tcp_connection(view: Callable[[], DnsView], limiter: trio.CapacityLimiter,
                                stream: trio.SocketStream) -> None:
    try:
        try:
            limiter.acquire_nowait()
        except trio.WouldBlock:
            return  # too many connections: closed in finally
        try:
            while True:
                with trio.move_on_after(TCP_IDLE_TIMEOUT):
                    prefix = await _receive_exactly(stream, 2)
                    (length,) = struct.unpack("!H", prefix) if prefix else (0,)
                    query = await _receive_exactly(stream, length) if 0 < length <= MAX_TCP_QUERY else None
                if not prefix or query is None:
                    return  # closed, idle, or a length over the bound
                reply = respond(query, view(), TCP)
                if reply is not None:
                    await stream.send_all(struct.pack("!H", len(reply)) + reply)
        finally:
            limiter.release()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def serve(view: Callable[[], DnsView], host: str, port: int, *,
                task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled; reports the port once both sockets are bound (``port`` 0: UDP's, which
    TCP then takes too)."""
    udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await udp.bind((host, port))
    port = udp.getsockname()[1]
    listeners = await trio.open_tcp_listeners(port, host=host)
    task_status.started(port)
    limiter = trio.CapacityLimiter(MAX_TCP_CONNECTIONS)
    with udp:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_serve_udp, udp, view)
            nursery.start_soon(partial(trio.serve_listeners, partial(_serve_tcp_connection, view, limiter),
                                       listeners))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.dns_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--view", type=Path, required=True, help="the JSON view the lab daemon keeps")
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, sep, port_text = args.listen.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        parser.error(f"--listen: HOST:PORT, not {args.listen!r}")
    port = int(port_text)
    watched = WatchedJsonFile(args.view, DnsView.from_json, DnsView(), what="DNS view")

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, watched.get, host, port)
            print(f"serving DNS for cluster.local on {host}:{port} (UDP and TCP)", flush=True)

    try:
        trio.run(run)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
