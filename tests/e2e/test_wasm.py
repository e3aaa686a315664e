"""WasmPlugins in the lab, end to end (root): client pod → ztunnel → waypoint (Proxy-Wasm) → ztunnel → server
(issue 20).

One lab for the whole module (the ``wasm_lab`` fixture: two nodes, the waypoint applied once, down at the
end, also after a failure), then one test per phase, in file order, each writing or removing WasmPlugin
files in the lab's YAML directory as a user would (the lab applies them live) and waiting, with a bound,
on what the waypoint says (``/config_dump``'s ``wasmPlugins``: each plugin's ``state`` and ``error``) or
on the traffic itself, never on a fixed sleep. The plugins are the real ones ``make wasm-plugins`` builds
(``tests/wasm_plugins``), given by ``file://`` URL. What is checked is what a user sees: the client's
status, body and response headers (curl in the client pod), the request headers the echo server saw (it
answers them as JSON), the waypoint's access log, and the waypoint process's memory map.

1. before any WasmPlugin the waypoint process has not mapped wasmtime's library (``/proc/<pid>/maps``);
2. ``add-header-gcore`` on the waypoint Gateway: loaded, the server sees the configured header, the
   client ``x-plugin``; the same process now maps wasmtime;
3. the plugin's ``pluginConfig`` edited: the new value applies live, no request fails meanwhile, the
   waypoint is the same process;
4. ``deny-without-header-solo`` on Service ``echo`` only: 403 ``denied by plugin`` without the header,
   200 with it; Service ``other`` unaffected;
5. ``endless-loop-gcore``, then ``unbounded-alloc-gcore``, on Service ``other`` (FAIL_CLOSE): ``other``
   answers 503 (flag WASM) within a bound while ``echo`` answers 200 in the same burst; FAIL_OPEN: 200;
6. every WasmPlugin file removed: the config dump lists none, traffic is plain again. Last.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.lab_driver import find_pod, living_processes, new_lab
from tests.e2e.test_waypoint import WaypointLab, eventually
from tests.wasm_plugins import plugin_path

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the lab creates network namespaces and eBPF capture"),
]

# Seconds a plugin takes to load once its file is written (lab → control plane → discovery → the
# waypoint compiles it: well under two seconds here); the bound only says when to give up.
LOAD_TIMEOUT = 30.0
# A request that a plugin ends by fuel (WASM_CALLBACK_FUEL) or by its memory limit (64 MiB) is answered
# in tens of milliseconds; curl's own overhead included, this bounds "the limit ended it" from "it hung".
FAILED_REQUEST_BOUND = 3.0
BURST = 4  # requests to each Service sent at once in phase 5 (curl --parallel: one client, one moment)


def _pod(name: str, node: str, app: str, command: str) -> str:
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: mesh, labels: {{app: {app}}}}}
spec:
  nodeName: {node}
  containers:
  - name: {app}
    command: {command}
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe: {{httpGet: {{path: /healthz, port: http}}, periodSeconds: 1}}
"""


def _service(name: str) -> str:
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: mesh, labels: {{istio.io/use-waypoint: waypoint}}}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"""


ECHO = '[python3, echo_server.py, --port, "8080"]'
DOCUMENTS = [
    "\napiVersion: v1\nkind: Namespace\nmetadata: {name: mesh, labels: {istio.io/dataplane-mode: ambient}}\n",
    """
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: mesh, labels: {app: client}}
spec:
  nodeName: node-0
  containers:
  - {name: client, command: [sleep, infinity]}
""",
    _pod("echo", "node-1", "echo", ECHO), _pod("other", "node-1", "other", ECHO),
    _service("echo"), _service("other"),
]

GATEWAY_REF = "{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}"


def _service_ref(name: str) -> str:
    return f'{{kind: Service, group: "", name: {name}}}'


def wasm_plugin(name: str, module: str, target: str, config: str = "{}", fail: str = "FAIL_CLOSE",
                plugin_name: str | None = None) -> str:
    """A WasmPlugin in namespace mesh running the built test plugin ``module``."""
    return f"""apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: {name}, namespace: mesh}}
