"""``/config_dump`` of a waypoint: what it serves, with which configuration and which certificate.

``config_dump(view)`` is a pure function of a ``DumpView``: plain data the proxy already holds (the
discovery resources it kept, the Services it serves, its credentials), so that satisfying the
protocol costs the proxy nothing but attributes. Built on request, never cached. The shape follows
ztunnel's dump where both say the same thing (camelCase keys, ``certificates`` with ``state``,
``serialNumber``, ``validFrom``, ``expirationTime``, ``version``), with what a waypoint has beside:

    gateway, identity       the Gateway it runs for (``<ns>/<name>``) and its SPIFFE ID
    listeners               its HBONE listener (``mesh``, 15008), once bound
    services                the Services it serves (``<ns>/<hostname>``)
    policies                its L7 policies: name, action, targets, dryRun, rule count, and whether it
                            is enforced (CUSTOM is skipped with a warning, issue 19; dry-run is only logged)
    routes                  each HTTPRoute/GRPCRoute: parents, hostnames, its rules summarised (matches,
                            backends with weights, filters, timeouts, retry), its ``status`` (Accepted, or
                            the route's ``problems``) and whether it is ``attached`` to a Service served here
    wasmPlugins             the WasmPlugins that target it: url, sha256, phase, priority, failOpen, and
                            ``state`` (loaded, loading, failed with its ``error``)
    certificates            the waypoint's own certificate chain: identity, serial, validity; the key
                            never (a ``WorkloadCredentials``' key is not read here)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from cryptography import x509

import mesh
from hbone.tls import WorkloadCredentials
from mesh.addresses import format_address
from mesh.api import waypoint_pb2 as wp
from mesh.identity import SpiffeId
from waypoint.wasm_manager import PluginStatus

ACCEPTED = "Accepted"
HBONE_LISTENER = "mesh"  # the Gateway's listener name for HBONE, as Istio's waypoint Gateway names it


class DumpView(Protocol):
    """What the dump reads from the waypoint process: plain data it holds anyway."""

    @property
    def gateway(self) -> str:
        """``<ns>/<name>`` of the waypoint Gateway."""

    @property
    def identity(self) -> SpiffeId: ...

    @property
    def certificate(self) -> WorkloadCredentials | None:
        """The current credentials; None until the CA has answered."""

    @property
    def hbone_address(self) -> tuple[str, int] | None:
        """Where the HBONE listener is bound (None: not yet)."""

    @property
    def policies(self) -> Sequence[wp.L7Policy]:
        """The L7 policies that concern this waypoint (its Gateway or a Service it serves)."""

    @property
    def routes(self) -> Sequence[wp.Route]:
        """The routes discovery sent (attached here or not: the dump says which)."""

    @property
    def served_services(self) -> Sequence[str]:
        """``<ns>/<hostname>`` of the Services this waypoint serves."""

    @property
    def wasm_plugins(self) -> Sequence[PluginStatus]:
        """The WasmPlugins that target this waypoint, loaded, loading or failed."""


def _string_match(match: wp.StringMatch, prefix_name: str = "Prefix") -> str:
    kind = match.WhichOneof("kind")
    if kind == "exact":
        return f"Exact {match.exact}"
    if kind == "prefix":
        return f"{prefix_name} {match.prefix}"
    if kind == "regex":
        return f"RegularExpression {match.regex}"
    return "any"


def _match(match: wp.RouteMatch) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    if match.HasField("path"):
        entry["path"] = _string_match(match.path, "PathPrefix")
    if match.headers:
        entry["headers"] = [f"{h.name}: {_string_match(h.value)}" for h in match.headers]
    if match.query_params:
        entry["queryParams"] = [f"{q.name}: {_string_match(q.value)}" for q in match.query_params]
    if match.method:
        entry["method"] = match.method
    return entry


def _filters(rule: wp.RouteRule) -> list[str]:
    """The Gateway API filter kinds the rule carries."""
    present = [
        ("RequestHeaderModifier", rule.HasField("request_headers")),
        ("ResponseHeaderModifier", rule.HasField("response_headers")),
        ("RequestRedirect", rule.HasField("redirect")),
        ("URLRewrite", rule.HasField("rewrite")),
        ("RequestMirror", bool(rule.mirrors)),
    ]
    return [name for name, there in present if there]


def _backend(backend: wp.Backend) -> dict[str, Any]:
    entry: dict[str, Any] = {"service": backend.service, "port": backend.port, "weight": backend.weight}
    if backend.error:
        entry["error"] = backend.error  # requests routed to it get 500
    return entry


def _rule(rule: wp.RouteRule) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "matches": [_match(m) for m in rule.matches] or [{"path": "PathPrefix /"}],
        "backends": [_backend(b) for b in rule.backends],
    }
    if rule.name:
        entry["name"] = rule.name
    if filters := _filters(rule):
        entry["filters"] = filters
    if rule.HasField("redirect"):
        entry["redirect"] = {"statusCode": rule.redirect.status_code or 302}
    if rule.timeout_seconds or rule.backend_timeout_seconds:
        entry["timeouts"] = {key: value for key, value in (("request", rule.timeout_seconds),
                                                           ("backendRequest", rule.backend_timeout_seconds)) if value}
    if rule.HasField("retry"):
        entry["retry"] = {"attempts": rule.retry.attempts, "codes": list(rule.retry.codes)}
    return entry


def route_entry(route: wp.Route, served: frozenset[str]) -> dict[str, Any]:
    """One route, summarised, with its status and whether a Service served here is its parent."""
    return {
        "name": route.name, "namespace": route.namespace, "kind": route.kind,
        "parents": [f"{p.service}:{p.port}" if p.port else p.service for p in route.parents],
        "hostnames": list(route.hostnames),
        "rules": [_rule(r) for r in route.rules],
        "status": {"accepted": not route.problems, "reason": ACCEPTED if not route.problems else "Invalid",
                   "problems": list(route.problems)},
        "attached": any(p.service in served for p in route.parents),
    }


def policy_entry(policy: wp.L7Policy, served: frozenset[str], gateway: str) -> dict[str, Any]:
    """One L7 policy: its targets, and whether this waypoint enforces it."""
    action = wp.L7Policy.Action.Name(policy.action)
    return {
        "name": policy.name, "namespace": policy.namespace, "action": action.capitalize(),
        "targets": {"gateways": list(policy.gateways), "services": list(policy.services)},
        "dryRun": policy.dry_run, "rules": len(policy.rules),
        "enforced": policy.action != wp.L7Policy.CUSTOM and not policy.dry_run,
        "applies": gateway in policy.gateways or any(s in served for s in policy.services),
    }


def _cert(pem: str) -> dict[str, str]:
    cert = x509.load_pem_x509_certificate(pem.encode())
    return {"serialNumber": format(cert.serial_number, "x"), "subject": cert.subject.rfc4514_string(),
            "validFrom": cert.not_valid_before_utc.isoformat(), "expirationTime": cert.not_valid_after_utc.isoformat()}


def certificate_entry(identity: SpiffeId, credentials: WorkloadCredentials | None) -> dict[str, Any]:
    """The waypoint's certificate (``Available``) or ``Initializing``; its chain without the key."""
    if credentials is None:
        return {"identity": str(identity), "state": "Initializing", "certChain": [], "rootCerts": []}
    return {"identity": str(credentials.identity), "state": "Available",
            "certChain": [_cert(pem) for pem in credentials.chain_pem],
            "rootCerts": [_cert(pem) for pem in credentials.roots_pem]}


def wasm_plugin_entry(status: PluginStatus) -> dict[str, Any]:
    entry = {"name": status.name, "url": status.url, "sha256": status.sha256, "phase": status.phase,
             "priority": status.priority, "failOpen": status.fail_open, "state": status.state}
    if status.error is not None:
        entry["error"] = status.error
    return entry


def config_dump(view: DumpView) -> dict[str, Any]:
    served = frozenset(view.served_services)
    listeners = []
    if view.hbone_address is not None:
        listeners.append({"name": HBONE_LISTENER, "address": format_address(*view.hbone_address),
                          "protocol": "HBONE"})
    return {
        "gateway": view.gateway, "identity": str(view.identity),
        "listeners": listeners,
        "services": sorted(served),
        "policies": [policy_entry(p, served, view.gateway)
                     for p in sorted(view.policies, key=lambda p: (p.namespace, p.name))],
        "routes": [route_entry(r, served) for r in sorted(view.routes, key=lambda r: (r.namespace, r.kind, r.name))],
        "wasmPlugins": [wasm_plugin_entry(status) for status in view.wasm_plugins],
        "certificates": [certificate_entry(view.identity, view.certificate)],
        "version": mesh.__version__,
    }
