"""A plugin's own HTTP call (``proxy_http_call``), sent the way the waypoint sends requests (issue #20).

A plugin names its upstream as Istio's plugins name an Envoy cluster, ``outbound|<port>||<hostname>``
(a subset is not supported here), or plainly ``<hostname>:<port>``. The hostname is a Service of the
waypoint's view (``<svc>.<ns>.svc.cluster.local``); ``mesh.outbound.plan_outbound`` from the waypoint's
own workload picks the endpoint by the Service's load balancing, and the request goes over a pooled
HBONE tunnel with the waypoint's identity (``waypoint.upstream``), as HTTP/1.1. Routes are not applied:
Envoy sends a plugin's call to the cluster directly.

The plugin gives the request's ``:method``, ``:path`` and ``:authority`` as pseudo-headers (Envoy
requires the three). The answer is read whole, at most ``WASM_HTTP_CALL_MAX_BYTES`` of body, within the
plugin's timeout. Anything that goes wrong is ``None`` and a log line: the plugin gets its callback with
no headers, as Envoy delivers a failed call.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from mesh.api import workload_pb2 as wpb
from mesh.outbound import Balancer, HboneToPod, Passthrough, plan_outbound
from mesh.proxy_state import ProxyState, ip_text, service_vip
from waypoint.exchange import Headers, end_to_end
from waypoint.h1 import PeerGone
from waypoint.limits import WASM_HTTP_CALL_DEFAULT_TIMEOUT, WASM_HTTP_CALL_MAX_BYTES
from waypoint.routing import RequestHead
from waypoint.upstream import UpstreamConnectError, Upstreams

log = logging.getLogger("ambient.waypoint.wasm")



@dataclass(frozen=True)
class CallAnswer:
    status: int
    headers: Headers  # with ":status" first, as Envoy gives a plugin its call's answer
    body: bytes
    trailers: Headers


class CallError(Exception):
    """Why a call could not be made or answered."""


def upstream_target(upstream: str) -> tuple[str, int]:
    """(hostname, port) from ``outbound|<port>||<hostname>`` or ``<hostname>:<port>``."""
    if upstream.startswith("outbound|"):
        parts = upstream.split("|")
        if len(parts) != 4 or not parts[1].isdigit():
            raise CallError(f"upstream {upstream!r} is not outbound|<port>||<hostname>")
        if parts[2]:
            raise CallError(f"upstream {upstream!r}: subsets are not supported here")
        return parts[3], int(parts[1])
    host, sep, port = upstream.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise CallError(f"upstream {upstream!r} is neither outbound|<port>||<hostname> nor <hostname>:<port>")
    return host, int(port)


def _service_vip(state: ProxyState, hostname: str) -> str | None:
    return next((service_vip(s) for s in state.services.values() if s.hostname == hostname), None)


async def http_call(state: ProxyState, me: wpb.Workload | None, upstreams: Upstreams, balancer: Balancer,
                    upstream: str, headers: Sequence[tuple[str, str]], body: bytes,
                    timeout: float) -> CallAnswer | None:
    """The answer to a plugin's call, or None (logged) if it could not be had."""
    try:
        with trio.fail_after(timeout if timeout > 0 else WASM_HTTP_CALL_DEFAULT_TIMEOUT):
            return await _call(state, me, upstreams, balancer, upstream, headers, body)
    except trio.TooSlowError:
        log.info("wasm http_call to %s: no answer within %g s", upstream, timeout)
    except (CallError, UpstreamConnectError, PeerGone, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log.info("wasm http_call to %s failed: %s", upstream, exc)
    return None


async def _call(state: ProxyState, me: wpb.Workload | None, upstreams: Upstreams, balancer: Balancer,
                upstream: str, headers: Sequence[tuple[str, str]], body: bytes) -> CallAnswer:
    hostname, port = upstream_target(upstream)
    pseudo = {name: value for name, value in headers if name.startswith(":")}
    missing = [name for name in (":method", ":path", ":authority") if not pseudo.get(name)]
    if missing:
        raise CallError(f"the call has no {', '.join(missing)}")
    vip = _service_vip(state, hostname)
    if vip is None or me is None:
        raise CallError(f"no Service {hostname} in the waypoint's view")
    choice = plan_outbound(me, (vip, port), state, balancer)
    if not isinstance(choice, (HboneToPod, Passthrough)):
        raise CallError(f"no endpoint for {hostname}:{port}")
    client = (ip_text(me.addresses[0]) or "0.0.0.0", 0) if me.addresses else ("0.0.0.0", 0)
    connection = await upstreams.http1(choice, client)
    reusable = False
    try:
        head = RequestHead(pseudo[":method"], pseudo[":path"], pseudo[":authority"], ())
        rest = [(name, value) for name, value in end_to_end((n.lower(), v) for n, v in headers)
                if not name.startswith(":") and name != "content-length"]
        await connection.start(head, rest, body_length=len(body), hold=True)
        if body:
            await connection.send_body(body)
        await connection.end_body()
        status, response_headers = await connection.response()
        answer = bytearray()
        while chunk := await connection.receive_body():
            answer += chunk
            if len(answer) > WASM_HTTP_CALL_MAX_BYTES:
                raise CallError(f"the answer is over {WASM_HTTP_CALL_MAX_BYTES} bytes")
        reusable = True
        return CallAnswer(status, [(":status", str(status)), *response_headers], bytes(answer),
                          list(connection.trailers or ()))
    finally:
        await connection.release(reusable)
