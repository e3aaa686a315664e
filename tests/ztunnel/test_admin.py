"""ztunnel's admin, stats and readiness servers (``ZtunnelAdmin``) over real sockets on 127.0.0.1
(port 0); the HTTP server under them is tested in tests/mesh/test_http_admin.py."""

from __future__ import annotations

import json
import logging

import pytest
import trio

from mesh.http_admin import LogLevels, Response, bind_tcp, serve_http
from tests.mesh.admin_client import LOCAL, get, header, isolated_root
from ztunnel.admin import ADMIN_PORT, READINESS_PORT, STATS_PORT, ZtunnelAdmin
from ztunnel.metrics import ZtunnelMetrics

ROUTES = {"/hello": lambda: Response.text(200, "hello\n")}


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