spec:
  targetRefs: [{target}]
  url: file://{plugin_path(module)}
  pluginConfig: {config}
  failStrategy: {fail}
{f"  pluginName: {plugin_name}" if plugin_name else ""}
"""


@dataclass(frozen=True)
class Answer:
    """One HTTP exchange as the client pod's curl saw it."""

    status: int
    headers: dict[str, str]  # response headers, names lower-cased
    body: str
    seconds: float  # curl's time_total

    def json(self) -> dict:
        return json.loads(self.body)

    def seen(self, header: str) -> str | None:
        """A request header as the echo server saw it (names compared without case)."""
        return {k.lower(): v for k, v in self.json()["headers"].items()}.get(header)


@dataclass(frozen=True)
class WasmLab:
    lab: WaypointLab

    def request(self, service: str, path: str, *headers: str, max_time: float = 10) -> Answer:
        """GET ``path`` on ``service``'s VIP from the client pod; headers as ``name: value``."""
        flags = [arg for header in headers for arg in ("-H", header)]
        result = self.lab.exec("curl", "-sS", "-i", "--max-time", f"{max_time:g}", *flags,
                               "-w", r"\n%{http_code} %{time_total}", f"http://{self.lab.vip(service)}{path}")
        assert result.returncode == 0, f"curl {service}{path} exited {result.returncode}: {result.stderr}"
        text, _, trailer = result.stdout.rpartition("\n")
        code, seconds = trailer.split()
        # ``exec``'s output is read as text: universal newlines, so the head's CRLFs arrive as "\n".
        head, _, body = text.partition("\n\n")
        fields = (line.split(":", 1) for line in head.splitlines()[1:] if ":" in line)
        return Answer(int(code), {name.strip().lower(): value.strip() for name, value in fields}, body, float(seconds))

    def burst(self, paths: list[tuple[str, str]], *headers: str, max_time: float = 10) -> list[tuple[str, int, float]]:
        """Every (service, path) requested at once by one curl (``--parallel``), each with ``headers``:
        (url, status, seconds) each."""
        flags = [arg for header in headers for arg in ("-H", header)]
        urls = [f"http://{self.lab.vip(service)}{path}" for service, path in paths]
        outputs = [arg for _ in urls for arg in ("-o", "/dev/null")]
        result = self.lab.exec("curl", "-sS", "--parallel", "--parallel-immediate", "--parallel-max", str(len(urls)),
                               "--max-time", f"{max_time:g}", *flags, *outputs,
                               "-w", r"%{url_effective} %{http_code} %{time_total}\n", *urls)
        assert result.returncode == 0, f"curl --parallel exited {result.returncode}: {result.stderr}"
        lines = [line.split() for line in result.stdout.splitlines() if line.strip()]
        assert sorted(url for url, _, _ in lines) == sorted(urls), result.stdout
        return [(url, int(code), float(seconds)) for url, code, seconds in lines]

    def plugins(self) -> dict[str, dict]:
        """The config dump's WasmPlugins by name (``<namespace>/<name>``)."""
        return {p["name"]: p for p in self.lab.config_dump()["wasmPlugins"]}

    def loaded(self, name: str, module: str) -> dict | None:
        """Plugin ``name``'s config-dump entry once it runs ``module`` and is loaded; a failure fails the test."""
        entry = self.plugins().get(name)
        if entry is None or not entry["url"].endswith(f"/{module}.wasm"):
            return None
        assert entry["state"] != "failed", entry
        return entry if entry["state"] == "loaded" else None

    def write(self, file: str, yaml: str) -> None:
        # Written beside and renamed: the lab never reads half a file.
        path = self.lab.lab.config_dir / file
        partial = path.with_name(f".{file}.partial")
        partial.write_text(yaml)
        partial.rename(path)

    def waypoint_pid(self) -> int:
        root = str(self.lab.lab.state_root / self.lab.lab.name)
        pids = [pid for pid, (cmd, _) in living_processes().items() if " waypoint run " in cmd and root in cmd]
        assert len(pids) == 1, f"waypoint processes: {pids}"
        return pids[0]

    def maps_wasmtime(self, pid: int) -> bool:
        return "wasmtime" in Path(f"/proc/{pid}/maps").read_text()

    def access_lines(self, path: str) -> list[dict]:
        return [e for e in self.lab.waypoint_log() if e.get("path") == path]


