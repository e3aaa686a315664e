"""ztunnel's admin HTTP servers over real sockets on 127.0.0.1 (port 0), with an h11 client."""

from __future__ import annotations

import json
import logging
from functools import partial

import h11
import pytest
import trio

from ztunnel.admin import (
    ADMIN_PORT,
    MAX_REQUEST_BODY,
    MAX_REQUEST_HEAD,
    READINESS_PORT,
    STATS_PORT,
    LogLevels,
    Response,
    Route,
    ZtunnelAdmin,
    bind_tcp,
    serve_http,
)
from ztunnel.metrics import ZtunnelMetrics

LOCAL = "127.0.0.1"


class Client:
    """One connection, spoken to through h11's client role."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, port: int) -> Client:
        return cls(await trio.open_tcp_stream(LOCAL, port))

    async def request(self, method: str, path: str, headers=(), body: bytes = b"") -> tuple[h11.Response, bytes]:
        if self.h11.our_state is h11.DONE:
            self.h11.start_next_cycle()
        headers = [("Host", "ztunnel"), *headers]
        if body:
            headers.append(("Content-Length", str(len(body))))
        data = self.h11.send(h11.Request(method=method, target=path, headers=headers))
        if body:
            data += self.h11.send(h11.Data(data=body))
        await self.stream.send_all(data + self.h11.send(h11.EndOfMessage()))
        return await self.response()

    async def response(self) -> tuple[h11.Response, bytes]:
        head, body = None, b""
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None  # h11 gives the head before the end
                return head, body

    async def aclose(self) -> None:
        await self.stream.aclose()


def header(response: h11.Response, name: str) -> str | None:
    for key, value in response.headers:
        if key.decode() == name.lower():
            return value.decode()
    return None


async def get(port: int, path: str, method: str = "GET") -> tuple[h11.Response, bytes]:
    client = await Client.open(port)
    try:
        return await client.request(method, path)
    finally:
        await client.aclose()


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, half-close, and read everything until the server closes."""
    stream = await trio.open_tcp_stream(LOCAL, port)
    try:
        await stream.send_all(data)
        await stream.send_eof()
        received = b""
        while chunk := await stream.receive_some(65536):
            received += chunk
        return received
    finally:
        await stream.aclose()


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
    with caplog.at_level(logging.ERROR, logger="ambient.ztunnel.admin"):
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


# -- ZtunnelAdmin


class FakeView:
    def __init__(self) -> None:
        self.counters = ZtunnelMetrics(build_tag="test")
        self.is_ready = (False, "waiting for the first discovery update")
        self.dump = {"node": "node-0", "workloads": [], "services": [], "policies": [], "certificates": [],
                     "connections": []}

    def metrics(self) -> bytes:
        return self.counters.exposition()

    def config_dump(self) -> dict:
        return self.dump

    def ready(self) -> tuple[bool, str]:
        return self.is_ready


def test_default_ports_are_istios():
    assert (ADMIN_PORT, STATS_PORT, READINESS_PORT) == (15000, 15020, 15021)


@pytest.fixture
async def admin(nursery):
    view = FakeView()
    ports = await nursery.start(ZtunnelAdmin(view).run, (LOCAL, 0), (LOCAL, 0), (LOCAL, 0))
    return view, ports


async def test_admin_port_serves_the_config_dump_and_an_index(admin):
    view, ports = admin
    assert set(ports) == {"admin", "stats", "readiness"}
    response, body = await get(ports["admin"], "/config_dump")
    assert response.status_code == 200
    assert header(response, "Content-Type") == "application/json"
    assert json.loads(body) == view.dump
    assert body.startswith(b'{\n  "node": "node-0"')  # indented
    response, body = await get(ports["admin"], "/")
    assert response.status_code == 200
    assert body.decode().split() == ["ztunnel", "admin:", "/", "/config_dump", "/healthz/ready", "/logging",
                                     "/quitquitquit"]
    response, _ = await get(ports["admin"], "/metrics")  # not on this port
    assert response.status_code == 404


