"""The data paths the bench compares: one Kubernetes namespace each, one row of the report each.

Every path has the same two pods: `server` on node-1 (nginx answering a fixed 6-byte body on
8080, `iperf3 -s` on 5201) and `client` on node-0 (`sleep infinity`; the load generators run in it
with `ambient exec`). A path says how the client's connections reach the server:

- `Direct`: an un-enrolled namespace; the client connects to the server pod's IP (plain TCP).
- `Stunnel`, `Haproxy` (`MtlsProxyPath`): an un-enrolled namespace; the client connects to a proxy in
  its own pod on 127.0.0.1, which opens mutual TLS 1.3 to the peer proxy in the server pod, which
  connects to nginx or iperf3 on 127.0.0.1 (the apps listen on loopback only, so nothing bypasses
  the proxies). Both proxies hold SPIFFE certificates from the lab's own CA, obtained at start by the
  proxy container itself (`ambient ca request` with its node's token, as the lab's ztunnels do), and
  check the peer's chain against the mesh root. They cannot check the peer's URI SAN (ztunnel does).
- `Ambient`: a namespace labelled `istio.io/dataplane-mode: ambient`; the client connects to the
  server pod's IP, eBPF capture hands the connection to node-0's ztunnel, HBONE carries it to
  node-1's ztunnel, which connects to the app.

Two L7 rows (issue #19), each with the same path rule, so both do the same work per request:
allow "/" and "/public/*", deny anything else (`DENIED_PATH` answers 403). They run the keep-alive
figure only (`figures`): an L7 proxy pools its upstream connections, so nginx's accepted-connection
check of the new-connections figure cannot hold, and bulk bytes are not what an L7 proxy is for.

- `Waypoint`: an ambient namespace with a workload waypoint (a Gateway of class istio-waypoint,
  `istio.io/waypoint-for: workload`) used by the server pod (`istio.io/use-waypoint`), and an
  AuthorizationPolicy with targetRefs to that Gateway. The client still connects to the server pod's
  IP: node-0's ztunnel carries it as HBONE to the waypoint pod (the lab places that pod, it has no
  nodeName), whose proxy applies the policy per request and opens its own pooled HBONE to node-1's
  ztunnel, which connects to the app. Accounted: both ztunnels and the waypoint (`alone`: each
  side's CPU is also given by itself, the waypoint's above all).
- `HaproxyL7`: the haproxy pair in `mode http` (same certificates, mTLS 1.3), the path ACL on the
  server side, connections to the next hop reused (`http-reuse always`).

A path is a frozen dataclass: `manifests()` (pure: the YAML documents), `prepare()` (writes its
config files into the lab's YAML directory before `lab up`), `http_endpoint`/`iperf_endpoint` (what
the load generator connects to, from inside the client pod) and `accounted()` (the cgroups of the
proxy processes whose CPU and memory the report counts). A new row (a waypoint, haproxy in http
mode) is a subclass and one more entry in `PATHS`.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from lab.components import WAYPOINT_POD_SUFFIX
from lab.topology import PodSpec, plan_lab
from mesh.identity import DEFAULT_TRUST_DOMAIN
from mesh.resources import WAYPOINT_CLASS

from .lab import NODES, LabLayout

CLIENT_NODE, SERVER_NODE = NODES
HTTP_PORT = 8080  # nginx
STATUS_PORT = 8081  # nginx stub_status, on 127.0.0.1 only: the bench counts nginx's connections with it
IPERF_PORT = 5201
HTTP_BODY = "hello\n"
# What a run measures: keep-alive requests, new connections, bulk bytes (`measure.Runner.measure`).
FIGURES = ("keepalive", "conn", "bulk")
L7_FIGURES = ("keepalive",)
# The L7 rule both L7 rows apply, as Istio writes it (`to.operation.paths`: exact, or a prefix with
# "*"); wrk requests "/". Before the rounds, the bench checks "/" answers 200 and DENIED_PATH 403.
ALLOWED_PATHS = ("/", "/public/*")
DENIED_PATH = "/private"
WAYPOINT_GATEWAY = "waypoint"


@dataclass(frozen=True)
class Forward:
    """One service of a proxy pair: the client side on 127.0.0.1:local, the server side (TLS) on the
    pod's IP:tls, the app on 127.0.0.1:app."""

    name: str
    local: int
    tls: int
    app: int


