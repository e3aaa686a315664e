"""A WebSocket-style upgrade server for the waypoint's lab test (standard library only).

It reads one HTTP/1.1 request head; if it asks for ``Upgrade: websocket`` it answers ``101 Switching
Protocols`` and from then on echoes every byte back, prefixed once with ``switched:``, until the
client closes; anything else gets 426. Raw sockets, one thread per connection: no framing library
is needed to see that the waypoint relays both ways after the switch.

``upgrade_echo.py --call HOST:PORT`` is the client: it asks for the upgrade, sends two messages after
the 101 and prints a JSON line with the status line and what came back.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading


def serve(conn: socket.socket) -> None:
    with conn:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        if b"upgrade: websocket" not in head.lower():
            conn.sendall(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n")
            return
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                     b"switched:" + rest)
        while chunk := conn.recv(4096):
            conn.sendall(chunk)


def call(target: str) -> None:
    host, _, port = target.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET /chat HTTP/1.1\r\nHost: {target}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                     "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        echoed = rest
        for message in (b"hello ", b"again"):
            sock.sendall(message)
            while not echoed.endswith(message):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                echoed += chunk
        print(json.dumps({"status_line": head.split(b"\r\n")[0].decode(), "echoed": echoed.decode()}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--call", metavar="HOST:PORT", help="be the client")
    args = parser.parse_args()
    if args.call:
        call(args.call)
        return
    listener = socket.create_server(("0.0.0.0", args.port))
    print(f"listening on 0.0.0.0:{args.port}", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
