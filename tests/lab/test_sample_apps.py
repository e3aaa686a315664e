"""The built-in sample apps answer as Istio's images do: in process (their answer functions) and as
the lab runs them (``python -S lab/sample_apps <app>``, on loopback, port 0)."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qsl, urlsplit

import pytest

from lab.sample_apps import details, helloworld, httpbin, productpage, ratings, reviews
from lab.sample_apps._serve import Fetched, Request
from lab.sample_images import image_program

ANSWER_TIMEOUT = 10.0  # a subprocess app answers in milliseconds; this only bounds a broken one


def request(path: str, method: str = "GET", headers: dict[str, str] | None = None, body: bytes = b"",
            client: str = "10.244.0.7") -> Request:
    pairs = tuple((headers or {"Host": "httpbin:8000", "User-Agent": "curl/8.5.0"}).items())
    parts = urlsplit(path)
    return Request(method, path, parts.path, tuple(parse_qsl(parts.query, True)),
                   {k.lower(): v for k, v in pairs}, pairs, body, (client, 40000))


# --- httpbin ---------------------------------------------------------------------------------------

GO = httpbin.HttpBin("go")


def body(reply) -> dict:
    return json.loads(reply.body)


def test_go_httpbin_get_answers_lists_indented_json_and_the_origin():
    reply = GO.answer(request("/get?a=1&a=2&b=x"))
    assert reply.status == 200 and reply.content_type == "application/json; charset=utf-8"
    assert reply.body.startswith(b'{\n  "args": {') and reply.body.endswith(b"}\n")
    got = body(reply)
    assert got == {"args": {"a": ["1", "2"], "b": ["x"]},
                   "headers": {"Host": ["httpbin:8000"], "User-Agent": ["curl/8.5.0"]},
                   "method": "GET", "origin": "10.244.0.7", "url": "http://httpbin:8000/get?a=1&a=2&b=x"}


def test_go_httpbin_headers_ip_and_x_forwarded_for():
    headers = {"Host": "h", "x-request-id": "abc", "X-Forwarded-For": "1.2.3.4, 10.0.0.1"}
    assert body(GO.answer(request("/headers", headers=headers)))["headers"] == {
        "Host": ["h"], "X-Request-Id": ["abc"], "X-Forwarded-For": ["1.2.3.4, 10.0.0.1"]}
    assert body(GO.answer(request("/ip", headers=headers))) == {"origin": "1.2.3.4"}
    assert body(GO.answer(request("/ip"))) == {"origin": "10.244.0.7"}


def test_python_httpbin_answers_single_values():
    got = body(httpbin.HttpBin("python").answer(request("/get?a=1")))
    assert got["args"] == {"a": "1"} and got["headers"]["Host"] == "httpbin:8000"


@pytest.mark.parametrize("code, headers, text", [
    (200, (), b""), (503, (), b""), (418, (("X-More-Info", "http://tools.ietf.org/html/rfc2324"),), b"I'm a teapot!"),
    (401, (("WWW-Authenticate", 'Basic realm="Fake Realm"'),), b""),
])
def test_httpbin_status(code, headers, text):
    reply = GO.answer(request(f"/status/{code}"))
    assert (reply.status, reply.headers, reply.body) == (code, headers, text)


@pytest.mark.parametrize("path, status, detail", [
    ("/status/abc", 400, "invalid status code"), ("/status/600", 400, "not in range [100, 599]"),
    ("/delay/11", 400, "longer than 10s"), ("/delay/x", 400, "invalid duration"), ("/nope", 404, None),
])
def test_httpbin_errors_are_go_httpbin_json(path, status, detail):
    reply = GO.answer(request(path))
    got = body(reply)
    assert reply.status == status and got["status_code"] == status
    assert (detail is None and "detail" not in got) or detail in got["detail"]


def test_httpbin_get_refuses_other_methods_and_anything_echoes_the_body():
    assert GO.answer(request("/get", "POST")).status == 405
    got = body(GO.answer(request("/anything/x?q=1", "PUT", {"Host": "h", "Content-Type": "application/json"},
                                 b'{"k": [1, 2]}')))
    assert got["method"] == "PUT" and got["json"] == {"k": [1, 2]} and got["data"] == '{"k": [1, 2]}'
    got = body(GO.answer(request("/post", "POST", {"Content-Type": "application/x-www-form-urlencoded"}, b"a=1")))
    assert got["form"] == {"a": ["1"]}
    assert GO.answer(request("/post", "POST", {"Content-Type": "application/json"}, b"{")).status == 400


def test_httpbin_delay_waits_and_is_bounded():
    assert GO.delay_seconds("1.5") == 1.5 and GO.delay_seconds("300ms") == pytest.approx(0.3)
    assert httpbin.HttpBin("python").delay_seconds("30") == httpbin.MAX_DELAY_SECONDS
    reply = GO.answer(request("/delay/0"))
    assert reply.status == 200 and reply.headers[0][0] == "Server-Timing" and body(reply)["method"] == "GET"


def test_httpbin_html_and_json():
    assert b"<h1>Herman Melville - Moby-Dick</h1>" in GO.answer(request("/html")).body
    assert body(GO.answer(request("/json")))["slideshow"]["title"] == "Sample Slide Show"


# --- helloworld, details, ratings ------------------------------------------------------------------

def test_helloworld_says_its_version_and_instance():
    env = {"SERVICE_VERSION": "v2", "HOSTNAME": "helloworld-v2-0"}
    assert helloworld.answer(request("/hello"), env).body == b"Hello version: v2, instance: helloworld-v2-0\n"
    assert helloworld.answer(request("/health"), env).body == b"Helloworld is healthy"
    assert helloworld.answer(request("/"), env).status == 404


def test_details_answers_the_books_details_as_the_ruby_service():
    reply = details.answer(request("/details/0"))
    assert reply.body == (b'{"id":0,"author":"William Shakespeare","year":1595,"type":"paperback","pages":200,'
                          b'"publisher":"PublisherA","language":"English","ISBN-10":"1234567890",'
                          b'"ISBN-13":"123-1234567890"}')
    assert details.answer(request("/details/abc")).status == 400
    assert json.loads(details.answer(request("/health")).body) == {"status": "Details is healthy"}


def test_ratings_answers_and_keeps_posted_ratings():
    app = ratings.Ratings()
    assert app.answer(request("/ratings/0")).body == b'{"id":0,"ratings":{"Reviewer1":5,"Reviewer2":4}}'
    assert app.answer(request("/ratings/x")).status == 400
    assert app.answer(request("/ratings/7", "POST", body=b'{"Reviewer1": 1}')).status == 200
    assert json.loads(app.answer(request("/ratings/7")).body) == {"id": 7, "ratings": {"Reviewer1": 1}}
    assert app.answer(request("/ratings/7", "POST", body=b"{")).status == 400


# --- reviews and productpage ------------------------------------------------------------------------

def ratings_fetcher(status=200):
    calls = []

    def fetch(host, port, path, headers, timeout):
        calls.append((host, port, path, dict(headers), timeout))
        return Fetched(status, ratings.Ratings().answer(request(path)).body if status == 200 else b"")

    return fetch, calls


@pytest.mark.parametrize("env, ratings_called, rating", [
    ({"ENABLE_RATINGS": "false"}, False, None),
    ({"ENABLE_RATINGS": "true", "STAR_COLOR": "black"}, True, {"stars": 5, "color": "black"}),
    ({"ENABLE_RATINGS": "true", "STAR_COLOR": "red"}, True, {"stars": 5, "color": "red"}),
])
def test_reviews_versions(env, ratings_called, rating):
    fetch, calls = ratings_fetcher()
    app = reviews.Reviews({**env, "HOSTNAME": "reviews-v9-0"}, fetch)
    got = json.loads(app.answer(request("/reviews/0", headers={"x-request-id": "r1", "cookie": "user=jason"})).body)
    assert got["id"] == "0" and got["podname"] == "reviews-v9-0" and got["clustername"] == "null"
    assert [r["reviewer"] for r in got["reviews"]] == ["Reviewer1", "Reviewer2"]
    assert got["reviews"][0].get("rating") == rating
    assert bool(calls) == ratings_called
    if calls:
        timeout = 10.0 if env["STAR_COLOR"] == "black" else 2.5
        assert calls == [("ratings", 9080, "/ratings/0", {"x-request-id": "r1", "cookie": "user=jason"}, timeout)]


def test_reviews_without_ratings_says_so():
    fetch, _ = ratings_fetcher(status=0)
    got = json.loads(reviews.Reviews({"ENABLE_RATINGS": "true"}, fetch).answer(request("/reviews/0")).body)
    assert got["reviews"][1]["rating"] == {"error": "Ratings service is currently unavailable"}


def bookinfo_fetcher(env, calls):
    """The services by name, as cluster DNS gives them: details, reviews (this version), ratings."""
    ratings_app = ratings.Ratings()

    def fetch(host, port, path, headers, timeout):
        calls.append((host, port, path))
        service = {"details": details.answer, "ratings": ratings_app.answer}.get(host)
        if host == "reviews":
            service = reviews.Reviews(env, fetch).answer
        if service is None:
            return Fetched(0, error="unknown host")
        reply = service(request(path, headers=dict(headers)))
        return Fetched(reply.status, reply.body)

    return fetch


@pytest.mark.parametrize("env, stars", [
    ({"ENABLE_RATINGS": "false"}, None),
    ({"ENABLE_RATINGS": "true", "STAR_COLOR": "black"}, "black"),
    ({"ENABLE_RATINGS": "true", "STAR_COLOR": "red"}, "red"),
])
def test_productpage_renders_details_and_each_reviews_version(env, stars):
    calls: list = []
    page = productpage.ProductPage({}, bookinfo_fetcher({**env, "HOSTNAME": "reviews-0"}, calls))
    html = page.answer(request("/productpage")).body.decode()
    assert "<title>Simple Bookstore App</title>" in html and "The Comedy of Errors" in html
    assert "<dd>PublisherA</dd>" in html and "An extremely entertaining play by Shakespeare" in html
    assert calls[:2] == [("details", 9080, "/details/0"), ("reviews", 9080, "/reviews/0")]
    if stars is None:
        assert "glyphicon-star" not in html
    else:
        assert f'<font color="{stars}">' in html and html.count('class="glyphicon glyphicon-star"') == 5 + 4


def test_productpage_asks_reviews_twice_then_says_sorry_and_keeps_the_page():
    calls: list = []

    def down(host, port, path, headers, timeout):
        calls.append(host)
        return Fetched(0, error="refused")

    page = productpage.ProductPage({"SERVICES_DOMAIN": "default.svc.cluster.local"}, down)
    html = page.answer(request("/productpage")).body.decode()
    assert "Error fetching product details!" in html and "Error fetching product reviews!" in html
    assert "Sorry, product reviews are currently unavailable for this book." in html
    assert calls.count("reviews.default.svc.cluster.local") == 2


def test_productpage_api_and_login():
    page = productpage.ProductPage({}, bookinfo_fetcher({"ENABLE_RATINGS": "true"}, []))
    assert json.loads(page.answer(request("/api/v1/products")).body)[0]["title"] == "The Comedy of Errors"
    assert json.loads(page.answer(request("/api/v1/products/0/ratings")).body)["ratings"]["Reviewer1"] == 5
    login = page.answer(request("/login", "POST", {"Referer": "/productpage"}, b"username=jason&passwd=x"))
    assert login.status == 302 and ("Set-Cookie", "user=jason; Path=/") in login.headers
    assert "jason" in page.answer(request("/productpage", headers={"Cookie": "user=jason"})).body.decode()


# --- as the lab runs them ---------------------------------------------------------------------------

@contextmanager
def running(image: str, args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> Iterator[int]:
    """The image's program with its port set to 0, on loopback; yields the port it bound."""
    program = image_program(image, args)
    argv = [("0" if arg in ("9080", "9000", "80") and i > 3 else arg) for i, arg in enumerate(program.argv)]
    if "--port" not in argv and argv[4:5] in (["httpbin"], ["helloworld"]):
        argv += ["--port", "0"]
    environ = {"PATH": os.environ["PATH"], "HOSTNAME": "pod-0", **program.env, **(env or {})}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=environ)
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()  # printed once bound
        match = re.match(r"listening on [^ ]*:(\d+)", line)
        assert match, line
        yield int(match.group(1))
    finally:
        proc.kill()
        proc.wait()


