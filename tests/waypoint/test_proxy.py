"""The waypoint executor (waypoint/proxy.py) in process over loopback (the harness: loopback.py): a
source ztunnel's HBONE CONNECTs in, HTTP/1.1 or opaque TCP inside, plain TCP out to the endpoint.
Each test reads what a user reads: the bytes the client gets, what the endpoint saw, the records
telemetry gets, readiness and the config dump."""

from __future__ import annotations

import json

import h11
import pytest
import trio
import trio.testing

import waypoint.proxy as proxy_module
from ca.authority import SigningAuthority
from hbone.driver import HboneRefused
from hbone.tls import HboneTlsError
from mesh.peer_metadata import parse_baggage
from tests.waypoint.loopback import (
    API,
    API_HOST,
    API_IP,
    API_PORT,
    API_SERVICE,
    API_VIP,
    CLIENT,
    CLIENT_IP,
    CLOSED_PORT,
    HTTP_PORT,
    OPAQUE_PORT,
    OTHER_VIP,
    STRANGER_IP,
    WAYPOINT,
    WAYPOINT_IP,
    WEB_IP,
    WEB_SERVICE,
    WEB_VIP,
    Gates,
    H1Client,
    destination_ztunnel,
    eventually,
    handshake,
    round_trip,
    running_waypoint,
    source_ztunnel,
)
from tests.ztunnel.pki import TD
from waypoint.dump import config_dump

WEB_AUTHORITY = f"{WEB_VIP}:{HTTP_PORT}"
FORWARDED = (CLIENT_IP, 40000)  # the client's own address, as the source ztunnel names it


@pytest.fixture(scope="module")
def authority() -> SigningAuthority:
    return SigningAuthority.self_signed(TD)


# ---------------------------------------------------------------- HTTP through the waypoint


async def test_a_request_reaches_the_endpoint_through_the_route_and_is_recorded(authority):
    async with running_waypoint(authority) as mesh, source_ztunnel(authority, mesh.address) as ztunnel:
        tunnel = await ztunnel.open(WEB_AUTHORITY, FORWARDED)
        client = H1Client(tunnel)
        first = await client.request("GET", "/items?id=7")
        second = await client.request("GET", "/again")  # the same tunnel, keep-alive
        await mesh.records.wait_for(requests=2)
    assert (first.status, first.body, second.status, second.body) == (
        200, b"web-0 says /items?id=7", 200, b"web-0 says /again")
    seen = mesh.web.seen[0]
    assert (seen.method, seen.target, seen.headers["x-routed-by"]) == ("GET", "/items?id=7", "wp")  # the route's filter
    assert seen.headers["host"] == "web.shop.svc.cluster.local"
    record = mesh.records.requests[0]
    assert (record.method, record.path, record.status, record.response_flags, record.http_version) == (
        "GET", "/items?id=7", 200, "-", "HTTP/1.1")
    assert record.source_principal == CLIENT
    assert record.source_address == FORWARDED
    assert record.source is not None and record.source.name == "client"
    assert record.destination_service is not None and record.destination_service.name == "web"
    assert record.destination is not None and record.destination.name == "web-0"
    assert record.upstream_address == mesh.web.address  # web-0's IP and the Service's targetPort
    assert record.destination_principal is None  # web-0 is outside the mesh: plain TCP, no identity
    assert record.route == "shop/web"  # the HTTPRoute that matched
    assert record.response_bytes == len(first.body)


async def test_a_connect_to_a_service_without_this_waypoint_is_503_and_the_connection_serves_the_next(authority):
    async with running_waypoint(authority) as mesh, source_ztunnel(authority, mesh.address) as ztunnel:
        for refused in (f"{OTHER_VIP}:{HTTP_PORT}",  # a Service that does not use this waypoint
                        f"{WEB_IP}:{mesh.web.address[1]}",  # a pod with no waypoint
                        f"{STRANGER_IP}:{HTTP_PORT}"):  # nothing in the mesh
            with pytest.raises(HboneRefused) as caught:
                await ztunnel.open(refused, FORWARDED)
            assert caught.value.status == 503, refused
        tunnel = await ztunnel.open(WEB_AUTHORITY, FORWARDED)
        assert (await H1Client(tunnel).request("GET", "/after")).status == 200
    assert [seen.target for seen in mesh.web.seen] == ["/after"]  # the refused ones reached nothing
    assert mesh.waypoint.refused == 0  # a 503 for the address is not a bound


