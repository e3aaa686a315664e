"""WasmPlugin YAML → ``mesh.resources.WasmPlugin`` (``mesh.parse_wasm``): what is kept, and each problem
with its exact message, as tables."""

from __future__ import annotations

import pytest

from mesh import resources as r
from mesh.parse import parse_text
from mesh.source import Code, Severity

DIGEST = "1ef0c9a92b0420cf25f7fe5d481b231464bc88f486ca3b9c83ed5cc21d2f6210"
HEAD = "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: w, namespace: shop}\nspec:\n"
TARGET = "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]\n"


def plugin(spec: str) -> r.WasmPlugin:
    result = parse_text(HEAD + spec, "x.yaml")
    assert [str(p) for p in result.problems] == []
    (resource,) = result.resources
    assert isinstance(resource, r.WasmPlugin)
    return resource


def test_every_field_is_kept():
    w = plugin(TARGET + f"""\
  url: https://example.com/filters/openid.wasm
  sha256: {DIGEST}
  imagePullPolicy: Always
  pluginName: openid
  phase: AUTHN
  priority: -7
  failStrategy: FAIL_OPEN
  pluginConfig: {{zeta: [1, 2.5, true, null], alpha: {{nested: é}}}}
  vmConfig:
    env:
    - {{name: TRUST_DOMAIN, value: cluster.local}}
    - {{name: POD_NAME, valueFrom: HOST}}
    - {{name: EMPTY}}
  match:
  - mode: SERVER
    ports: [{{number: 80}}, {{number: 8080}}]
  - {{}}
  type: HTTP
  verificationKey: ignored
""")
    assert w.url == "https://example.com/filters/openid.wasm" and w.sha256 == DIGEST
    assert w.target_refs == (r.ObjectRef("Gateway", "wp", "gateway.networking.k8s.io"),)
    assert (w.plugin_name, w.phase, w.priority, w.fail_strategy, w.fail_open) == ("openid", "AUTHN", -7, "FAIL_OPEN",
                                                                                  True)
    assert w.image_pull_policy == "Always"
    # Canonical JSON: sorted keys, no spaces, UTF-8 as is.
    assert w.plugin_config == '{"alpha":{"nested":"é"},"zeta":[1,2.5,true,null]}'.encode()
    assert w.vm_env == (r.WasmEnv("TRUST_DOMAIN", "cluster.local"), r.WasmEnv("POD_NAME", "", True),
                        r.WasmEnv("EMPTY", ""))
    assert w.match == (r.TrafficSelector("SERVER", (80, 8080)), r.TrafficSelector())
    assert w.selector is None


def test_defaults_as_istio():
    w = plugin(TARGET + "  url: file:///plugins/headers.wasm\n")
    assert (w.sha256, w.plugin_config, w.plugin_name, w.phase, w.priority, w.fail_strategy, w.fail_open) == (
        "", b"", "", "UNSPECIFIED_PHASE", 0, "FAIL_CLOSE", False)
    assert (w.vm_env, w.match, w.image_pull_policy) == ((), (), "UNSPECIFIED_POLICY")


@pytest.mark.parametrize("spec, config", [
    ("  pluginConfig: {}\n", b""),  # as Istio: an empty Struct is no configuration
    ("  pluginConfig: {b: 1, a: 2}\n", b'{"a":2,"b":1}'),
    ("  pluginConfig: {when: 2024-01-02}\n", b'{"when":"2024-01-02"}'),  # YAML's date, as JSON has it: a string
])
def test_plugin_config_is_canonical_json(spec, config):
    assert plugin(TARGET + "  url: file:///p.wasm\n" + spec).plugin_config == config


def test_fail_reload_fails_closed():
    assert not plugin(TARGET + "  url: file:///p.wasm\n  failStrategy: FAIL_RELOAD\n").fail_open


def test_the_singular_target_ref_and_a_selector_alone_are_kept():
    w = plugin("  url: file:///p.wasm\n  targetRef: {kind: Service, group: '', name: web}\n")
    assert w.target_refs == (r.ObjectRef("Service", "web"),)
    # A selector alone parses: it is for sidecars, and validate says no waypoint runs it (AMB0111).
    assert plugin("  url: file:///p.wasm\n  selector: {matchLabels: {app: web}}\n").selector == {"app": "web"}


