"""httpbin: go-httpbin (``mccutchen/go-httpbin``, port 8080) or the Python httpbin
(``kennethreitz/httpbin``, ``kong/httpbin``, port 80), on the paths Istio's samples and docs use.

``--flavour go`` answers as go-httpbin: header and query values are lists, JSON is indented by two
spaces with a final newline, errors are ``{"status_code": N, "error": "..."}``. ``--flavour python``
answers as the Python httpbin: single string values. Paths: /get, /headers, /ip, /user-agent,
/status/{code}, /anything[/...], /post /put /patch /delete, /delay/{seconds} (at most
MAX_DELAY_SECONDS, as go-httpbin's default -max-duration), /html, /json, /uuid, /robots.txt, and
/ (a short index). Other paths of the originals (images, streams, cookies, auth...) answer 404.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import time
import uuid
from collections.abc import Mapping
from urllib.parse import parse_qsl

from ._serve import Handler, Reply, Request, serve

MAX_DELAY_SECONDS = 10.0  # go-httpbin's default -max-duration, and the Python httpbin's cap
JSON_TYPE = "application/json; charset=utf-8"
HTML_TYPE = "text/html; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"
_BODY_METHODS = {"/post": "POST", "/put": "PUT", "/patch": "PATCH", "/delete": "DELETE"}
_STATUS_TEXT = {
    200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 418: "I'm a teapot", 500: "Internal Server Error",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
}
# /status/{code} answers these with the extra headers and body the originals send.
_STATUS_SPECIAL = {
    401: ((("WWW-Authenticate", 'Basic realm="Fake Realm"'),), b""),
    418: ((("X-More-Info", "http://tools.ietf.org/html/rfc2324"),), b"I'm a teapot!"),
}
SAMPLE_JSON = {"slideshow": {
    "author": "Yours Truly", "date": "date of publication", "title": "Sample Slide Show",
    "slides": [{"title": "Wake up to WonderWidgets!", "type": "all"},
               {"items": ["Why <em>WonderWidgets</em> are great", "Who <em>buys</em> WonderWidgets"],
                "title": "Overview", "type": "all"}],
}}
MOBY_HTML = (
    "<!DOCTYPE html>\n<html>\n  <head>\n  </head>\n  <body>\n      <h1>Herman Melville - Moby-Dick</h1>\n\n"
    "      <div>\n        <p>\n          Availing himself of the mild, summer-cool weather that now reigned in these "
    "latitudes, and in preparation for the peculiarly active pursuits shortly to be anticipated, Perth, the "
    "begrimed, blistered old blacksmith, had not removed his portable forge to the hold again...\n"
    "        </p>\n      </div>\n  </body>\n</html>"
)


def canonical(name: str) -> str:
    """Go's http.CanonicalHeaderKey: "x-request-id" -> "X-Request-Id"."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