@pytest.fixture(scope="module")
def wasm_lab(tmp_path_factory):
    for module in ("add-header-gcore", "deny-without-header-solo", "endless-loop-gcore", "unbounded-alloc-gcore"):
        plugin_path(module)  # built (or found up to date) before the lab's clock starts
    lab = new_lab(tmp_path_factory.mktemp("wasm"), DOCUMENTS)
    try:
        lab.up(nodes=2)
        wlab = WaypointLab(lab, lab.status())
        out = lab.run("waypoint", "apply", "-n", "mesh", "--lab", lab.name, "--wait").stdout
        assert "is ready" in out, out
        yield WasmLab(wlab)
    finally:  # also after a failure: nothing may outlive the module
        lab.run("lab", "down", "--name", lab.name, check=False)


# The waypoint's pid, read in phase 1 and checked in the later phases: a plugin never restarts it.
_first_pid: list[int] = []


# ---------------------------------------------------------------- the phases, in order


def test_without_a_wasm_plugin_the_waypoint_has_not_loaded_wasmtime(wasm_lab):
    pid = wasm_lab.waypoint_pid()
    _first_pid.append(pid)
    assert wasm_lab.plugins() == {}
    answer = wasm_lab.request("echo", "/plain")
    pod = find_pod(wasm_lab.lab.lab.status(), "mesh", "waypoint-waypoint")
    assert answer.status == 200 and answer.json()["client"]["address"] == pod["ip"]  # through the waypoint
    assert "x-plugin" not in answer.headers
    assert not wasm_lab.maps_wasmtime(pid), "the waypoint mapped wasmtime without a WasmPlugin"


def test_a_header_plugin_on_the_gateway_adds_its_header_and_loads_wasmtime(wasm_lab):
    wasm_lab.write("add-header.yaml", wasm_plugin("add-header", "add-header-gcore", GATEWAY_REF,
                                                  "{header: x-added, value: one}"))
    entry = eventually(lambda: wasm_lab.loaded("mesh/add-header", "add-header-gcore"), "the plugin's load",
                       LOAD_TIMEOUT)
    assert "error" not in entry and entry["failOpen"] is False
    answer = wasm_lab.request("echo", "/with-plugin")
    assert answer.status == 200
    assert answer.seen("x-added") == "one"  # the server saw the plugin's request header
    assert answer.headers.get("x-plugin") == "add-header"  # the client sees its response header
    assert wasm_lab.waypoint_pid() == _first_pid[0]
    assert wasm_lab.maps_wasmtime(_first_pid[0]), "wasmtime is not mapped with a plugin loaded"


def test_editing_the_plugin_configuration_applies_live_without_a_restart(wasm_lab):
    wasm_lab.write("add-header.yaml", wasm_plugin("add-header", "add-header-gcore", GATEWAY_REF,
                                                  "{header: x-added, value: two}"))
    answers: list[Answer] = []

    def new_value() -> bool:
        answers.append(wasm_lab.request("echo", "/edited"))
        return answers[-1].status == 200 and answers[-1].seen("x-added") == "two"

    eventually(new_value, "the edited value", LOAD_TIMEOUT)
    # The old plugin served until the new one was in: no request failed nor went without the header.
    assert [(a.status, a.seen("x-added")) for a in answers[:-1]] == [(200, "one")] * (len(answers) - 1)
    print(f"the edit applied after {len(answers)} requests")
    assert wasm_lab.loaded("mesh/add-header", "add-header-gcore")
    assert wasm_lab.waypoint_pid() == _first_pid[0]


def test_a_deny_plugin_on_one_service_denies_without_the_header(wasm_lab):
    wasm_lab.write("deny.yaml", wasm_plugin("deny", "deny-without-header-solo", _service_ref("echo"),
                                            "{header: x-token}", plugin_name="deny-without-header"))
    eventually(lambda: wasm_lab.loaded("mesh/deny", "deny-without-header-solo"), "the plugin's load", LOAD_TIMEOUT)
    denied = wasm_lab.request("echo", "/denied")
    assert (denied.status, denied.body) == (403, "denied by plugin")
    allowed = wasm_lab.request("echo", "/allowed", "x-token: t")
    assert allowed.status == 200 and allowed.seen("x-token") == "t" and allowed.seen("x-added") == "two"
    other = wasm_lab.request("other", "/not-targeted")
    assert other.status == 200 and other.seen("x-added") == "two"  # the Gateway's plugin, not the Service's
    line = eventually(lambda: wasm_lab.access_lines("/denied"), "the denial's access-log line")[-1]
    assert line["response_code"] == 403 and line["dst.service"] == "echo.mesh.svc.cluster.local"
    assert "dst.workload" not in line and "mesh/deny" in line.get("detail", ""), line  # it never reached the app


