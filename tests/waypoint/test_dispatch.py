"""A plugin's own HTTP call (``waypoint.dispatch``): the upstream's name, the request, the answer, failures."""

from __future__ import annotations

import h11
import pytest
import trio

from mesh.outbound import RoundRobin
from tests.waypoint.test_pipeline import FAIL, ME, STATE, FakeUpstreams, origin
from waypoint import dispatch
from waypoint.dispatch import CallError, http_call, upstream_target

CALL = [(":method", "POST"), (":path", "/check?x=1"), (":authority", "backend"), ("X-Token", "t"),
        ("Connection", "close")]


@pytest.mark.parametrize(("upstream", "expected"), [
    ("outbound|8080||backend.apps.svc.cluster.local", ("backend.apps.svc.cluster.local", 8080)),
    ("backend.apps.svc.cluster.local:8080", ("backend.apps.svc.cluster.local", 8080)),
])
def test_upstream_names(upstream: str, expected: tuple[str, int]) -> None:
    assert upstream_target(upstream) == expected


@pytest.mark.parametrize("upstream", ["outbound|8080|v1|backend", "outbound|x||backend", "backend", ":80",
                                      "outbound|8080|backend"])
def test_upstream_names_that_are_refused(upstream: str) -> None:
    with pytest.raises(CallError):
        upstream_target(upstream)


async def test_a_call_reaches_an_endpoint_of_the_service_and_its_answer_comes_back() -> None:
    seen: list[tuple[h11.Request, bytes]] = []
    async with trio.open_nursery() as nursery:
        upstreams = FakeUpstreams(nursery, [origin(status=200, body=b"allowed", seen=seen)])
        answer = await http_call(STATE, ME, upstreams, RoundRobin(),  # type: ignore[arg-type]
                                 "outbound|8080||backend.apps.svc.cluster.local", CALL, b"body", 1.0)
        nursery.cancel_scope.cancel()
    assert answer is not None
    assert (answer.status, answer.body) == (200, b"allowed")
    assert answer.headers[0] == (":status", "200")
    [(request, body)] = seen
    assert (request.method, request.target, body) == (b"POST", b"/check?x=1", b"body")
    names = [name for name, _ in request.headers]
    assert (b"x-token", b"t") in request.headers and b"connection" not in names[1:]  # hop-by-hop dropped
    assert upstreams.released == [True]


async def test_a_call_to_an_unknown_service_or_without_pseudo_headers_is_none() -> None:
    async with trio.open_nursery() as nursery:
        upstreams = FakeUpstreams(nursery, [])
        assert await http_call(STATE, ME, upstreams, RoundRobin(), "nothing.apps.svc.cluster.local:80",  # type: ignore[arg-type]
                               CALL, b"", 1.0) is None
        assert await http_call(STATE, ME, upstreams, RoundRobin(), "backend.apps.svc.cluster.local:8080",  # type: ignore[arg-type]
                               [(":method", "GET")], b"", 1.0) is None
        nursery.cancel_scope.cancel()
    assert upstreams.endpoints == []


async def test_a_call_that_cannot_connect_is_none() -> None:
    async with trio.open_nursery() as nursery:
        upstreams = FakeUpstreams(nursery, [FAIL])
        assert await http_call(STATE, ME, upstreams, RoundRobin(), "backend.apps.svc.cluster.local:8080",  # type: ignore[arg-type]
                               CALL, b"", 1.0) is None
        nursery.cancel_scope.cancel()


async def test_a_call_answered_too_slowly_is_none(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        upstreams = FakeUpstreams(nursery, [origin(delay=10)])
        start = trio.current_time()
        assert await http_call(STATE, ME, upstreams, RoundRobin(), "backend.apps.svc.cluster.local:8080",  # type: ignore[arg-type]
                               CALL, b"", 2.0) is None
        assert trio.current_time() - start == pytest.approx(2.0)
        nursery.cancel_scope.cancel()
    assert upstreams.released == [False]


async def test_an_answer_over_the_bound_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "WASM_HTTP_CALL_MAX_BYTES", 4)
    async with trio.open_nursery() as nursery:
        upstreams = FakeUpstreams(nursery, [origin(body=b"too long")])
        assert await http_call(STATE, ME, upstreams, RoundRobin(), "backend.apps.svc.cluster.local:8080",  # type: ignore[arg-type]
                               CALL, b"", 1.0) is None
        nursery.cancel_scope.cancel()