FORWARDS = (Forward("http", 18080, 8443, HTTP_PORT), Forward("iperf", 15201, 5443, IPERF_PORT))
# Readiness: checked every 0.1 s until the first success (the lab's startup rule), then once an hour,
# so that nothing probes the pods while the bench measures. The probe only looks for a listening
# socket (`ss`): it never connects, so iperf3 -s (one test at a time) never sees it.
PROBE_PERIOD_S = 3600
CERT_ATTEMPTS = 120  # x 0.5 s: the proxy's wait for the CA at start (pods start beside the mesh)


@dataclass(frozen=True)
class Endpoint:
    """host:port as the load generator in the client pod sees it."""

    host: str
    port: int

    def url(self, path: str = "/") -> str:
        return f"http://{self.host}:{self.port}{path}"


def listening_probe(*ports: int) -> dict:
    script = "; ".join(f"ss -Hltn 'sport = :{port}' | grep -q . || exit 1" for port in ports)
    return {"exec": {"command": ["sh", "-c", script]}, "periodSeconds": PROBE_PERIOD_S}


def container(name: str, command: list[str], probe_ports: tuple[int, ...] = ()) -> dict:
    spec: dict = {"name": name, "command": command}
    if probe_ports:
        spec["readinessProbe"] = listening_probe(*probe_ports)
    return spec


def pod(namespace: str, name: str, node: str, containers: list[dict], labels: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": name, **(labels or {})}},
            "spec": {"nodeName": node, "containers": containers}}


