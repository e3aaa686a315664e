"""The waypoint's admin, stats and readiness ports over real sockets on 127.0.0.1 (port 0)."""

from __future__ import annotations

import json

import pytest

from ca.authority import SigningAuthority
from tests.mesh.admin_client import LOCAL, get, header
from tests.waypoint.telemetry_world import REQUEST
from tests.waypoint.test_dump import IDENTITY, View
from tests.ztunnel.pki import TD, creds
from waypoint.admin import WaypointAdmin, WaypointAdminView, readiness
from waypoint.metrics import WaypointMetrics


def test_readiness_waits_for_the_certificate_the_config_and_the_listener():
    assert readiness(View(hbone_address=None), synced=False) == (
        False, f"waiting for the certificate of {IDENTITY}, the first discovery update, its HBONE listener")
    ready_view = View(certificate=creds(SigningAuthority.self_signed(TD), IDENTITY))
    assert readiness(ready_view, synced=False) == (False, "waiting for the first discovery update")
    assert readiness(ready_view, synced=True) == (True, "serving 1 service(s) for shop/waypoint")


@pytest.fixture
async def served(nursery):
    view = View()
    state = {"synced": False}
    metrics = WaypointMetrics(build_tag="test")
    admin = WaypointAdmin(WaypointAdminView(view, metrics, lambda: state["synced"]))
    ports = await nursery.start(admin.run, (LOCAL, 0), (LOCAL, 0), (LOCAL, 0))
    return view, state, metrics, admin, ports


async def test_the_three_ports(served):
    view, state, metrics, admin, ports = served
    response, body = await get(ports["readiness"], "/healthz/ready")
    assert (response.status_code, header(response, "server")) == (503, "ambient-waypoint")
    assert body.startswith(b"not ready: waiting for the certificate")

    view.certificate = creds(SigningAuthority.self_signed(TD), IDENTITY)
    state["synced"] = True
    response, body = await get(ports["readiness"], "/healthz/ready")
    assert (response.status_code, body) == (200, b"ready\n")

    metrics.request(REQUEST)
    response, body = await get(ports["stats"], "/metrics")
    assert response.status_code == 200 and header(response, "content-type").startswith("text/plain; version=0.0.4")
    assert b'istio_requests_total{reporter="waypoint",' in body

    response, body = await get(ports["admin"], "/config_dump")
    assert response.status_code == 200 and json.loads(body)["gateway"] == "shop/waypoint"
    response, body = await get(ports["admin"], "/")
    assert body.startswith(b"waypoint admin:\n") and b"/quitquitquit" in body


async def test_quitquitquit_asks_the_waypoint_to_drain(served):
    *_, admin, ports = served
    response, _ = await get(ports["admin"], "/quitquitquit", method="POST")
    assert response.status_code == 200 and admin.quit_requested.is_set()
