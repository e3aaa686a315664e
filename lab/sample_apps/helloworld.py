"""helloworld (``istio/examples-helloworld-v1|v2``): ``GET /hello`` answers
``Hello version: <SERVICE_VERSION>, instance: <HOSTNAME>`` and ``/health`` ``Helloworld is healthy``,
on port 5000, as Istio's Flask app. The original burns CPU on every /hello (a loop of a million
square roots, for autoscaling demos); this one answers at once.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

from ._serve import Handler, Reply, Request, serve

HTML_TYPE = "text/html; charset=utf-8"  # Flask's type for a str return


def answer(request: Request, environ: Mapping[str, str]) -> Reply:
    if request.path == "/hello":
        text = f"Hello version: {environ.get('SERVICE_VERSION')}, instance: {environ.get('HOSTNAME')}\n"
        return Reply(200, text.encode(), HTML_TYPE)
    if request.path == "/health":
        return Reply(200, b"Helloworld is healthy", HTML_TYPE)
    return Reply(404, b"<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n", HTML_TYPE)


class HelloHandler(Handler):
    server_version = "gunicorn"

    def route(self, request: Request) -> Reply:
        return answer(request, os.environ)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="helloworld")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    serve(HelloHandler, args.port)