def nginx_conf(prefix: Path, listen: str) -> str:
    """nginx in the foreground, one worker, no access log, all its files under `prefix`; keep-alive
    connections are never closed by a request count (nginx closes after 1,000 by default)."""
    body = HTTP_BODY.replace("\n", "\\n")  # nginx's escape in a quoted string
    temp = "\n".join(f"    {kind}_temp_path {prefix}/{kind}_temp;"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log stderr warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    keepalive_requests 1000000000;
    keepalive_timeout 120s;
{temp}
    server {{
        listen {listen}:{HTTP_PORT} backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "{body}";
        }}
    }}
    server {{
        listen 127.0.0.1:{STATUS_PORT};
        location = /status {{
            stub_status;
        }}
    }}
}}
"""


@dataclass(frozen=True)
class DataPath:
    name: str
    namespace: str
    title: str  # one line for the report
    enrolled: bool = False  # labelled istio.io/dataplane-mode: ambient
    proxy: str | None = None  # what carries the traffic; None: nothing but the kernel
    figures: tuple[str, ...] = FIGURES  # what the bench measures on this path
    l7: bool = False  # applies the L7 rule (ALLOWED_PATHS): checked before measuring, its own report section
    warms_up: bool = False  # answers 503 for a while after it is up (a WasmPlugin loading): the check waits
    alone: tuple[str, ...] = ()  # accounted sides whose CPU per unit is also given by itself

    # -- the pods (pure)

    @property
    def app_address(self) -> str:
        """Where nginx and iperf3 listen in the server pod."""
        return "0.0.0.0"

    def manifests(self, layout: LabLayout) -> list[dict]:
        metadata: dict = {"name": self.namespace}
        if self.enrolled:
            metadata["labels"] = {"istio.io/dataplane-mode": "ambient"}
        return [{"apiVersion": "v1", "kind": "Namespace", "metadata": metadata},
                pod(self.namespace, "server", SERVER_NODE, self.server_containers(layout), self.server_labels()),
                pod(self.namespace, "client", CLIENT_NODE, self.client_containers(layout))]

    def server_labels(self) -> dict:
        return {}

    def extra_pods(self) -> tuple[str, ...]:
        """Pods the lab adds to this namespace without a nodeName (a waypoint's): it places them."""
        return ()

    def nginx_prefix(self, layout: LabLayout) -> Path:
        return layout.config_dir / f"nginx-{self.namespace}"

    def server_containers(self, layout: LabLayout) -> list[dict]:
        """The apps first: `ambient exec` joins the first container's cgroup, never a proxy's."""
        prefix = self.nginx_prefix(layout)
        return [container("nginx", ["nginx", "-p", f"{prefix}/", "-c", f"{prefix}.conf", "-e", "stderr"],
                          (HTTP_PORT, STATUS_PORT)),
                container("iperf3", ["iperf3", "-s", "-B", self.app_address, "-p", str(IPERF_PORT)], (IPERF_PORT,))]

    def client_containers(self, layout: LabLayout) -> list[dict]:
        return [container("client", ["sleep", "infinity"])]

    # -- before `lab up`

    def prepare(self, layout: LabLayout, server_ip: str) -> None:
        """Write this path's config files into the lab's YAML directory."""
        prefix = self.nginx_prefix(layout)
        prefix.mkdir(exist_ok=True)
        Path(f"{prefix}.conf").write_text(nginx_conf(prefix, self.app_address))

    # -- what the bench drives and counts

    def http_endpoint(self, server_ip: str) -> Endpoint:
        return Endpoint(server_ip, HTTP_PORT)

    def iperf_endpoint(self, server_ip: str) -> Endpoint:
        return Endpoint(server_ip, IPERF_PORT)

    def accounted(self, layout: LabLayout) -> dict[str, Path]:
        """{"client": cgroup, "server": cgroup} of the proxy on each side; empty without a proxy."""
        return {}


@dataclass(frozen=True)
class Direct(DataPath):
    name: str = "direct"
    namespace: str = "dp-direct"
    title: str = "plain TCP, client pod -> server pod IP (not in the mesh)"


@dataclass(frozen=True)
class Ambient(DataPath):
    name: str = "ambient"
    namespace: str = "dp-ambient"
    title: str = "client pod -> server pod IP, captured: ztunnel node-0 -> HBONE (mTLS) -> ztunnel node-1 -> app"
    enrolled: bool = True
    proxy: str | None = "ztunnel"

    def accounted(self, layout: LabLayout) -> dict[str, Path]:
        return {"client": layout.ztunnel_cgroup(CLIENT_NODE), "server": layout.ztunnel_cgroup(SERVER_NODE)}


def spiffe_id(namespace: str, service_account: str = "default") -> str:
    return f"spiffe://{DEFAULT_TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}"


@dataclass(frozen=True)
class MtlsProxyPath(DataPath):
    """An explicit proxy pair with mutual TLS 1.3: a proxy container in each pod (after the app)."""

    @property
    def app_address(self) -> str:
        return "127.0.0.1"

    @property
    def proxy_container(self) -> str:
        """The proxy's container in each pod, named after the proxy."""
        return self.proxy or self.name

    @property
    def forwards(self) -> tuple[Forward, ...]:
        """The services the pair carries: HTTP, and iperf3 for the bulk figure."""
        return FORWARDS if "bulk" in self.figures else FORWARDS[:1]

    def cert_dir(self, layout: LabLayout, side: str) -> Path:
        return layout.config_dir / "certs" / f"{self.namespace}-{side}"

    def config_path(self, layout: LabLayout, side: str) -> Path:
        raise NotImplementedError

    def render(self, layout: LabLayout, side: str, server_ip: str) -> str:
        """The proxy's config file for `side` ("client" or "server")."""
        raise NotImplementedError

    def proxy_argv(self, config: Path) -> list[str]:
        raise NotImplementedError

    def after_certificate(self, cert_dir: Path) -> str:
        """Shell run once the certificate is there, before the proxy starts."""
        return ""

    def proxy_command(self, layout: LabLayout, side: str) -> list[str]:
        """Obtain the side's SPIFFE certificate from the lab's CA with a workload token for it (which
        ``Lab.up`` puts where the pod can read it once the CA exists; retrying meanwhile, bounded), then
        exec the proxy. Not with the node's token: pods cannot see it (lab.isolation)."""
        certs = self.cert_dir(layout, side)
        request = " ".join(shlex.quote(arg) for arg in (
            layout.python, "-m", "ambient", "ca", "request", "--server", layout.ca_address,
            "--server-name", layout.ca_server_name, "--root", str(layout.pod_ca_root),
            "--identity", spiffe_id(self.namespace), "--out", str(certs)))
        token = shlex.quote(str(layout.pod_token(self.namespace)))
        proxy = " ".join(shlex.quote(arg) for arg in self.proxy_argv(self.config_path(layout, side)))
        script = (f"umask 077; n=0; "
                  f"until [ -s {token} ] && AMBIENT_CA_TOKEN=\"$(cat {token})\" {request} >/dev/null; do "
                  f"n=$((n+1)); if [ $n -ge {CERT_ATTEMPTS} ]; then echo 'no certificate' >&2; exit 1; fi; "
                  f"sleep 0.5; done; {self.after_certificate(certs)}exec {proxy}")
        return ["sh", "-c", script]

    def server_containers(self, layout: LabLayout) -> list[dict]:
        listen = tuple(f.tls for f in self.forwards)
        return [*super().server_containers(layout),
                container(self.proxy_container, self.proxy_command(layout, "server"), listen)]

    def client_containers(self, layout: LabLayout) -> list[dict]:
        listen = tuple(f.local for f in self.forwards)
        return [*super().client_containers(layout),
                container(self.proxy_container, self.proxy_command(layout, "client"), listen)]

    def prepare(self, layout: LabLayout, server_ip: str) -> None:
        super().prepare(layout, server_ip)
        for side in ("client", "server"):
            self.cert_dir(layout, side).mkdir(parents=True, exist_ok=True)
            self.config_path(layout, side).write_text(self.render(layout, side, server_ip))

    def http_endpoint(self, server_ip: str) -> Endpoint:
        return Endpoint("127.0.0.1", FORWARDS[0].local)

    def iperf_endpoint(self, server_ip: str) -> Endpoint:
        return Endpoint("127.0.0.1", FORWARDS[1].local)

    def accounted(self, layout: LabLayout) -> dict[str, Path]:
        return {side: layout.container_cgroup(self.namespace, side, self.proxy_container)
                for side in ("client", "server")}


@dataclass(frozen=True)
class Stunnel(MtlsProxyPath):
    name: str = "stunnel"
    namespace: str = "dp-stunnel"
    title: str = "stunnel pair: 127.0.0.1 in the client pod -> mTLS 1.3 -> server pod -> 127.0.0.1 (explicit proxy)"
    proxy: str | None = "stunnel"

    def config_path(self, layout: LabLayout, side: str) -> Path:
        return layout.config_dir / f"stunnel-{self.namespace}-{side}.conf"

    def proxy_argv(self, config: Path) -> list[str]:
        return ["stunnel", str(config)]

    def render(self, layout: LabLayout, side: str, server_ip: str) -> str:
        certs = self.cert_dir(layout, side)
        # Global options before the first service are every service's defaults.
        lines = ["foreground = yes", "pid =", "syslog = no", "debug = 3",
                 "socket = l:TCP_NODELAY=1", "socket = r:TCP_NODELAY=1",
                 f"cert = {certs}/cert-chain.pem", f"key = {certs}/key.pem", f"CAfile = {layout.pod_ca_root}",
                 "verifyChain = yes", "requireCert = yes", "sslVersionMin = TLSv1.3"]
        for f in self.forwards:
            lines.append(f"\n[{f.name}]")
            if side == "client":
                lines += ["client = yes", f"accept = 127.0.0.1:{f.local}", f"connect = {server_ip}:{f.tls}"]
            else:
                lines += [f"accept = 0.0.0.0:{f.tls}", f"connect = 127.0.0.1:{f.app}"]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Haproxy(MtlsProxyPath):
    name: str = "haproxy"
    namespace: str = "dp-haproxy"
    title: str = "haproxy pair, mode tcp: 127.0.0.1 in the client pod -> mTLS 1.3 -> server pod -> 127.0.0.1"
    proxy: str | None = "haproxy"

    def config_path(self, layout: LabLayout, side: str) -> Path:
        return layout.config_dir / f"haproxy-{self.namespace}-{side}.cfg"

    def proxy_argv(self, config: Path) -> list[str]:
        return ["haproxy", "-db", "-f", str(config)]

    def after_certificate(self, cert_dir: Path) -> str:
        # haproxy reads the chain and the key from one file.
        pem = shlex.quote(str(cert_dir / "crt.pem"))
        return f"cat {shlex.quote(str(cert_dir / 'cert-chain.pem'))} {shlex.quote(str(cert_dir / 'key.pem'))} > {pem}; "

    def render(self, layout: LabLayout, side: str, server_ip: str) -> str:
        crt, root = self.cert_dir(layout, side) / "crt.pem", layout.pod_ca_root
        tls = f"crt {crt} ca-file {root} verify required ssl-min-ver TLSv1.3"
        lines = ["global", "    maxconn 4096", "    ssl-server-verify required", "",
                 "defaults", "    mode tcp", "    timeout connect 5s", "    timeout client 30s",
                 "    timeout server 30s"]
        for f in self.forwards:
            lines += ["", f"frontend {f.name}"]
            if side == "client":
                lines += [f"    bind 127.0.0.1:{f.local}", f"    default_backend {f.name}", "",
                          f"backend {f.name}", f"    server peer {server_ip}:{f.tls} ssl {tls}"]
            else:
                lines += [f"    bind 0.0.0.0:{f.tls} ssl {tls}", f"    default_backend {f.name}", "",
                          f"backend {f.name}", f"    server app 127.0.0.1:{f.app}"]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class HaproxyL7(Haproxy):
    """The haproxy pair in `mode http`: each side parses every request; the server side denies what the
    L7 rule does not allow (403) before it reaches nginx. Both sides keep their connections to the next
    hop open and reuse them for any request (`http-reuse always`), as the waypoint pools its upstreams."""

    name: str = "haproxy-l7"
    namespace: str = "dp-haproxy-l7"
    title: str = ("haproxy pair, mode http, path ACL: 127.0.0.1 in the client pod -> mTLS 1.3 (reused) -> "
                  "server pod -> 127.0.0.1 (reused)")
    figures: tuple[str, ...] = L7_FIGURES
    l7: bool = True
    alone: tuple[str, ...] = ("client", "server")

    def render(self, layout: LabLayout, side: str, server_ip: str) -> str:
        crt, root = self.cert_dir(layout, side) / "crt.pem", layout.pod_ca_root
        tls = f"crt {crt} ca-file {root} verify required ssl-min-ver TLSv1.3"
        lines = ["global", "    maxconn 4096", "    ssl-server-verify required", "",
                 "defaults", "    mode http", "    option http-keep-alive", "    timeout connect 5s",
                 "    timeout client 30s", "    timeout server 30s", "    timeout http-keep-alive 30s"]
        for f in self.forwards:
            lines += ["", f"frontend {f.name}"]
            if side == "client":
                lines += [f"    bind 127.0.0.1:{f.local}", f"    default_backend {f.name}", "",
                          f"backend {f.name}", "    http-reuse always",
                          f"    server peer {server_ip}:{f.tls} ssl {tls}"]
            else:
                lines += [f"    bind 0.0.0.0:{f.tls} ssl {tls}", f"    http-request deny if {haproxy_acl()}",
                          f"    default_backend {f.name}", "",
                          f"backend {f.name}", "    http-reuse always", f"    server app 127.0.0.1:{f.app}"]
        return "\n".join(lines) + "\n"


def haproxy_acl(allowed: tuple[str, ...] = ALLOWED_PATHS) -> str:
    """The condition that denies what `allowed` (Istio's paths: exact, or a prefix ending in "*") does
    not allow: every term must hold, so a request is denied when it matches none of them."""
    terms = [f"!{{ path_beg {p[:-1]} }}" if p.endswith("*") else f"!{{ path {p} }}" for p in allowed]
    return " ".join(terms)


@dataclass(frozen=True)
class Waypoint(DataPath):
    name: str = "waypoint"
    namespace: str = "dp-waypoint"
    title: str = ("client pod -> server pod IP, captured: ztunnel node-0 -> HBONE -> waypoint (L7 policy) -> "
                  "HBONE -> ztunnel node-1 -> app")
    enrolled: bool = True
    proxy: str | None = "waypoint"
    figures: tuple[str, ...] = L7_FIGURES
    l7: bool = True
    alone: tuple[str, ...] = ("client", "waypoint", "server")
    gateway: str = WAYPOINT_GATEWAY

    def server_labels(self) -> dict:
        return {"istio.io/use-waypoint": self.gateway}

    def extra_pods(self) -> tuple[str, ...]:
        return (f"{self.gateway}{WAYPOINT_POD_SUFFIX}",)

    def manifests(self, layout: LabLayout) -> list[dict]:
        """A workload waypoint (only the server pod uses it: the client reaches it at its pod IP, as on
        the ambient row), and the L7 rule as an ALLOW policy on the waypoint Gateway."""
        gateway = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                   "metadata": {"name": self.gateway, "namespace": self.namespace,
                                "labels": {"istio.io/waypoint-for": "workload"}},
                   "spec": {"gatewayClassName": "istio-waypoint",
                            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}
        policy = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                  "metadata": {"name": "l7-paths", "namespace": self.namespace},
                  "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                           "name": self.gateway}],
                           "action": "ALLOW",
                           "rules": [{"to": [{"operation": {"paths": list(ALLOWED_PATHS)}}]}]}}
        return [*super().manifests(layout), gateway, policy]

    def accounted(self, layout: LabLayout) -> dict[str, Path]:
        return {"client": layout.ztunnel_cgroup(CLIENT_NODE), "waypoint": layout.waypoint_cgroup(self.namespace,
                                                                                                  self.gateway),
                "server": layout.ztunnel_cgroup(SERVER_NODE)}


