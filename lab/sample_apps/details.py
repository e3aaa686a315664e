"""Bookinfo's details (``istio/examples-bookinfo-details-v1``, Ruby/WEBrick in the original), port
9080: ``GET /details/{id}`` answers the book's details as compact JSON, ``/health``
``{"status": "Details is healthy"}``. A non-numeric id is a 400 with the original's message. The
external book service of details-v2 (``ENABLE_EXTERNAL_BOOK_SERVICE``) is not built in.
"""

from __future__ import annotations

import argparse
import json

from ._serve import Handler, Reply, Request, serve

JSON_TYPE = "application/json"


def book_details(product_id: int) -> dict[str, object]:
    return {"id": product_id, "author": "William Shakespeare", "year": 1595, "type": "paperback", "pages": 200,
            "publisher": "PublisherA", "language": "English", "ISBN-10": "1234567890", "ISBN-13": "123-1234567890"}


def _compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()  # Ruby's to_json


def answer(request: Request) -> Reply:
    if request.path == "/health":
        return Reply(200, _compact({"status": "Details is healthy"}), JSON_TYPE)
    if request.path == "/details" or request.path.startswith("/details/"):
        try:
            product_id = int(request.path.rstrip("/").split("/")[-1])
        except ValueError:
            return Reply(400, _compact({"error": "please provide numeric product id"}), JSON_TYPE)
        return Reply(200, _compact(book_details(product_id)), JSON_TYPE)
    return Reply(404, b"<HTML><HEAD><TITLE>Not Found</TITLE></HEAD><BODY><H1>Not Found</H1></BODY></HTML>\n",
                 "text/html; charset=ISO-8859-1")


class DetailsHandler(Handler):
    server_version = "WEBrick/1.8.1 (Ruby/3.3)"

    def route(self, request: Request) -> Reply:
        return answer(request)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="details")
    parser.add_argument("port", nargs="?", type=int, default=9080)
    serve(DetailsHandler, parser.parse_args(argv).port)
