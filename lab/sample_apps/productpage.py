"""Bookinfo's productpage (``istio/examples-bookinfo-productpage-v1``, Flask in the original), port
9080. ``GET /productpage`` renders the book with its details (``http://details:9080/details/0``) and
its reviews (``http://reviews:9080/reviews/0``, asked twice before giving up, as the original's
deliberate bug for the fault-injection task), each with a 3 s timeout and the user's cookie and trace
headers passed on; services are found by name through cluster DNS (``SERVICES_DOMAIN`` appended when
set). Also ``/``, ``/health``, ``/login`` and ``/logout`` (the ``user`` cookie), and the JSON API
``/api/v1/products[/{id}[/reviews|/ratings]]``. The page keeps the original's title and texts and
draws stars as the Bootstrap template did (``glyphicon-star`` / ``glyphicon-star-empty`` in the
review's colour); its styling is not the original's.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
from collections.abc import Callable, Mapping
from urllib.parse import parse_qsl

from ._serve import Fetched, Handler, Reply, Request, fetch, forwarded, serve

HTML_TYPE = "text/html; charset=utf-8"
JSON_TYPE = "application/json"
CALL_TIMEOUT_SECONDS = 3.0  # the original's requests timeout
REVIEWS_ATTEMPTS = 2  # the original asks reviews twice (on purpose: Istio's fault-injection task relies on it)
TRACE_HEADERS = ("x-request-id", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags",
                 "x-ot-span-context")
PRODUCTS = ({
    "id": 0,
    "title": "The Comedy of Errors",
    "descriptionHtml": '<a href="https://en.wikipedia.org/wiki/The_Comedy_of_Errors">Wikipedia Summary</a>: '
                       "The Comedy of Errors is one of <b>William Shakespeare's</b> early plays. It is his shortest "
                       "and one of his most farcical comedies, with a major part of the humour coming from slapstick "
                       "and mistaken identity, in addition to puns and word play.",
},)

Fetch = Callable[[str, int, str, Mapping[str, str], float], Fetched]


class ProductPage:
    def __init__(self, environ: Mapping[str, str], fetcher: Fetch = fetch) -> None:
        domain = environ.get("SERVICES_DOMAIN")
        self.suffix = f".{domain}" if domain else ""
        self.fetch = fetcher

    def _headers(self, request: Request) -> dict[str, str]:
        headers = forwarded(request, TRACE_HEADERS)
        user = request.cookie("user")
        if user:
            headers["Cookie"] = f"user={user}"
        return headers

    def _get(self, service: str, path: str, request: Request, attempts: int, what: str) -> tuple[int, object]:
        got = Fetched(0)
        for _ in range(attempts):
            got = self.fetch(f"{service}{self.suffix}", 9080, path, self._headers(request), CALL_TIMEOUT_SECONDS)
            if got.status == 200:
                try:
                    return 200, json.loads(got.body)
                except ValueError:
                    got = Fetched(500)
        return got.status or 500, {"error": f"Sorry, product {what} are currently unavailable for this book."}

    def details(self, product_id: object, request: Request) -> tuple[int, object]:
        return self._get("details", f"/details/{product_id}", request, 1, "details")

    def reviews(self, product_id: object, request: Request) -> tuple[int, object]:
        return self._get("reviews", f"/reviews/{product_id}", request, REVIEWS_ATTEMPTS, "reviews")

    def ratings(self, product_id: object, request: Request) -> tuple[int, object]:
        return self._get("ratings", f"/ratings/{product_id}", request, 1, "ratings")

    def answer(self, request: Request) -> Reply:
        path = request.path
        if path in ("/", "/index.html"):
            return Reply(200, render_index().encode(), HTML_TYPE)
        if path == "/health":
            return Reply(200, b"Product page is healthy", HTML_TYPE)
        if path == "/productpage":
            user = request.cookie("user") or ""
            details, reviews = self.details(0, request), self.reviews(0, request)
            return Reply(200, render_page(PRODUCTS[0], details, reviews, user).encode(), HTML_TYPE)
        if path == "/login" and request.method == "POST":
            user = dict(parse_qsl(request.body.decode(errors="replace"))).get("username", "")
            return self._redirect(request, f"user={user}; Path=/")
        if path == "/logout":
            return self._redirect(request, "user=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Path=/")
        if path == "/api/v1/products":
            return Reply(200, json.dumps(list(PRODUCTS)).encode(), JSON_TYPE)
        if match := re.fullmatch(r"/api/v1/products/([^/]+)(/reviews|/ratings)?", path):
            call = {None: self.details, "/reviews": self.reviews, "/ratings": self.ratings}[match.group(2)]
            status, value = call(match.group(1), request)
            return Reply(status, json.dumps(value).encode(), JSON_TYPE)
        return Reply(404, b"<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n",
                     HTML_TYPE)

    @staticmethod
    def _redirect(request: Request, cookie: str) -> Reply:
        return Reply(302, b"", HTML_TYPE, (("Location", request.headers.get("referer", "/productpage")),
                                           ("Set-Cookie", cookie)))


def render_index() -> str:
    return ("<!DOCTYPE html><html><head><title>Simple Bookstore App</title></head><body>"
            "<h3>Hello! This is a simple bookstore application consisting of three services as shown below</h3>"
            '<p>Click on one of the links below to auto generate a request to the backend as a real user or a '
            'tester</p><p><a href="/productpage?u=normal">Normal user</a></p>'
            '<p><a href="/productpage?u=test">Test user</a></p></body></html>')


def _stars(rating: Mapping[str, object]) -> str:
    if "error" in rating:
        return f'<p><i>{html.escape(str(rating["error"]))}</i></p>'
    count = int(rating.get("stars", 0))  # type: ignore[call-overload]
    color = html.escape(str(rating.get("color", "black")))
    return (f'<font color="{color}">' + '<span class="glyphicon glyphicon-star"></span>' * count
            + '<span class="glyphicon glyphicon-star-empty"></span>' * (5 - count) + "</font>")


def render_page(product: Mapping[str, object], details: tuple[int, object], reviews: tuple[int, object],
                user: str) -> str:
    esc = html.escape
    parts = ["<!DOCTYPE html><html><head><title>Simple Bookstore App</title></head><body>",
             '<nav><a href="#">BookInfo Sample</a> ',
             (f"<span>{esc(user)}</span> <a href=\"/logout\">sign out</a>" if user else
              '<form method="post" action="/login"><input type="text" name="username"> '
              '<input type="password" name="passwd"> <button type="submit">Sign in</button></form>'),
             "</nav>",
             f'<h3 class="text-center text-primary">{esc(str(product["title"]))}</h3>',
             f"<p>Summary: {product['descriptionHtml']}</p>"]
    status, value = details
    info: Mapping[str, object] = value if isinstance(value, dict) else {}
    parts.append("<div class=\"details\">")
    if status == 200:
        parts.append("<h4 class=\"text-center text-primary\">Book Details</h4><dl>")
        for label, key in (("Type:", "type"), ("Pages:", "pages"), ("Publisher:", "publisher"),
                           ("Language:", "language"), ("ISBN-10:", "ISBN-10"), ("ISBN-13:", "ISBN-13")):
            parts.append(f"<dt>{label}</dt><dd>{esc(str(info.get(key, '')))}</dd>")
        parts.append("</dl>")
    else:
        parts.append(f"<h4 class=\"text-center text-primary\">Error fetching product details!</h4>"
                     f"<p>{esc(str(info.get('error', '')))}</p>")
    parts.append("</div><div class=\"reviews\">")
    status, value = reviews
    body: Mapping[str, object] = value if isinstance(value, dict) else {}
    if status == 200:
        parts.append("<h4 class=\"text-center text-primary\">Book Reviews</h4>")
        for review in body.get("reviews", []):  # type: ignore[attr-defined]
            parts.append(f"<blockquote><p>{esc(str(review.get('text', '')))}</p>"
                         f"<small>{esc(str(review.get('reviewer', '')))}</small>")
            if isinstance(review.get("rating"), dict):
                parts.append(_stars(review["rating"]))
            parts.append("</blockquote>")
        parts.append(f"<dl><dt>Reviews served by:</dt><dd><u>{esc(str(body.get('podname', '')))}</u></dd></dl>")
    else:
        parts.append(f"<h4 class=\"text-center text-primary\">Error fetching product reviews!</h4>"
                     f"<p>{esc(str(body.get('error', '')))}</p>")
    parts.append("</div></body></html>")
    return "".join(parts)


def handler_for(app: ProductPage) -> type[Handler]:
    class ProductPageHandler(Handler):
        server_version = "gunicorn"

        def route(self, request: Request) -> Reply:
            return app.answer(request)

    return ProductPageHandler


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="productpage")
    parser.add_argument("port", nargs="?", type=int, default=9080)
    serve(handler_for(ProductPage(os.environ)), parser.parse_args(argv).port)