# The header plugin of the waypoint-wasm row, as `make wasm-plugins` builds it (a prerequisite of `make bench`).
WASM_PLUGIN = Path(__file__).resolve().parents[2] / "build" / "wasm-plugins" / "add-header-gcore.wasm"


@dataclass(frozen=True)
class WaypointWasm(Waypoint):
    """The waypoint row with one WasmPlugin more on its Gateway: an AssemblyScript plugin (gcore's SDK) that adds
    a request header from its pluginConfig (issue #20). The same load, so the waypoint's own CPU per request with
    and without it, in the same run, is the plugin's cost."""

    name: str = "waypoint-wasm"
    namespace: str = "dp-waypoint-wasm"
    title: str = ("the waypoint row with a WasmPlugin on its Gateway (add-header, AssemblyScript/gcore SDK): "
                  "client pod -> ztunnel -> waypoint (L7 policy, plugin) -> ztunnel -> app")
    warms_up: bool = True

    def manifests(self, layout: LabLayout) -> list[dict]:
        plugin = {"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
                  "metadata": {"name": "add-header", "namespace": self.namespace},
                  "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                           "name": self.gateway}],
                           "url": f"file://{WASM_PLUGIN}",
                           "pluginConfig": {"header": "x-bench", "value": "from-plugin"}}}
        return [*super().manifests(layout), plugin]


