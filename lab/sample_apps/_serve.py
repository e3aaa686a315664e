"""What the sample apps share: a threaded HTTP/1.1 server with keep-alive, and a small client.

Standard library only (the apps run under ``python -S``). A handler subclasses `Handler` and
implements `route(method, path, query)` returning a `Reply`; the base class reads the body (bounded),
writes the head and the body in one write, and answers HEAD without a body. `serve` binds, prints
"listening on HOST:PORT" (port 0 picks a free one: the tests read the line), then serves forever.
"""

from __future__ import annotations

import http.client
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

# A request body larger than this is refused with 413: the apps echo bodies back, and a pod's memory
# is the node's (go-httpbin's own default limit is 1 MiB).
MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Request:
    method: str
    target: str  # as sent: path and query
    path: str
    query: tuple[tuple[str, str], ...]
    headers: Mapping[str, str]  # header names lower-cased; repeated headers joined with ", "
    header_list: tuple[tuple[str, str], ...]  # as received, names as sent, in order
    body: bytes
    client: tuple[str, int]

    def cookie(self, name: str) -> str | None:
        for part in self.headers.get("cookie", "").split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return value
        return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the originals
    # The head and body go out in one write anyway; without this a small reply could wait for the
    # client's delayed ACK (40 ms on Linux) behind Nagle's algorithm.
    disable_nagle_algorithm = True

    def route(self, request: Request) -> Reply:  # pragma: no cover - each app overrides it
        raise NotImplementedError

    def _handle(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self._send(Reply(413, b"request body too large\n"), head_only=False)
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        header_list = tuple((k, v) for k, v in self.headers.items())
        headers: dict[str, str] = {}
        for key, value in header_list:
            key = key.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        request = Request(self.command, self.path, parts.path or "/", tuple(parse_qsl(parts.query, True)),
                          headers, header_list, body, (self.client_address[0], self.client_address[1]))
        self._send(self.route(request), head_only=self.command == "HEAD")

    def _send(self, reply: Reply, head_only: bool) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        for key, value in reply.headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if not head_only:
            self.wfile.write(reply.body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: object) -> None:  # one line per request, on stderr
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


def serve(handler: type[Handler], port: int, host: str = "0.0.0.0") -> None:
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    bound_host, bound_port = server.socket.getsockname()[:2]
    print(f"listening on {bound_host}:{bound_port}", flush=True)
    server.serve_forever()


@dataclass(frozen=True)
class Fetched:
    status: int  # 0 when no answer came (refused, unresolvable, timed out)
    body: bytes = b""
    error: str = ""


def fetch(host: str, port: int, path: str, headers: Mapping[str, str], timeout: float) -> Fetched:
    """GET http://host:port/path: never raises, since every caller turns a failure into an answer."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path, headers=dict(headers))
        response = connection.getresponse()
        return Fetched(response.status, response.read(MAX_BODY_BYTES))
    except (OSError, http.client.HTTPException) as exc:
        return Fetched(0, error=f"{type(exc).__name__}: {exc}")
    finally:
        connection.close()


def forwarded(request: Request, names: tuple[str, ...]) -> dict[str, str]:
    """The headers of `names` the request carries, for a call onward (trace context, user...)."""
    return {name: request.headers[name] for name in names if name in request.headers}
