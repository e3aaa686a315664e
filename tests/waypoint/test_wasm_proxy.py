"""WasmPlugins in a running waypoint (in process, loopback, real TLS and HBONE), with the real plugins
that ``make wasm-plugins`` builds from the two AssemblyScript SDKs: what a client and an app see."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from ca.authority import SigningAuthority
from tests.wasm_plugins import plugin_path
from tests.waypoint.loopback import HTTP_PORT, WEB_HOST, WEB_VIP, H1Client, Mesh, running_waypoint, source_ztunnel
from tests.ztunnel.pki import TD

WEB_AUTHORITY = f"{WEB_VIP}:{HTTP_PORT}"
FORWARDED = ("127.0.19.10", 40000)
SDKS = ("gcore", "solo")


@pytest.fixture(scope="module")
def authority() -> SigningAuthority:
    return SigningAuthority.self_signed(TD)


def plugin(name: str, behaviour: str, config: str = "{}", fail: str = "FAIL_CLOSE", extra: str = "") -> str:
    return f"""
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: {name}, namespace: shop}}
spec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: wp}}]
  url: file://{plugin_path(behaviour)}
  pluginConfig: {config}
  failStrategy: {fail}
{extra}"""


@asynccontextmanager
async def with_plugins(authority: SigningAuthority, docs: str) -> AsyncIterator[tuple[Mesh, H1Client]]:
    async with running_waypoint(authority, extra=docs) as mesh:
        await mesh.waypoint.wasm.settled()
        assert all(s.state == "loaded" for s in mesh.waypoint.wasm_plugins), mesh.waypoint.wasm_plugins
        async with source_ztunnel(authority, mesh.address) as ztunnel:
            yield mesh, H1Client(await ztunnel.open(WEB_AUTHORITY, FORWARDED))


@pytest.mark.parametrize("sdk", SDKS)
async def test_a_plugin_adds_a_request_header_from_its_configuration(authority, sdk):
    docs = plugin("add", f"add-header-{sdk}", "{header: x-added, value: from-config}", extra="  pluginName: add-header")
    async with with_plugins(authority, docs) as (mesh, client):
        first = await client.request("GET", "/a")
        second = await client.request("GET", "/b")  # the same connection, a new HTTP context
    assert (first.status, second.status) == (200, 200)
    assert [seen.headers.get("x-added") for seen in mesh.web.seen] == ["from-config", "from-config"]
    assert first.headers["x-plugin"] == "add-header"


@pytest.mark.parametrize("sdk", SDKS)
async def test_a_plugin_denies_a_request_without_a_header(authority, sdk):
    docs = plugin("deny", f"deny-without-header-{sdk}", "{header: x-token}")
    async with with_plugins(authority, docs) as (mesh, client):
        denied = await client.request("GET", "/secret")
        allowed = await client.request("GET", "/secret", extra_headers=[("x-token", "t")])
        await mesh.records.wait_for(requests=2)
    assert (denied.status, denied.body) == (403, b"denied by plugin")
    assert allowed.status == 200
    assert [seen.target for seen in mesh.web.seen] == ["/secret"]  # only the allowed one reached the app
    record = mesh.records.requests[0]
    assert (record.status, record.response_flags) == (403, "-")
    assert "shop/deny" in (record.detail or "")


async def test_an_http_call_to_a_mesh_service_decides_the_request(authority):
    allow = plugin("authz", "http-call-gcore",
                   f'{{upstream: "outbound|{HTTP_PORT}||{WEB_HOST}", path: /check}}')
    async with with_plugins(authority, allow) as (mesh, client):
        answer = await client.request("GET", "/guarded")
    assert answer.status == 200
    assert [seen.target for seen in mesh.web.seen] == ["/check", "/guarded"]
    assert mesh.web.seen[0].headers["x-original-path"] == "/guarded"
    refuse = plugin("authz", "http-call-gcore", '{upstream: "outbound|80||missing.shop.svc.cluster.local"}')
    async with with_plugins(authority, refuse) as (mesh, client):
        answer = await client.request("GET", "/guarded")
    assert (answer.status, answer.body) == (403, b"denied by authz service")
    assert mesh.web.seen == []


@pytest.mark.parametrize("behaviour", ["endless-loop-gcore", "unbounded-alloc-gcore", "trap-gcore", "trap-solo"])
async def test_a_plugin_that_fails_fails_its_request_closed_and_the_waypoint_goes_on(authority, behaviour):
    async with with_plugins(authority, plugin("bad", behaviour)) as (mesh, client):
        first = await client.request("GET", "/one")
        second = await client.request("GET", "/two")  # the VM rebuilt (rate-limited), failing again
        await mesh.records.wait_for(requests=2)
    assert (first.status, second.status) == (503, 503)
    assert mesh.web.seen == []
    assert all(r.response_flags == "WASM" and "shop/bad" in (r.detail or "") for r in mesh.records.requests)


async def test_a_failing_plugin_under_fail_open_is_skipped(authority):
    async with with_plugins(authority, plugin("bad", "endless-loop-gcore", fail="FAIL_OPEN")) as (mesh, client):
        answer = await client.request("GET", "/open")
    assert answer.status == 200 and [seen.target for seen in mesh.web.seen] == ["/open"]


async def test_plugins_run_in_phase_order(authority):
    """AUTHZ (before the L7 policy) denies first; the UNSPECIFIED header plugin never sees the request."""
    docs = (plugin("deny", "deny-without-header-gcore", "{header: x-token}", extra="  phase: AUTHZ")
            + plugin("add", "add-header-gcore", "{header: x-added, value: v}"))
    async with with_plugins(authority, docs) as (mesh, client):
        denied = await client.request("GET", "/p")
        allowed = await client.request("GET", "/p", extra_headers=[("x-token", "t")])
    assert (denied.status, allowed.status) == (403, 200)
    assert [seen.headers.get("x-added") for seen in mesh.web.seen] == ["v"]


def test_a_waypoint_without_a_wasm_plugin_never_imports_wasmtime():
    """The whole in-process waypoint serves a request; wasmtime is still not imported."""
    script = textwrap.dedent("""
        import sys, trio
        from ca.authority import SigningAuthority
        from tests.ztunnel.pki import TD
        from tests.waypoint.loopback import H1Client, running_waypoint, source_ztunnel, WEB_VIP, HTTP_PORT

        async def main():
            authority = SigningAuthority.self_signed(TD)
            async with running_waypoint(authority) as mesh, source_ztunnel(authority, mesh.address) as ztunnel:
                client = H1Client(await ztunnel.open(f"{WEB_VIP}:{HTTP_PORT}", ("127.0.19.10", 40000)))
                assert (await client.request("GET", "/")).status == 200
                mesh.nursery.cancel_scope.cancel()
            print("wasmtime" in sys.modules)

        trio.run(main)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stdout + result.stderr