# The rows of the report, in this order; ratios are to BASELINE. The L7 rows' own section compares
# L7_SUBJECT with L7_BASELINE.
PATHS: tuple[DataPath, ...] = (Direct(), Stunnel(), Haproxy(), Ambient(), HaproxyL7(), Waypoint(), WaypointWasm())
WASM_SUBJECT = "waypoint-wasm"  # compared with L7_SUBJECT: the plugin's cost
BASELINE = "stunnel"
L7_SUBJECT, L7_BASELINE = "waypoint", "haproxy-l7"


def manifests(paths: tuple[DataPath, ...], layout: LabLayout) -> list[dict]:
    return [doc for path in paths for doc in path.manifests(layout)]


def planned_pods(docs: list[dict], lab_name: str, nodes: int = len(NODES)) -> dict[tuple[str, str], tuple[str, str]]:
    """Each pod's (node, IP) as the lab will give them: the lab plans pods in the order of their keys and
    hands out each node's lowest free address (`lab.topology.plan_lab`); the bench checks it after `lab
    up`. A waypoint Gateway's pod (`<gateway>-waypoint`, no nodeName) goes where the plan puts it: the
    node with the fewest pods so far, the lowest on a tie."""
    pods = [PodSpec(d["metadata"]["namespace"], d["metadata"]["name"], int(d["spec"]["nodeName"].split("-")[1]))
            for d in docs if d["kind"] == "Pod"]
    pods += [PodSpec(d["metadata"]["namespace"], f"{d['metadata']['name']}{WAYPOINT_POD_SUFFIX}")
             for d in docs if d["kind"] == "Gateway" and d["spec"].get("gatewayClassName") == WAYPOINT_CLASS]
    plan = plan_lab(lab_name, sorted(pods, key=lambda pod: (pod.namespace, pod.name)), nodes)
    return {(p.namespace, p.name): (f"node-{p.node}", str(IPv4Address(p.ip))) for p in plan.pods}


def planned_ips(docs: list[dict], lab_name: str, nodes: int = len(NODES)) -> dict[tuple[str, str], str]:
    """Each pod's IP as `planned_pods` plans it."""
    return {key: ip for key, (_node, ip) in planned_pods(docs, lab_name, nodes).items()}