class HttpBin:
    """The answers, a pure function of the request (the delay aside)."""

    def __init__(self, flavour: str) -> None:
        if flavour not in ("go", "python"):
            raise ValueError(f"unknown httpbin flavour {flavour!r}")
        self.go = flavour == "go"

    def _json(self, status: int, value: object, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
        if self.go:
            body = json.dumps(value, indent=2, ensure_ascii=False) + "\n"
            return Reply(status, body.encode(), JSON_TYPE, headers)
        return Reply(status, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode(), "application/json",
                     headers)

    def error(self, status: int, detail: str = "") -> Reply:
        value: dict[str, object] = {"status_code": status, "error": _STATUS_TEXT.get(status, "Error")}
        if detail:
            value["detail"] = detail
        return self._json(status, value)

    def _multi(self, pairs: tuple[tuple[str, str], ...], canonical_names: bool) -> dict[str, object]:
        grouped: dict[str, list[str]] = {}
        for key, value in pairs:
            grouped.setdefault(canonical(key) if canonical_names else key, []).append(value)
        if self.go:
            return dict(grouped)
        return {key: ",".join(values) for key, values in grouped.items()}

    def headers(self, request: Request) -> dict[str, object]:
        return self._multi(request.header_list, canonical_names=True)

    @staticmethod
    def origin(request: Request) -> str:
        forwarded_for = request.headers.get("x-forwarded-for", "")
        return forwarded_for.split(",")[0].strip() if forwarded_for else request.client[0]

    @staticmethod
    def url(request: Request) -> str:
        scheme = request.headers.get("x-forwarded-proto") or "http"
        return f"{scheme}://{request.headers.get('host', '')}{request.target}"

    def _no_body(self, request: Request) -> dict[str, object]:
        return {"args": self._multi(request.query, canonical_names=False), "headers": self.headers(request),
                "method": request.method, "origin": self.origin(request), "url": self.url(request)}

    def _with_body(self, request: Request) -> dict[str, object]:
        value = self._no_body(request)
        data, form, parsed = "", {}, None
        if request.body:
            content_type = request.headers.get("content-type", "").split(";")[0].strip()
            data = request.body.decode("utf-8", "replace")
            if content_type == "application/x-www-form-urlencoded":
                form = self._multi(tuple(parse_qsl(data, True)), canonical_names=False)
            elif content_type == "application/json":
                try:
                    parsed = json.loads(data)
                except ValueError as exc:
                    raise _BadBody(f"error parsing request body: {exc}") from exc
            elif content_type not in ("text/plain", "text/html"):
                encoded = base64.urlsafe_b64encode(request.body).decode()
                data = f"data:{content_type or 'application/octet-stream'};base64,{encoded}"
        value.update({"data": data, "files": {}, "form": form, "json": parsed})
        return value

    def answer(self, request: Request) -> Reply:
        path, method = request.path, request.method
        try:
            if path == "/":
                return Reply(200, b"<!DOCTYPE html><html><body><h1>httpbin</h1>"
                             b"<p>A built-in httpbin of the ambient lab.</p></body></html>", HTML_TYPE)
            if path == "/get":
                if method not in ("GET", "HEAD"):
                    return self.error(405)
                return self._json(200, self._no_body(request))
            if path in _BODY_METHODS:
                if method != _BODY_METHODS[path]:
                    return self.error(405)
                return self._json(200, self._with_body(request))
            if path == "/anything" or path.startswith("/anything/"):
                return self._json(200, self._no_body(request) if method == "HEAD" else self._with_body(request))
            if path == "/headers":
                return self._json(200, {"headers": self.headers(request)})
            if path == "/ip":
                return self._json(200, {"origin": self.origin(request)})
            if path == "/user-agent":
                return self._json(200, {"user-agent": request.headers.get("user-agent", "")})
            if path == "/uuid":
                return self._json(200, {"uuid": str(uuid.uuid4())})
            if path == "/json":
                return self._json(200, SAMPLE_JSON)
            if path == "/html":
                return Reply(200, MOBY_HTML.encode(), HTML_TYPE)
            if path == "/robots.txt":
                return Reply(200, b"User-agent: *\nDisallow: /deny\n", TEXT_TYPE)
            if match := re.fullmatch(r"/status/([^/]+)", path):
                return self.status(match.group(1))
            if match := re.fullmatch(r"/delay/([^/]+)", path):
                return self.delay(match.group(1), request)
        except _BadBody as exc:
            return self.error(400, str(exc))
        return self.error(404)

    def status(self, raw: str) -> Reply:
        try:
            code = int(raw)
        except ValueError:
            return self.error(400, f"invalid status code: {raw!r}")
        if not 100 <= code <= 599:
            return self.error(400, f"invalid status code: {code} not in range [100, 599]")
        headers, body = _STATUS_SPECIAL.get(code, ((), b""))
        return Reply(code, body, TEXT_TYPE, headers)

    def delay_seconds(self, raw: str) -> float:
        """Go durations ("1.5s", "300ms") or plain seconds, bounded as go-httpbin bounds them."""
        match = re.fullmatch(r"([0-9]*\.?[0-9]+)(ms|s|m)?", raw)
        if not match:
            raise ValueError(f"invalid duration: {raw!r}")
        seconds = float(match.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[match.group(2)]
        if seconds > MAX_DELAY_SECONDS:
            if not self.go:  # the Python httpbin caps the delay instead of refusing it
                return MAX_DELAY_SECONDS
            raise ValueError(f"invalid duration: duration {seconds}s longer than {MAX_DELAY_SECONDS:g}s")
        return seconds

    def delay(self, raw: str, request: Request) -> Reply:
        try:
            seconds = self.delay_seconds(raw)
        except ValueError as exc:
            return self.error(400, str(exc))
        time.sleep(seconds)  # the point of the endpoint: the answer comes this late
        reply = self._json(200, self._with_body(request))
        timing = (("Server-Timing", f'initial_delay;dur={seconds * 1000:g};desc="initial delay"'),)
        return Reply(reply.status, reply.body, reply.content_type, timing)


class _BadBody(ValueError):
    pass


def handler_for(app: HttpBin) -> type[Handler]:
    class HttpBinHandler(Handler):
        server_version = "go-httpbin" if app.go else "gunicorn/19.9.0"

        def route(self, request: Request) -> Reply:
            return app.answer(request)

    return HttpBinHandler


def main(argv: list[str], environ: Mapping[str, str] = os.environ) -> None:
    parser = argparse.ArgumentParser(prog="httpbin")
    parser.add_argument("--flavour", choices=("go", "python"), default="go")
    parser.add_argument("--port", type=int, default=None, help="default: $PORT, else 8080 (go) or 80 (python)")
    parser.add_argument("--host", default=environ.get("HOST", "0.0.0.0"))
    args = parser.parse_args(argv)
    port = args.port if args.port is not None else int(environ.get("PORT") or (8080 if args.flavour == "go" else 80))
    serve(handler_for(HttpBin(args.flavour)), port, args.host)
