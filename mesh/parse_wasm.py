"""Istio's WasmPlugin (``extensions.istio.io/v1alpha1``) → ``mesh.resources.WasmPlugin``, for ``mesh.parse``.

Checked as Istio's CRD checks it (the patterns, lengths and enums of ``extensions/v1alpha1/wasm.proto``),
plus what this mesh can run, so that a plugin the waypoint cannot load is refused here, with its
field, instead of failing every request it would have seen (Istio's FAIL_CLOSE on a failed fetch):

- ``url``: ``file:///absolute/path.wasm``, or ``http(s)://`` with ``sha256`` (required: the module is
  fetched by the waypoint and cached by its digest). ``oci://`` and a bare image reference (Istio's
  default scheme is ``oci``) are errors: no OCI registry client here.
- ``type: NETWORK`` is an error: the waypoint runs HTTP plugins only.
- ``pluginConfig`` is any mapping, kept as canonical JSON bytes (what ``proxy_on_configure`` reads; an
  empty one is no configuration at all, as Istio sends it).
- ``vmConfig.env``: ``INLINE`` values, and ``HOST`` names that the waypoint copies from its own
  environment (Envoy's meaning: the proxy's environment, never the control plane's).
- ``selector`` is kept but applies to no waypoint (Istio: waypoints use ``targetRefs`` only);
  ``controlplane.waypoint_config`` resolves ``targetRefs`` and ``ambient validate`` reports the rest.
- ``imagePullSecret`` is for OCI pulls: a warning, ignored. ``imagePullPolicy`` is checked and has no
  effect (modules are cached by sha256, which a fetched one always has). ``verificationKey`` is not
  implemented by Istio either: accepted, ignored.
"""

from __future__ import annotations

import datetime
import json
import re
from urllib.parse import urlsplit

from mesh import resources as r
from mesh.parse_fields import labels_selector, object_ref, port_field
from mesh.source import Field, Severity

PHASES = ("UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS")
FAIL_STRATEGIES = ("FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD")
PULL_POLICIES = ("UNSPECIFIED_POLICY", "IfNotPresent", "Always")
PLUGIN_TYPES = ("UNSPECIFIED_PLUGIN_TYPE", "HTTP", "NETWORK")
MODES = ("UNDEFINED", "CLIENT", "SERVER", "CLIENT_AND_SERVER")
ENV_SOURCES = ("INLINE", "HOST")

# Istio's CRD bounds (wasm.proto's kubebuilder markers).
MAX_TARGET_REFS = 16
MAX_PLUGIN_NAME = 256
MAX_ENV = 256
MAX_ENV_NAME = 256
MAX_ENV_VALUE = 2048
INT32 = (-(2**31), 2**31 - 1)  # priority is an Int32Value

_FIELDS = {"url", "sha256", "pluginConfig", "pluginName", "phase", "priority", "failStrategy", "targetRef",
           "targetRefs", "selector", "type", "imagePullPolicy", "imagePullSecret", "vmConfig", "match",
           "verificationKey"}
_SHA256 = re.compile(r"[a-f0-9]{64}")
_C_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def wasm_plugin(spec: Field, meta: r.Meta, origin: r.Origin) -> r.WasmPlugin | None:
    if not spec.mapping(_FIELDS, required=True):
        return None
    url = _url(spec["url"])
    digest = spec["sha256"].str(default="")
    if digest and not _SHA256.fullmatch(digest):
        spec["sha256"].report(f"{digest!r} is not a SHA-256 digest (64 lowercase hex digits)")
    elif url and url.startswith(("http://", "https://")) and not digest:
        spec["sha256"].report("is required for an http(s):// url: the waypoint checks the module it fetches "
                              "against it (and caches it by it)")
    selector = labels_selector(spec["selector"])
    targets = _target_refs(spec)
    if selector is not None and targets:
        spec["selector"].report("selector and targetRefs cannot both be set (Istio: only one of them)")
    plugin_type = spec["type"].str(default="UNSPECIFIED_PLUGIN_TYPE", choices=PLUGIN_TYPES)
    if plugin_type == "NETWORK":
        spec["type"].report("NETWORK plugins are not supported here: the waypoint runs HTTP plugins only "
                            "(the plugin is not applied)")
    if spec["imagePullSecret"].present:
        spec["imagePullSecret"].report("is used to pull OCI images only, which the mesh does not do; ignored",
                                       Severity.WARNING)
    spec["verificationKey"].str()  # a string, as the CRD says; Istio does not implement it either
    return r.WasmPlugin(
        meta, origin, url or "", targets, digest, _plugin_config(spec["pluginConfig"]), _plugin_name(spec),
        spec["phase"].str(default="UNSPECIFIED_PHASE", choices=PHASES),
        spec["priority"].int(default=0, low=INT32[0], high=INT32[1]) or 0,
        spec["failStrategy"].str(default="FAIL_CLOSE", choices=FAIL_STRATEGIES),
        _vm_env(spec["vmConfig"]), _match(spec["match"]),
        spec["imagePullPolicy"].str(default="UNSPECIFIED_POLICY", choices=PULL_POLICIES),
        r.frozen_map(selector) if selector is not None else None,
    )