async def test_an_l7_deny_is_403_and_the_tunnel_serves_the_next_request(authority):
    async with running_waypoint(authority) as mesh, source_ztunnel(authority, mesh.address) as ztunnel:
        client = H1Client(await ztunnel.open(WEB_AUTHORITY, FORWARDED))
        denied = await client.request("GET", "/private/keys")
        allowed = await client.request("GET", "/public")
        await mesh.records.wait_for(requests=2)
    assert (denied.status, denied.body) == (403, b"RBAC: access denied")
    assert allowed.status == 200
    assert [seen.target for seen in mesh.web.seen] == ["/public"]
    record = mesh.records.requests[0]
    assert (record.status, record.response_flags, record.policy) == (403, "RBAC", "shop/deny-private")
    assert record.upstream_address is None


async def test_a_request_to_a_service_in_the_mesh_goes_over_hbone_as_the_waypoint(authority):
    async with running_waypoint(authority) as mesh:
        api = await destination_ztunnel(mesh.nursery, authority)
        async with source_ztunnel(authority, mesh.address) as ztunnel:
            client = H1Client(await ztunnel.open(f"{API_VIP}:80", FORWARDED))
            first = await client.request("GET", "/v1/items", host=API_HOST)
            second = await client.request("GET", "/v1/more", host=API_HOST)
            await mesh.records.wait_for(requests=2)
    assert (first.status, first.body, second.body) == (200, b"api-0 says /v1/items", b"api-0 says /v1/more")
    # One upstream tunnel, reused (keep-alive), opened with the waypoint's own certificate: api-0's
    # ztunnel sees the waypoint, as Istio's destination ztunnel does.
    ((peer, target),) = api.connects
    assert peer == WAYPOINT
    assert (target.ip, target.port, target.forwarded_for) == (API_IP, API_PORT, FORWARDED)
    assert target.baggage is not None
    baggage = parse_baggage(target.baggage)  # the waypoint's own peer metadata, not the client's
    assert (baggage.namespace, baggage.workload_name) == ("shop", "wp")
    assert target.traceparent is not None
    record = mesh.records.requests[0]
    assert (record.status, record.response_flags, record.destination_principal) == (200, "-", API)
    assert record.destination is not None and record.destination.name == "api-0"
    assert record.upstream_address == (API_IP, API_PORT)
    assert record.source_principal == CLIENT


# ---------------------------------------------------------------- opaque TCP


async def test_opaque_tcp_is_relayed_to_the_endpoint(authority):
    payload = b"\x00\x01 not HTTP \xff" * 100
    async with running_waypoint(authority) as mesh, source_ztunnel(authority, mesh.address) as ztunnel:
        tunnel = await ztunnel.open(f"{WEB_VIP}:{OPAQUE_PORT}", FORWARDED)
        assert await round_trip(tunnel, payload) == payload
        await mesh.records.wait_for(tunnels=1)
    assert len(mesh.echo.peers) == 1
    (record,) = mesh.records.tunnels
    assert (record.response_flags, record.received_bytes, record.sent_bytes) == ("-", len(payload), len(payload))
    assert (record.source_principal, record.source_address) == (CLIENT, FORWARDED)
    assert record.upstream_address == mesh.echo.address
    assert record.destination_service is not None and record.destination_service.name == "web"
    assert mesh.records.requests == []