@pytest.mark.parametrize("sdk", SDKS)
async def test_a_plugin_reads_properties_and_counts_a_metric_the_waypoint_exports(authority, sdk):
    docs = plugin("props", f"properties-metric-{sdk}", extra="  pluginName: properties-metric")
    async with with_plugins(authority, docs) as (mesh, client):
        answers = [await client.request("GET", f"/p{i}") for i in range(3)]
        samples = list(mesh.waypoint.plugin_samples())
    assert answers[0].headers["x-wasm-properties"] == (
        "path=/p0;principal=spiffe://cluster.local/ns/shop/sa/client;root_id=properties-metric")
    assert ("shop/props", "wasm_requests_total", "counter", 3) in samples


async def test_a_get_answered_whole_calls_each_callback_once(authority, monkeypatch):
    """Envoy's calls for a request without a body whose answer comes whole: no request body callback, one
    response body callback (with end_of_stream), as each guest call costs a few microseconds here."""
    from waypoint.wasm import vm

    calls: list[str] = []
    call = vm.Vm.call

    def counted(self, name, *args, **kwargs):
        calls.append(name)
        return call(self, name, *args, **kwargs)

    docs = plugin("add", "add-header-gcore", "{header: x-added, value: v}")
    async with with_plugins(authority, docs) as (mesh, client):
        monkeypatch.setattr(vm.Vm, "call", counted)
        assert (await client.request("GET", "/once")).status == 200
        await mesh.records.wait_for(requests=1)  # recorded after the plugins' on_done/on_log/on_delete
        seen = list(calls)
    assert seen == ["proxy_on_context_create", "proxy_on_request_headers", "proxy_on_response_headers",
                     "proxy_on_response_body", "proxy_on_done", "proxy_on_log", "proxy_on_delete"]
