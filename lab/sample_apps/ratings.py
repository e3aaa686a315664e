"""Bookinfo's ratings (``istio/examples-bookinfo-ratings-v1``, Node.js in the original), port 9080:
``GET /ratings/{id}`` answers ``{"id":N,"ratings":{"Reviewer1":5,"Reviewer2":4}}``, ``POST`` stores
other ratings for that id in memory (v1 behaviour), ``/health`` ``{"status":"Ratings is healthy"}``.
The database-backed v2 (MongoDB/MySQL) is not built in.
"""

from __future__ import annotations

import argparse
import json
import re
import threading

from ._serve import Handler, Reply, Request, serve

JSON_TYPE = "application/json"
# Ratings POSTed for more products than this are refused (507): the original keeps them all.
MAX_STORED_PRODUCTS = 1000


def _json(status: int, value: object) -> Reply:
    return Reply(status, json.dumps(value, separators=(",", ":")).encode(), JSON_TYPE)


class Ratings:
    def __init__(self) -> None:
        self._added: dict[int, dict[str, object]] = {}
        self._lock = threading.Lock()

    def get(self, product_id: int) -> dict[str, object]:
        with self._lock:
            return self._added.get(product_id) or {"id": product_id, "ratings": {"Reviewer1": 5, "Reviewer2": 4}}

    def answer(self, request: Request) -> Reply:
        if request.path == "/health" and request.method == "GET":
            return _json(200, {"status": "Ratings is healthy"})
        if re.match(r"/ratings/[0-9]*", request.path) and request.method in ("GET", "POST"):
            match = re.match(r"-?[0-9]+", request.path.split("/")[-1])  # JavaScript's parseInt
            if not match:
                return _json(400, {"error": "please provide numeric product ID"})
            product_id = int(match.group())
            if request.method == "GET":
                return _json(200, self.get(product_id))
            try:
                ratings = json.loads(request.body)
            except ValueError:
                return _json(400, {"error": "please provide valid ratings JSON"})
            with self._lock:
                if product_id not in self._added and len(self._added) >= MAX_STORED_PRODUCTS:
                    return _json(507, {"error": "too many products rated"})
                self._added[product_id] = {"id": product_id, "ratings": ratings}
            return _json(200, self.get(product_id))
        return Reply(404, b"Page Not Found", "text/plain")


def handler_for(app: Ratings) -> type[Handler]:
    class RatingsHandler(Handler):

        def route(self, request: Request) -> Reply:
            return app.answer(request)

    return RatingsHandler


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="ratings")
    parser.add_argument("port", nargs="?", type=int, default=9080)
    serve(handler_for(Ratings()), parser.parse_args(argv).port)