def _target_refs(spec: Field) -> tuple[r.ObjectRef, ...]:
    """``targetRefs`` (at most MAX_TARGET_REFS), plus the older singular ``targetRef``."""
    items = spec["targetRefs"].items()
    if len(items) > MAX_TARGET_REFS:
        spec["targetRefs"].report(f"has {len(items)} entries; at most {MAX_TARGET_REFS}")
    fields = items + ([spec["targetRef"]] if spec["targetRef"].present else [])
    return tuple(ref for item in fields if (ref := object_ref(item)))


def _url(f: Field) -> str | None:
    url = f.str(required=True)
    if url is None:
        return None
    if not url:
        f.report("must not be empty")
        return None
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("", "oci"):
        shown = "an OCI image reference" + ("" if scheme else " (a url without a scheme is one, as in Istio)")
        f.report(f"{url!r} is {shown}: OCI images are not supported here, only file:// and http(s):// modules "
                 "(the plugin is not applied)")
        return None
    if scheme == "file":
        path = url[len("file://"):]
        if not path.startswith("/") or path == "/":
            f.report(f"{url!r}: a file:// url names an absolute path to a module, as in file:///plugins/x.wasm")
            return None
        return url
    if scheme in ("http", "https"):
        try:
            host = urlsplit(url).hostname
        except ValueError as exc:
            f.report(f"{url!r} is not a valid url: {exc}")
            return None
        if not host or any(c.isspace() for c in url):
            f.report(f"{url!r} is not a valid {scheme} url (it needs a host, and no spaces)")
            return None
        return url
    f.report(f"{url!r}: the scheme must be one of file, http, https (or oci, not supported here)")
    return None


def _plugin_name(spec: Field) -> str:
    f = spec["pluginName"]
    name = f.str()
    if name is not None and not 1 <= len(name) <= MAX_PLUGIN_NAME:
        f.report(f"must be 1 to {MAX_PLUGIN_NAME} characters")
    return name or ""


def _json_value(value: object) -> object:
    """YAML's own types that JSON does not have, as Kubernetes' YAML → JSON conversion writes them."""
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def _plugin_config(f: Field) -> bytes:
    """``pluginConfig`` (a google.protobuf.Struct: a mapping) as canonical JSON: sorted keys, no spaces,
    UTF-8; b"" when absent or empty (Istio then passes no configuration)."""
    config = f.value
    if config is not None and not isinstance(config, dict):
        f.report("expected a mapping (a JSON object)")
        return b""
    if not config:
        return b""
    try:
        text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                          default=_json_value)
    except (TypeError, ValueError) as exc:  # .nan, .inf
        f.report(f"is not representable as JSON: {exc}")
        return b""
    return text.encode()


def _vm_env(f: Field) -> tuple[r.WasmEnv, ...]:
    if not f.mapping({"env"}):
        return ()
    items = f["env"].items()
    if len(items) > MAX_ENV:
        f["env"].report(f"has {len(items)} entries; at most {MAX_ENV}")
    env: list[r.WasmEnv] = []
    for item in items:
        if not item.mapping({"name", "value", "valueFrom"}):
            continue
        name = item["name"].str(required=True)
        source = item["valueFrom"].str(default="INLINE", choices=ENV_SOURCES)
        value = item["value"].str(default="")
        if source == "HOST" and item["value"].present:
            item["value"].report("may only be set when valueFrom is INLINE (HOST takes the waypoint's own value)")
        if len(value) > MAX_ENV_VALUE:
            item["value"].report(f"is {len(value)} characters; at most {MAX_ENV_VALUE}")
        if name is None:
            continue
        if len(name) > MAX_ENV_NAME or not _C_IDENTIFIER.fullmatch(name):
            item["name"].report(f"{name!r} is not an environment variable name (a C identifier: letters, digits "
                                f"and '_', not starting with a digit; at most {MAX_ENV_NAME} characters)")
        elif any(e.name == name for e in env):
            item["name"].report(f"{name!r} is set twice (names are unique)")
        else:
            env.append(r.WasmEnv(name, value, source == "HOST"))
    return tuple(env)


def _match(f: Field) -> tuple[r.TrafficSelector, ...]:
    selectors = []
    for item in f.items():
        if not item.mapping({"mode", "ports"}):
            continue
        mode = item["mode"].str(default="UNDEFINED", choices=MODES)
        ports = []
        for port in item["ports"].items():
            if port.mapping({"number"}) and (number := port_field(port["number"])) is not None:
                if number in ports:
                    port["number"].report(f"port {number} is listed twice")
                ports.append(number)
        selectors.append(r.TrafficSelector(mode, tuple(ports)))
    return tuple(selectors)
