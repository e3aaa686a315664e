"""Bookinfo's reviews (``istio/examples-bookinfo-reviews-v1|v2|v3``, Java/Liberty in the original),
port 9080: ``GET /reviews/{id}`` answers two reviews; with ``ENABLE_RATINGS=true`` (v2, v3) each has
the stars the ratings service gives, in ``STAR_COLOR`` (v2 black, v3 red), or an error when ratings
cannot be reached. The images set those variables; the table in ``lab.sample_images`` does the same.
Ratings is called at ``http://$RATINGS_HOSTNAME[.$SERVICES_DOMAIN]:$RATINGS_SERVICE_PORT/ratings/{id}``
(default ``ratings:9080``: cluster DNS), with the original's timeouts (10 s black, 2.5 s otherwise)
and its list of propagated headers. The JSON is built as the original builds it (same spacing).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Callable, Mapping

from ._serve import Fetched, Handler, Reply, Request, fetch, forwarded, serve

JSON_TYPE = "application/json"
PROPAGATED_HEADERS = (
    "x-request-id", "x-ot-span-context", "x-datadog-trace-id", "x-datadog-parent-id", "x-datadog-sampling-priority",
    "traceparent", "tracestate", "x-cloud-trace-context", "grpc-trace-bin", "x-b3-traceid", "x-b3-spanid",
    "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "sw8", "end-user", "user-agent", "cookie", "authorization",
    "jwt",
)
REVIEW_1 = "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!"
REVIEW_2 = "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare."

Fetch = Callable[[str, int, str, Mapping[str, str], float], Fetched]


class Reviews:
    def __init__(self, environ: Mapping[str, str], fetcher: Fetch = fetch) -> None:
        self.ratings_enabled = environ.get("ENABLE_RATINGS", "").lower() == "true"  # Java's Boolean.valueOf
        self.star_color = environ.get("STAR_COLOR", "black")
        domain = environ.get("SERVICES_DOMAIN")
        self.ratings_host = environ.get("RATINGS_HOSTNAME", "ratings") + (f".{domain}" if domain else "")
        self.ratings_port = int(environ.get("RATINGS_SERVICE_PORT", "9080"))
        self.timeout = 10.0 if self.star_color == "black" else 2.5
        self.pod = environ.get("HOSTNAME", "null")
        self.cluster = environ.get("CLUSTER_NAME", "null")  # Java prints a missing variable as "null"
        self.fetch = fetcher

    def stars(self, product_id: int, request: Request) -> tuple[int, int]:
        """Reviewer1's and Reviewer2's stars, -1 when ratings could not say."""
        got = self.fetch(self.ratings_host, self.ratings_port, f"/ratings/{product_id}",
                         forwarded(request, PROPAGATED_HEADERS), self.timeout)
        if got.status != 200:
            print(f"Error: unable to contact http://{self.ratings_host}:{self.ratings_port}/ratings got "
                  f"{got.status or got.error}", flush=True)
            return -1, -1
        try:
            ratings = json.loads(got.body).get("ratings", {})
            return int(ratings.get("Reviewer1", -1)), int(ratings.get("Reviewer2", -1))
        except (ValueError, AttributeError, TypeError):
            return -1, -1

    def _rating(self, stars: int) -> str:
        if not self.ratings_enabled:
            return ""
        if stars == -1:
            return ', "rating": {"error": "Ratings service is currently unavailable"}'
        return f', "rating": {{"stars": {stars}, "color": "{self.star_color}"}}'

    def body(self, product_id: int, stars: tuple[int, int]) -> str:
        return (f'{{"id": "{product_id}","podname": "{self.pod}","clustername": "{self.cluster}","reviews": ['
                f'{{  "reviewer": "Reviewer1",  "text": "{REVIEW_1}"{self._rating(stars[0])}}},'
                f'{{  "reviewer": "Reviewer2",  "text": "{REVIEW_2}"{self._rating(stars[1])}}}]}}')

    def answer(self, request: Request) -> Reply:
        if request.path == "/health":
            return Reply(200, b'{"status": "Reviews is healthy"}', JSON_TYPE)
        match = re.fullmatch(r"/reviews/(-?[0-9]+)", request.path)
        if not match or request.method not in ("GET", "HEAD"):
            return Reply(404, b"", "text/plain")  # JAX-RS: no resource for that path or method
        product_id = int(match.group(1))
        stars = self.stars(product_id, request) if self.ratings_enabled else (-1, -1)
        return Reply(200, self.body(product_id, stars).encode(), JSON_TYPE)


def handler_for(app: Reviews) -> type[Handler]:
    class ReviewsHandler(Handler):
        def route(self, request: Request) -> Reply:
            return app.answer(request)

    return ReviewsHandler


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="reviews")
    parser.add_argument("--port", type=int, default=9080)
    serve(handler_for(Reviews(os.environ)), parser.parse_args(argv).port)
