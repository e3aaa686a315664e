"""An HTTP echo server for the lab's sample pods: it answers every request with what it saw.

Standard library only, so that it runs with any python3. The answer is JSON: method, path, headers,
the client's address and port as the server's socket sees them (in the mesh, the real client pod's
IP: ztunnel connects to the app with the client's source address), and the pod this runs in.
It prints "listening on HOST:PORT" once it has bound (port 0 picks a free one), for whoever waits.
"""

from __future__ import annotations

import argparse
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class EchoHandler(BaseHTTPRequestHandler):
    server_version = "ambient-echo/1"
    protocol_version = "HTTP/1.1"  # keep-alive: one connection may carry many requests
    # The head and the body go out as two writes: with Nagle's algorithm the body waited for the
    # client's delayed ACK of the head (40 ms on Linux), so a keep-alive client got 25 answers a second.
    disable_nagle_algorithm = True

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        reply = json.dumps({
            "method": self.command,
            "path": self.path,
            "headers": dict(self.headers.items()),
            "body_bytes": len(body),
            "client": {"address": self.client_address[0], "port": self.client_address[1]},
            "pod": {"name": os.environ.get("POD_NAME", ""), "namespace": os.environ.get("POD_NAMESPACE", ""),
                    "ip": os.environ.get("POD_IP", "")},
        }, indent=2).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _answer

    def log_message(self, format: str, *args) -> None:  # one line per request on stderr
        super().log_message(format, *args)


def main() -> None:
    parser = argparse.ArgumentParser(description="HTTP echo server")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), EchoHandler)
    host, port = server.server_address[:2]
    print(f"listening on {host}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