async def test_opaque_tcp_to_a_port_an_l4_deny_on_the_gateway_closes_is_not_relayed(authority):
    async with running_waypoint(authority) as mesh, source_ztunnel(authority, mesh.address) as ztunnel:
        tunnel = await ztunnel.open(f"{WEB_VIP}:{CLOSED_PORT}", FORWARDED)
        got = b""
        with trio.fail_after(5):
            await tunnel.send_all(b"\x00binary")
            try:
                while data := await tunnel.receive_some():
                    got += data
            except trio.BrokenResourceError:
                pass  # reset instead of ended: closed either way
        await mesh.records.wait_for(tunnels=1)
    assert got == b""
    assert mesh.echo.peers == []
    (record,) = mesh.records.tunnels
    assert record.response_flags == "RBAC"
    assert "deny-closed-port" in (record.detail or "")
    assert record.upstream_address is None


# ---------------------------------------------------------------- bounds


async def test_connections_past_the_per_peer_bound_are_closed_and_counted(authority, monkeypatch):
    monkeypatch.setattr(proxy_module, "MAX_CONNECTIONS_PER_PEER", 2)
    async with running_waypoint(authority) as mesh:
        held = [await handshake(authority, mesh.address) for _ in range(2)]
        with pytest.raises(HboneTlsError):  # closed before the handshake
            await handshake(authority, mesh.address)
        assert mesh.waypoint.refused == 1
        # Another peer address has a bound of its own.
        async with source_ztunnel(authority, mesh.address, source_ip=STRANGER_IP) as other:
            assert (await H1Client(await other.open(WEB_AUTHORITY, None)).request("GET", "/x")).status == 200
        # A connection that ends gives its place back.
        await held[0].aclose()
        await eventually(lambda: mesh.waypoint._connections_by_peer.get(CLIENT_IP) == 1)
        async with source_ztunnel(authority, mesh.address) as again:
            assert (await H1Client(await again.open(WEB_AUTHORITY, FORWARDED)).request("GET", "/y")).status == 200
        await held[1].aclose()
    assert mesh.waypoint.refused == 1


async def test_tunnels_past_the_per_peer_bound_get_503_and_are_counted(authority, monkeypatch):
    monkeypatch.setattr(proxy_module, "MAX_TUNNELS_PER_PEER", 2)
    async with running_waypoint(authority) as mesh, source_ztunnel(authority, mesh.address) as ztunnel:
        first = await ztunnel.open(WEB_AUTHORITY, FORWARDED)
        second = await ztunnel.open(WEB_AUTHORITY, FORWARDED)
        with pytest.raises(HboneRefused) as caught:
            await ztunnel.open(WEB_AUTHORITY, FORWARDED)
        assert caught.value.status == 503
        assert mesh.waypoint.refused == 1
        # Both open tunnels still serve, on the same connection.
        assert (await H1Client(first).request("GET", "/1")).status == 200
        assert (await H1Client(second).request("GET", "/2")).status == 200
        # A tunnel that ends gives its place back.
        await first.send_eof()
        await eventually(lambda: mesh.waypoint.open_tunnels == 1)
        third = await ztunnel.open(WEB_AUTHORITY, FORWARDED)
        assert (await H1Client(third).request("GET", "/3")).status == 200
        assert mesh.waypoint.refused == 1


# ---------------------------------------------------------------- drain


async def test_drain_lets_a_request_in_flight_finish_refuses_new_connects_and_stops(authority):
    async with running_waypoint(authority, drain_timeout=5.0) as mesh, \
            source_ztunnel(authority, mesh.address) as ztunnel:
        waypoint = mesh.waypoint
        client = H1Client(await ztunnel.open(WEB_AUTHORITY, FORWARDED))
        async with trio.open_nursery() as nursery:
            responses = []

            async def slow_request() -> None:
                responses.append(await client.request("GET", "/slow"))

            nursery.start_soon(slow_request)
            with trio.fail_after(5):
                await mesh.web.arrived.wait()  # the request is at the endpoint, its answer held
            drained_at = trio.current_time()
            nursery.start_soon(waypoint.drain)
            await eventually(lambda: waypoint.draining)
            with pytest.raises(HboneRefused) as caught:
                await ztunnel.open(WEB_AUTHORITY, FORWARDED)  # a new CONNECT on an open connection
            assert caught.value.status == 503
            with pytest.raises(OSError):
                await handshake(authority, mesh.address)  # the listener is closed
            assert not mesh.stopped.is_set()  # still serving the request in flight
            mesh.web.release.set()
        with trio.fail_after(5):
            await mesh.stopped.wait()
    (response,) = responses
    assert (response.status, response.body) == (200, b"web-0 says /slow")
    # Well before the 5 s deadline: the tunnel left open is an idle keep-alive, which drain does not wait for.
    assert mesh.stopped_at is not None and mesh.stopped_at - drained_at < 2.5
    assert [r.status for r in mesh.records.requests] == [200]