def _fails_closed_while_echo_answers(wasm_lab: WasmLab, module: str, tag: str, reason: str) -> None:
    """``module`` on Service other: a burst to both Services, other's requests 503 for ``reason``, echo's 200."""
    wasm_lab.write("bad.yaml", wasm_plugin("bad", module, _service_ref("other")))
    eventually(lambda: wasm_lab.loaded("mesh/bad", module), "the plugin's load", LOAD_TIMEOUT)
    paths = [(service, f"/{tag}-{service}-{i}") for i in range(BURST) for service in ("other", "echo")]
    results = wasm_lab.burst(paths, "x-token: t")  # the token: echo's deny plugin (phase 4) is still there
    vip_other = wasm_lab.lab.vip("other")
    other = [(code, seconds) for url, code, seconds in results if f"//{vip_other}/" in url]
    echo = [(code, seconds) for url, code, seconds in results if f"//{vip_other}/" not in url]
    print(f"{module}: other {other}, echo {echo}")
    assert [code for code, _ in other] == [503] * BURST and [code for code, _ in echo] == [200] * BURST
    assert max(seconds for _, seconds in other) < FAILED_REQUEST_BOUND
    for service, path in paths:
        if service == "other":
            line = eventually(lambda p=path: wasm_lab.access_lines(p), "the failure's access-log line")[-1]
            assert line["response_code"] == 503 and "WASM" in line["response_flags"], line
            assert "mesh/bad" in line.get("error", "") and reason in line["error"], line


def test_an_endless_loop_fails_its_service_closed_while_the_other_answers(wasm_lab):
    _fails_closed_while_echo_answers(wasm_lab, "endless-loop-gcore", "loop", "out of fuel")


def test_an_unbounded_allocation_fails_its_service_closed_while_the_other_answers(wasm_lab):
    # Its allocator traps once memory.grow is refused at the VM's memory limit.
    _fails_closed_while_echo_answers(wasm_lab, "unbounded-alloc-gcore", "alloc", "unreachable")


def test_fail_open_skips_the_failing_plugin(wasm_lab):
    wasm_lab.write("bad.yaml", wasm_plugin("bad", "unbounded-alloc-gcore", _service_ref("other"), fail="FAIL_OPEN"))
    eventually(lambda: wasm_lab.plugins().get("mesh/bad", {}).get("failOpen"), "FAIL_OPEN in the dump", LOAD_TIMEOUT)
    eventually(lambda: wasm_lab.loaded("mesh/bad", "unbounded-alloc-gcore"), "the plugin's load", LOAD_TIMEOUT)
    answer = wasm_lab.request("other", "/fail-open")
    assert answer.status == 200 and answer.json()["path"] == "/fail-open"
    assert answer.seen("x-added") == "two"  # the plugins that work still run
    # The waypoint's log says why the request went on without it (a warning, beside the access log).
    log = wasm_lab.lab.logs / "waypoint-mesh.waypoint.log"
    eventually(lambda: "wasm plugin mesh/bad failed (FAIL_OPEN: skipped for this request)" in log.read_text(),
               "the skip in the waypoint's log")
    line = eventually(lambda: wasm_lab.access_lines("/fail-open"), "the request's access-log line")[-1]
    assert line["response_code"] == 200 and line["dst.workload"] == "other", line
    assert wasm_lab.waypoint_pid() == _first_pid[0]


def test_removing_every_plugin_makes_traffic_plain_again(wasm_lab):
    # Last: no plugin from here on.
    for file in ("add-header.yaml", "deny.yaml", "bad.yaml"):
        (wasm_lab.lab.lab.config_dir / file).unlink()
    eventually(lambda: wasm_lab.plugins() == {}, "the plugins' removal", LOAD_TIMEOUT)
    echo = wasm_lab.request("echo", "/plain-again")
    assert echo.status == 200 and echo.seen("x-added") is None and "x-plugin" not in echo.headers
    other = wasm_lab.request("other", "/plain-again")
    assert other.status == 200 and other.seen("x-added") is None
    assert wasm_lab.waypoint_pid() == _first_pid[0]