OK = TARGET + "  url: file:///p.wasm\n"
BROKEN = [
    (TARGET, "spec.url: is required"),
    (TARGET + "  url: ''\n", "spec.url: must not be empty"),
    (TARGET + "  url: oci://ghcr.io/x/y:1\n",
     "spec.url: 'oci://ghcr.io/x/y:1' is an OCI image reference: OCI images are not supported here, only file:// and "
     "http(s):// modules (the plugin is not applied)"),
    (TARGET + "  url: ghcr.io/x/y:1\n",
     "spec.url: 'ghcr.io/x/y:1' is an OCI image reference (a url without a scheme is one, as in Istio): OCI images "
     "are not supported here, only file:// and http(s):// modules (the plugin is not applied)"),
    (TARGET + "  url: ftp://h/p.wasm\n",
     "spec.url: 'ftp://h/p.wasm': the scheme must be one of file, http, https (or oci, not supported here)"),
    (TARGET + "  url: file://plugins/p.wasm\n",
     "spec.url: 'file://plugins/p.wasm': a file:// url names an absolute path to a module, as in "
     "file:///plugins/x.wasm"),
    (TARGET + "  url: https://h/p.wasm\n",
     "spec.sha256: is required for an http(s):// url: the waypoint checks the module it fetches against it (and "
     "caches it by it)"),
    (TARGET + f"  url: http:///p.wasm\n  sha256: {DIGEST}\n",
     "spec.url: 'http:///p.wasm' is not a valid http url (it needs a host, and no spaces)"),
    (OK + "  sha256: ABC\n", "spec.sha256: 'ABC' is not a SHA-256 digest (64 lowercase hex digits)"),
    (OK + f"  sha256: {DIGEST.upper()}\n",
     f"spec.sha256: '{DIGEST.upper()}' is not a SHA-256 digest (64 lowercase hex digits)"),
    (OK + "  phase: LATE\n", "spec.phase: 'LATE' is not one of UNSPECIFIED_PHASE, AUTHN, AUTHZ, STATS"),
    (OK + "  failStrategy: FAIL_SOMETIMES\n",
     "spec.failStrategy: 'FAIL_SOMETIMES' is not one of FAIL_CLOSE, FAIL_OPEN, FAIL_RELOAD"),
    (OK + "  type: NETWORK\n",
     "spec.type: NETWORK plugins are not supported here: the waypoint runs HTTP plugins only (the plugin is not "
     "applied)"),
    (OK + "  type: UDP\n", "spec.type: 'UDP' is not one of UNSPECIFIED_PLUGIN_TYPE, HTTP, NETWORK"),
    (OK + "  imagePullPolicy: Never\n",
     "spec.imagePullPolicy: 'Never' is not one of UNSPECIFIED_POLICY, IfNotPresent, Always"),
    (OK + "  priority: high\n", "spec.priority: expected an integer, got str 'high'"),
    (OK + "  priority: 2147483648\n", "spec.priority: 2147483648 is out of range -2147483648..2147483647"),
    (OK + "  pluginName: ''\n", "spec.pluginName: must be 1 to 256 characters"),
    (OK + f"  pluginName: {'n' * 257}\n", "spec.pluginName: must be 1 to 256 characters"),
    (OK + "  pluginConfig: [a]\n", "spec.pluginConfig: expected a mapping (a JSON object)"),
    (OK + "  pluginConfig: {x: .nan}\n",
     "spec.pluginConfig: is not representable as JSON: Out of range float values are not JSON compliant"),
    (OK + "  selector: {matchLabels: {app: web}}\n",
     "spec.selector: selector and targetRefs cannot both be set (Istio: only one of them)"),
    ("  url: file:///p.wasm\n  targetRefs: [{name: wp}]\n", "spec.targetRefs[0].kind: is required"),
    ("  url: file:///p.wasm\n  targetRefs:\n" + "  - {kind: Service, name: s}\n" * 17,
     "spec.targetRefs: has 17 entries; at most 16"),
    (OK + "  vmConfig: {env: [{name: 1X}]}\n",
     "spec.vmConfig.env[0].name: '1X' is not an environment variable name (a C identifier: letters, digits and "
     "'_', not starting with a digit; at most 256 characters)"),
    (OK + "  vmConfig: {env: [{name: A, value: x}, {name: A, value: y}]}\n",
     "spec.vmConfig.env[1].name: 'A' is set twice (names are unique)"),
    (OK + "  vmConfig: {env: [{name: A, valueFrom: HOST, value: x}]}\n",
     "spec.vmConfig.env[0].value: may only be set when valueFrom is INLINE (HOST takes the waypoint's own value)"),
    (OK + "  vmConfig: {env: [{name: A, valueFrom: FILE}]}\n",
     "spec.vmConfig.env[0].valueFrom: 'FILE' is not one of INLINE, HOST"),
    (OK + f"  vmConfig: {{env: [{{name: A, value: {'v' * 2049}}}]}}\n",
     "spec.vmConfig.env[0].value: is 2049 characters; at most 2048"),
    (OK + "  match: [{mode: INBOUND}]\n",
     "spec.match[0].mode: 'INBOUND' is not one of UNDEFINED, CLIENT, SERVER, CLIENT_AND_SERVER"),
    (OK + "  match: [{ports: [{number: 0}]}]\n", "spec.match[0].ports[0].number: 0 is not a port number (1-65535)"),
    (OK + "  match: [{ports: [{number: 80}, {number: 80}]}]\n",
     "spec.match[0].ports[1].number: port 80 is listed twice"),
]


@pytest.mark.parametrize("spec, message", BROKEN, ids=[m.split(":")[0] + ":" + m[-30:] for _, m in BROKEN])
def test_each_error_is_reported_and_refuses_the_plugin(spec, message):
    result = parse_text(HEAD + spec, "x.yaml")
    assert [p.message if p.field == "" else f"{p.field}: {p.message}" for p in result.errors] == [message]
    assert all(p.resource == "WasmPlugin shop/w" for p in result.errors)
    assert result.resources == []


def test_warnings_keep_the_plugin():
    result = parse_text(HEAD + OK + "  imagePullSecret: registry\n  vmConfig: {env: [], cpu: 2}\n", "x.yaml")
    assert [(p.severity, p.field, p.code) for p in result.problems] == [
        (Severity.WARNING, "spec.imagePullSecret", Code.UNSUPPORTED),
        (Severity.WARNING, "spec.vmConfig.cpu", Code.UNKNOWN_FIELD),
    ]
    assert result.problems[0].message == "is used to pull OCI images only, which the mesh does not do; ignored"
    assert len(result.resources) == 1


def test_spec_is_required():
    result = parse_text(HEAD.removesuffix("spec:\n"), "x.yaml")
    assert [f"{p.field}: {p.message}" for p in result.errors] == ["spec: is required"]
