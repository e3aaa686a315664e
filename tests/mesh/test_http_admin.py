"""The admin HTTP server every proxy serves (``mesh.http_admin``), over real sockets on 127.0.0.1
(port 0), with an h11 client."""

from __future__ import annotations

import json
import logging
from functools import partial

import pytest
import trio

from mesh.http_admin import MAX_REQUEST_BODY, MAX_REQUEST_HEAD, Response, Route, bind_tcp, serve_http
from tests.mesh.admin_client import LOCAL, Client, get, header, raw_exchange


def fail() -> Response:
    raise RuntimeError("the view is broken\nsecond line not shown")


ROUTES = {
    "/hello": lambda: Response.text(200, "hello\n"),
    "/data.json": lambda: Response.json({"a": 1}),
    "/boom": fail,
    "/wrong": lambda: "not a response",
    "/echo": Route(lambda request: Response.json({"method": request.method, "path": request.path,
                                                  "query": dict(request.query)}),
                   methods=("POST", "PUT"), usage="usage: POST /echo\n"),
}


@pytest.fixture
async def port(nursery) -> int:
    return await nursery.start(serve_http, (LOCAL, 0), ROUTES)


async def test_get_route(port):
    response, body = await get(port, "/hello")
    assert (response.status_code, body) == (200, b"hello\n")
    assert header(response, "Content-Type") == "text/plain; charset=utf-8"
    assert header(response, "Content-Length") == "6"


async def test_query_string_is_ignored(port):
    response, body = await get(port, "/data.json?x=1&y")
    assert response.status_code == 200
    assert json.loads(body) == {"a": 1}
    assert header(response, "Content-Type") == "application/json"


async def test_head_has_the_headers_of_get_and_no_body(port):
    response, body = await get(port, "/hello", method="HEAD")
    assert (response.status_code, body) == (200, b"")
    assert header(response, "Content-Length") == "6"


async def test_unknown_path_is_404_naming_the_known_ones(port):
    response, body = await get(port, "/nope")
    assert response.status_code == 404
    assert body.decode() == "no such path /nope; this port serves /boom, /data.json, /echo, /hello, /wrong\n"


async def test_other_methods_are_405_and_the_connection_stays_usable(port):
    client = await Client.open(port)
    response, body = await client.request("POST", "/hello", body=b"x" * 1000)
    assert response.status_code == 405
    assert header(response, "Allow") == "GET, HEAD"
    assert b"POST" in body
    response, body = await client.request("GET", "/hello")  # the body was read: keep-alive goes on
    assert (response.status_code, body) == (200, b"hello\n")
    await client.aclose()


async def test_a_route_with_methods_reads_the_decoded_query(port):
    response, body = await get(port, "/echo?level=a.b%3Ddebug&reset&level=x+y", method="POST")
    assert response.status_code == 200
    assert json.loads(body) == {"method": "POST", "path": "/echo", "query": {"level": "x y", "reset": ""}}
    response, body = await get(port, "/echo")  # GET is not among its methods: 405, with its usage
    assert response.status_code == 405
    assert header(response, "Allow") == "POST, PUT"
    assert body == b"method GET not allowed on /echo\nusage: POST /echo\n"


async def test_keep_alive_two_requests_on_one_connection(port):
    client = await Client.open(port)
    first, body1 = await client.request("GET", "/hello")
    second, body2 = await client.request("GET", "/data.json")
    assert (first.status_code, body1, second.status_code) == (200, b"hello\n", 200)
    assert json.loads(body2) == {"a": 1}
    await client.aclose()


async def test_pipelined_requests_are_answered_in_order(port):
    request = b"GET /hello HTTP/1.1\r\nHost: z\r\n\r\n"
    last = b"GET /nope HTTP/1.1\r\nHost: z\r\nConnection: close\r\n\r\n"
    received = await raw_exchange(port, request + request + last)
    assert received.count(b"HTTP/1.1 200 ") == 2
    assert received.index(b"HTTP/1.1 404 ") > received.rindex(b"HTTP/1.1 200 ")


async def test_connection_close_is_honoured(port):
    client = await Client.open(port)
    response, _ = await client.request("GET", "/hello", headers=[("Connection", "close")])
    assert response.status_code == 200
    assert header(response, "Connection") == "close"
    assert await client.stream.receive_some(100) == b""  # the server closed its side
    await client.aclose()


async def test_http_1_0_gets_an_answer_then_a_close(port):
    received = await raw_exchange(port, b"GET /hello HTTP/1.0\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 200 ")
    assert received.endswith(b"\r\n\r\nhello\n")


async def test_garbage_is_400_and_the_server_serves_the_next_connection(port):
    received = await raw_exchange(port, b"\x16\x03\x01\x02\x00 this is not HTTP\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 400 ")
    assert b"connection: close" in received.lower()
    assert b"bad request" in received
    response, body = await get(port, "/hello")
    assert (response.status_code, body) == (200, b"hello\n")


async def test_peer_closing_mid_request_is_400(port):
    received = await raw_exchange(port, b"GET /hello HTTP/1.1\r\nHost:")
    assert received.startswith(b"HTTP/1.1 400 ")


async def test_oversized_head_is_431(port):
    request = b"GET /hello HTTP/1.1\r\nHost: z\r\nX-Big: " + b"a" * 2 * MAX_REQUEST_HEAD + b"\r\n\r\n"
    received = await raw_exchange(port, request)
    assert received.startswith(b"HTTP/1.1 431 ")


async def test_oversized_body_is_413(port):
    body = b"x" * (MAX_REQUEST_BODY + 1)
    request = b"GET /hello HTTP/1.1\r\nHost: z\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    received = await raw_exchange(port, request)
    assert received.startswith(b"HTTP/1.1 413 ")


async def test_handler_exception_is_500_logged_and_the_server_survives(port, caplog):
    with caplog.at_level(logging.ERROR, logger="ambient.admin"):
        response, body = await get(port, "/boom")
    assert response.status_code == 500
    assert body == b"internal error serving /boom: RuntimeError: the view is broken\n"
    assert any("/boom" in record.getMessage() and record.exc_info for record in caplog.records)
    response, body = await get(port, "/wrong")  # not a Response: a bug too
    assert response.status_code == 500
    assert b"TypeError" in body
    response, _ = await get(port, "/hello")
    assert response.status_code == 200


async def test_a_silent_client_is_dropped_after_the_request_timeout(nursery, autojump_clock):
    port = await nursery.start(serve_http, (LOCAL, 0), ROUTES)
    stream = await trio.open_tcp_stream(LOCAL, port)
    await stream.send_all(b"GET /hel")  # and nothing more
    with trio.fail_after(60):  # virtual time: the server's 10 s pass at once
        assert await stream.receive_some(100) == b""
    await stream.aclose()


async def test_an_idle_keep_alive_connection_is_closed_after_the_timeout(nursery, autojump_clock):
    port = await nursery.start(partial(serve_http, (LOCAL, 0), ROUTES, request_timeout=5))
    client = await Client.open(port)
    response, _ = await client.request("GET", "/hello")
    assert response.status_code == 200
    start = trio.current_time()
    assert await client.stream.receive_some(100) == b""
    assert trio.current_time() - start == pytest.approx(5, abs=0.5)
    await client.aclose()


async def test_bind_failure_names_the_address(nursery):
    port = await nursery.start(serve_http, (LOCAL, 0), ROUTES)
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
        await bind_tcp((LOCAL, port))