async def test_stats_port_serves_prometheus_metrics(admin):
    _, ports = admin
    for path in ("/metrics", "/stats/prometheus"):
        response, body = await get(ports["stats"], path)
        assert response.status_code == 200
        assert header(response, "Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
        assert b'istio_build{component="ztunnel",tag="test"} 1' in body
        assert b"# TYPE istio_tcp_connections_opened_total counter" in body
    response, _ = await get(ports["stats"], "/config_dump")
    assert response.status_code == 404


async def test_readiness_port_answers_503_with_the_reason_then_200(admin):
    view, ports = admin
    response, body = await get(ports["readiness"], "/healthz/ready")
    assert (response.status_code, body) == (503, b"not ready: waiting for the first discovery update\n")
    view.is_ready = (True, "")
    response, body = await get(ports["readiness"], "/healthz/ready")
    assert (response.status_code, body) == (200, b"ready\n")
    response, body = await get(ports["admin"], "/healthz/ready")
    assert (response.status_code, body) == (200, b"ready\n")


async def test_a_config_dump_that_is_not_json_is_500(admin):
    view, ports = admin
    view.dump = {"bad": object()}
    response, body = await get(ports["admin"], "/config_dump")
    assert response.status_code == 500
    assert body.startswith(b"internal error serving /config_dump: TypeError")


async def test_run_binds_all_or_nothing(nursery):
    taken = await nursery.start(serve_http, (LOCAL, 0), ROUTES)
    first = await bind_tcp((LOCAL, 0))  # a port that is free: find it, then free it again
    free = first.socket.getsockname()[1]
    await first.aclose()
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{taken}"):
        await ZtunnelAdmin(FakeView()).run((LOCAL, free), (LOCAL, taken), (LOCAL, 0))
    second = await bind_tcp((LOCAL, free))  # the admin socket bound first was closed
    await second.aclose()


# -- /logging and /quitquitquit, as Istio's ztunnel


def isolated_root(level: int) -> logging.Logger:
    """A root logger with its own hierarchy, so that the tests do not change the process's levels."""
    root = logging.RootLogger(level)
    root.manager = logging.Manager(root)
    return root


@pytest.fixture
async def levels_admin(nursery):
    root = isolated_root(logging.INFO)
    admin = ZtunnelAdmin(FakeView(), LogLevels(root))
    ports = await nursery.start(admin.run, (LOCAL, 0), (LOCAL, 0), (LOCAL, 0))
    return root, admin, ports["admin"]


async def test_logging_post_lists_the_current_level(levels_admin):
    _, _, port = levels_admin
    response, body = await get(port, "/logging", method="POST")
    assert (response.status_code, body) == (200, b"current log level is info\n")


async def test_logging_get_is_405_with_the_usage(levels_admin):
    root, _, port = levels_admin
    response, body = await get(port, "/logging?level=debug")
    assert response.status_code == 405
    assert header(response, "Allow") == "POST"
    assert b"usage: POST /logging" in body
    assert root.level == logging.INFO  # nothing changed


async def test_logging_sets_the_default_level_live(levels_admin):
    root, _, port = levels_admin
    proxy = root.manager.getLogger("ambient.ztunnel.proxy")
    assert not proxy.isEnabledFor(logging.DEBUG)
    response, body = await get(port, "/logging?level=debug", method="POST")
    assert (response.status_code, body) == (200, b"current log level is debug\n")
    assert proxy.isEnabledFor(logging.DEBUG)
    response, body = await get(port, "/logging?level=off", method="POST")
    assert body == b"current log level is off\n"
    assert not proxy.isEnabledFor(logging.CRITICAL)


async def test_logging_sets_one_loggers_level_and_keeps_the_others(levels_admin):
    root, _, port = levels_admin
    proxy, pool = root.manager.getLogger("ambient.ztunnel.proxy"), root.manager.getLogger("ambient.hbone.pool")
    response, body = await get(port, "/logging?level=ambient.ztunnel:debug,ambient.hbone=error", method="POST")
    assert response.status_code == 200
    assert body == b"current log level is ambient.hbone=error,ambient.ztunnel=debug,info\n"
    assert proxy.isEnabledFor(logging.DEBUG) and not pool.isEnabledFor(logging.WARNING)  # children too
    assert root.isEnabledFor(logging.INFO) and not root.isEnabledFor(logging.DEBUG)
    response, body = await get(port, "/logging?level=warn", method="POST")  # adds to what is there
    assert body == b"current log level is ambient.hbone=error,ambient.ztunnel=debug,warn\n"
    assert proxy.isEnabledFor(logging.DEBUG) and not root.isEnabledFor(logging.INFO)


async def test_logging_reset_goes_back_to_the_levels_at_start(levels_admin):
    root, _, port = levels_admin
    proxy = root.manager.getLogger("ambient.ztunnel.proxy")
    await get(port, "/logging?level=ambient.ztunnel.proxy:trace,error", method="POST")
    response, body = await get(port, "/logging?reset", method="POST")
    assert (response.status_code, body) == (200, b"current log level is info\n")
    assert proxy.level == logging.NOTSET and proxy.isEnabledFor(logging.INFO)
    assert not proxy.isEnabledFor(logging.DEBUG)
    response, body = await get(port, "/logging?reset&level=ambient.ca:debug", method="POST")
    assert body == b"current log level is ambient.ca=debug,info\n"


@pytest.mark.parametrize("spec", ["verbose", "ambient.ztunnel", "ambient.ztunnel:loud", "debug,", ":debug",
                                  "info,ambient.ca:nope"])
async def test_logging_an_invalid_level_is_400_and_changes_nothing(levels_admin, spec):
    root, admin, port = levels_admin
    response, body = await get(port, f"/logging?level={spec}", method="POST")
    assert response.status_code == 400
    assert body.startswith(f"Invalid level provided: {spec}\n".encode())
    assert b"usage: POST /logging" in body
    assert (root.level, admin.log_levels.describe()) == (logging.INFO, "info")


def test_log_levels_start_from_the_roots_level():
    assert LogLevels(isolated_root(logging.WARNING)).describe() == "warn"
    assert LogLevels(isolated_root(logging.DEBUG)).describe() == "debug"


async def test_quitquitquit_answers_at_once_and_triggers_the_drain(levels_admin):
    _, admin, port = levels_admin
    assert not admin.quit_requested.is_set()
    response, body = await get(port, "/quitquitquit", method="POST")
    assert (response.status_code, body) == (200, b"shutdown now\n")
    with trio.fail_after(5):
        await admin.quit_requested.wait()  # what the ztunnel process waits on, besides SIGTERM


async def test_quitquitquit_takes_post_only(levels_admin):
    _, admin, port = levels_admin
    for method in ("GET", "HEAD"):
        response, _ = await get(port, "/quitquitquit", method=method)
        assert response.status_code == 405
        assert header(response, "Allow") == "POST"
    assert not admin.quit_requested.is_set()
