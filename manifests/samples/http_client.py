"""A keep-alive HTTP/1.1 client for the lab (the demo and the waypoint test), run in a pod; standard library only.

``http_client.py HOST PORT`` opens one connection, then for each line of stdin ``METHOD PATH COUNT
[NAME=VALUE...]`` sends COUNT requests on it, one after another, and prints one JSON line: the
statuses, the pods that answered (the echo server names itself) and the first body seen per status.
The connection is never reopened: a request that finds it closed prints an "error" line and ends.
"""

from __future__ import annotations

import collections
import json
import socket
import sys


def read_response(sock: socket.socket, buffer: bytes) -> tuple[int, bytes, bytes]:
    """(status, body, what was read past it) of one response with a Content-Length."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a response")
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-response")
        rest += chunk
    return status, rest[:length], rest[length:]


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    sock = socket.create_connection((host, port), timeout=10)
    print(json.dumps({"open": True}), flush=True)
    buffer = b""
    for line in sys.stdin:
        method, path, count, *headers = line.split()
        extra = "".join(f"{h.partition('=')[0]}: {h.partition('=')[2]}\r\n" for h in headers)
        body = b"x" * 5 if method in ("POST", "PUT") else b""
        request = (f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
                   .encode() + body)
        statuses: collections.Counter = collections.Counter()
        pods: collections.Counter = collections.Counter()
        bodies: dict[int, str] = {}
        try:
            for _ in range(int(count)):
                sock.sendall(request)
                status, answer, buffer = read_response(sock, buffer)
                statuses[status] += 1
                bodies.setdefault(status, answer.decode(errors="replace"))
                if answer.startswith(b"{"):
                    pods[json.loads(answer)["pod"]["name"]] += 1
        except OSError as exc:
            print(json.dumps({"error": f"{type(exc).__name__}: {exc}", "statuses": statuses}), flush=True)
            return
        print(json.dumps({"statuses": statuses, "pods": pods, "bodies": bodies}), flush=True)


if __name__ == "__main__":
    main()