async def test_drain_ends_a_request_still_open_at_the_deadline(authority):
    async with running_waypoint(authority, drain_timeout=0.3) as mesh, \
            source_ztunnel(authority, mesh.address) as ztunnel:
        client = H1Client(await ztunnel.open(WEB_AUTHORITY, FORWARDED))
        async with trio.open_nursery() as nursery:
            failed = []

            async def stuck_request() -> None:
                try:
                    await client.request("GET", "/slow/forever")
                except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError) as exc:
                    failed.append(exc)  # the tunnel ended under it (a timeout of the client's would propagate)

            nursery.start_soon(stuck_request)
            with trio.fail_after(5):
                await mesh.web.arrived.wait()
            drained_at = trio.current_time()
            await mesh.waypoint.drain()
            with trio.fail_after(5):
                await mesh.stopped.wait()
    assert mesh.stopped_at is not None and 0.3 <= mesh.stopped_at - drained_at < 3.0
    assert len(failed) == 1
    assert not mesh.web.release.is_set()  # the endpoint never answered: the deadline ended it


# ---------------------------------------------------------------- readiness and the dump


async def test_ready_only_with_the_certificate_and_the_first_view(authority):
    gates = Gates()
    async with running_waypoint(authority, gates=gates) as mesh:
        waypoint = mesh.waypoint
        await trio.testing.wait_all_tasks_blocked()
        ready, reason = waypoint.ready()
        assert not ready
        assert f"the certificate of {WAYPOINT}" in reason and "the first discovery update" in reason
        gates.discovery.set()
        await eventually(lambda: mesh.address is not None)
        ready, reason = waypoint.ready()
        assert not ready and reason == f"waiting for the certificate of {WAYPOINT}"
        gates.certificate.set()
        with trio.fail_after(5):
            await waypoint.secrets.get(WAYPOINT)
        assert waypoint.ready() == (True, "serving 2 service(s) for shop/wp")


async def test_the_config_dump_lists_the_served_service_its_policies_and_routes_and_no_key(authority):
    async with running_waypoint(authority) as mesh:
        waypoint = mesh.waypoint
        with trio.fail_after(5):
            await waypoint.secrets.get(WAYPOINT)
        dump = config_dump(waypoint)
        credentials = waypoint.certificate
    assert credentials is not None
    text = json.dumps(dump)
    assert json.loads(text) == dump
    assert dump["gateway"] == "shop/wp" and dump["identity"] == str(WAYPOINT)
    assert dump["listeners"] == [{"name": "mesh", "address": f"{WAYPOINT_IP}:{mesh.address[1]}", "protocol": "HBONE"}]
    assert dump["services"] == [API_SERVICE, WEB_SERVICE]
    policies = {p["name"]: p for p in dump["policies"]}
    assert set(policies) == {"deny-private", "deny-closed-port"}  # not deny-other: Service other is not ours
    assert (policies["deny-private"]["action"], policies["deny-private"]["applies"]) == ("Deny", True)
    assert policies["deny-closed-port"]["targets"]["gateways"] == ["shop/wp"]
    routes = {r["name"]: r for r in dump["routes"]}
    assert routes["web"]["status"] == {"accepted": True, "reason": "Accepted", "problems": []}
    assert routes["web"]["attached"] is True
    assert routes["broken"]["status"]["accepted"] is False
    assert any("missing" in problem for problem in routes["broken"]["status"]["problems"])
    (cert,) = dump["certificates"]
    assert (cert["identity"], cert["state"]) == (str(WAYPOINT), "Available")
    key = credentials.key_pem.decode()
    assert "PRIVATE KEY" not in text and key.splitlines()[1] not in text