def get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=ANSWER_TIMEOUT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_go_httpbin_image_runs_and_answers_over_http():
    with running("docker.io/mccutchen/go-httpbin:v2.15.0") as port:
        status, data = get(port, "/get?x=1")
        assert status == 200 and json.loads(data)["args"] == {"x": ["1"]}
        assert get(port, "/status/418") == (418, b"I'm a teapot!")


def test_helloworld_image_runs_with_the_images_version():
    with running("docker.io/istio/examples-helloworld-v1:1.0") as port:
        assert get(port, "/hello") == (200, b"Hello version: v1, instance: pod-0\n")


def test_tcp_echo_image_runs_and_prefixes_each_line():
    with running("docker.io/istio/tcp-echo-server:1.3", ("0", "one")) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT) as conn:
            conn.sendall(b"hello\nworld\n")
            reader = conn.makefile("rb")
            assert [reader.readline(), reader.readline()] == [b"one hello\n", b"one world\n"]


def test_reviews_v3_image_calls_ratings_by_its_configured_name():
    with running("docker.io/istio/examples-bookinfo-ratings-v1:1.20.1") as ratings_port:
        env = {"RATINGS_HOSTNAME": "127.0.0.1", "RATINGS_SERVICE_PORT": str(ratings_port)}
        with running("docker.io/istio/examples-bookinfo-reviews-v3:1.20.1", env=env) as port:
            status, data = get(port, "/reviews/0")
            got = json.loads(data)
            assert status == 200 and got["podname"] == "pod-0"
            assert got["reviews"][0]["rating"] == {"stars": 5, "color": "red"}


def test_details_and_productpage_images_run():
    with running("docker.io/istio/examples-bookinfo-details-v1:1.20.1") as port:
        assert get(port, "/details/0")[0] == 200
    with running("docker.io/istio/examples-bookinfo-productpage-v1:1.20.1") as port:
        assert get(port, "/health") == (200, b"Product page is healthy")
