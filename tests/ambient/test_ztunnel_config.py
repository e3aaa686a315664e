"""``ambient ztunnel-config``: tables from a sample config dump, and the fetch against a real server."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import socket

import pytest
import trio
import yaml

from ambient.ztunnel_config import (
    ConfigFetchError,
    Target,
    fetch_config_dump,
    logging_path,
    node_netns,
    parse_address,
    post_admin,
    register,
    render,
    select,
)
from lab.cli import LabError
from mesh.errors import UsageError
from mesh.http_admin import LogLevels, ProxyAdmin
from ztunnel.admin import Response, serve_http

# A dump in the shape of Istio's ztunnel (istioctl's configdump types), with our additions
# (node, local, error, connections); tests/ztunnel/test_dump.py checks ztunnel writes this shape.
SAMPLE = {
    "node": "node-0",
    "workloads": [
        {"uid": "Kubernetes//Pod/shop/web-0", "name": "web-0", "namespace": "shop", "serviceAccount": "web",
         "node": "node-0", "workloadIps": ["10.244.0.11"], "protocol": "HBONE",
         "waypoint": {"destination": "shop/wp"}, "local": True},
        {"uid": "Kubernetes//Pod/shop/client", "name": "client", "namespace": "shop", "serviceAccount": "client",
         "node": "node-1", "workloadIps": ["10.244.1.10"], "protocol": "HBONE", "local": False},
        {"uid": "Kubernetes//Pod/legacy/db", "name": "db", "namespace": "legacy", "serviceAccount": "default",
         "node": "node-0", "workloadIps": [], "protocol": "TCP", "local": True},
    ],
    "services": [
        {"name": "web", "namespace": "shop", "hostname": "web.shop.svc.cluster.local", "vips": ["/10.96.0.10"],
         "ports": {"80": 8080}, "endpoints": {"a": {}, "b": {}}, "waypoint": {"destination": "shop/wp"}},
        {"name": "db", "namespace": "legacy", "hostname": "db.legacy.svc.cluster.local", "vips": [],
         "ports": {"5432": 5432}, "endpoints": {}},
    ],
    "policies": [
        {"name": "allow-client", "namespace": "shop", "scope": "WorkloadSelector", "action": "Allow",
         "rules": [[[{"principals": [{"Exact": "cluster.local/ns/shop/sa/client"}]}]]]},
        {"name": "deny-all", "namespace": "istio-system", "scope": "Global", "action": "Deny", "rules": []},
    ],
    "certificates": [
        {"identity": "spiffe://cluster.local/ns/shop/sa/web", "state": "Available",
         "certChain": [{"pem": "", "serialNumber": "1a2b", "validFrom": "2026-01-01T00:00:00+00:00",
                        "expirationTime": "2026-01-02T00:00:00+00:00"}],
         "rootCerts": [{"pem": "", "serialNumber": "1", "validFrom": "2025-01-01T00:00:00+00:00",
                        "expirationTime": "2035-01-01T00:00:00+00:00"}], "error": None},
        {"identity": "spiffe://cluster.local/ns/legacy/sa/default", "state": "Unavailable", "certChain": [],
         "rootCerts": [], "error": "CA refused: token expired"},
    ],
    "connections": [
        {"direction": "inbound", "pod": "shop/web-0", "source": "10.244.1.10:40000",
         "destination": "10.244.0.11:8080", "source_identity": "spiffe://cluster.local/ns/shop/sa/client",
         "destination_identity": "spiffe://cluster.local/ns/shop/sa/web", "protocol": "HBONE",
         "policy": "shop/allow-client", "bytes_sent": 1200, "bytes_received": 80, "duration_seconds": 75.5},
        {"direction": "outbound", "pod": "legacy/db", "source": "10.244.0.12:50000",
         "destination": "93.184.216.34:443", "source_identity": None, "destination_identity": None,
         "protocol": "TCP", "policy": None, "bytes_sent": 0, "bytes_received": 0, "duration_seconds": 1.25},
    ],
}
NOW = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)


def lines(text: str) -> list[str]:
    return text.splitlines()


def test_workloads_table():
    assert lines(render("workloads", SAMPLE)) == [
        "NAMESPACE  POD NAME  ADDRESS      NODE    WAYPOINT  PROTOCOL",
        "legacy     db        None         node-0  None      TCP",
        "shop       client    10.244.1.10  node-1  None      HBONE",
        "shop       web-0     10.244.0.11  node-0  shop/wp   HBONE",
    ]


def test_services_table():
    assert lines(render("services", SAMPLE)) == [
        "NAMESPACE  SERVICE NAME  SERVICE VIP  WAYPOINT  ENDPOINTS",
        "legacy     db            None         None      0",
        "shop       web           10.96.0.10   shop/wp   2",
    ]


def test_policies_table():
    assert lines(render("policies", SAMPLE)) == [
        "NAMESPACE     POLICY NAME   ACTION  SCOPE",
        "istio-system  deny-all      Deny    Global",
        "shop          allow-client  Allow   WorkloadSelector",
    ]


def test_certificates_table_with_validity_and_errors():
    assert lines(render("certificates", SAMPLE, now=NOW)) == [
        "CERTIFICATE NAME                             TYPE  STATUS       VALID CERT  SERIAL NUMBER  "
        "NOT AFTER                  NOT BEFORE",
        "spiffe://cluster.local/ns/legacy/sa/default  NA    Unavailable  false       NA             "
        "NA                         NA",
        "spiffe://cluster.local/ns/shop/sa/web        Leaf  Available    true        1a2b           "
        "2026-01-02T00:00:00+00:00  2026-01-01T00:00:00+00:00",
        "",
        "Errors:",
        "  spiffe://cluster.local/ns/legacy/sa/default: CA refused: token expired",
    ]
    later = NOW + dt.timedelta(days=2)
    assert "Available    false" in render("certificates", SAMPLE, now=later)
    naive = {"certificates": [{**SAMPLE["certificates"][0], "certChain": [
        {"serialNumber": "1a2b", "validFrom": "2026-01-01T00:00:00", "expirationTime": "2026-01-02T00:00:00"}]}]}
    # read as UTC
    assert "Available  true" in render("certificates", naive, now=NOW)


def test_connections_table():
    peer = "spiffe://cluster.local/ns/shop/sa/client"
    assert lines(render("connections", SAMPLE)) == [
        "NAMESPACE  POD    DIRECTION  SOURCE             DESTINATION        " + "PEER IDENTITY".ljust(len(peer)) +
        "  PROTOCOL  POLICY             SENT  RECEIVED  DURATION",
        "legacy     db     Outbound   10.244.0.12:50000  93.184.216.34:443  " + "-".ljust(len(peer)) +
        "  TCP       -                  0     0         1.2s",
        "shop       web-0  Inbound    10.244.1.10:40000  10.244.0.11:8080   " + peer +
        "  HBONE     shop/allow-client  1200  80        1m15s",
    ]


def test_filters():
    assert len(lines(render("workloads", SAMPLE, namespace="shop"))) == 3
    certificates = lines(render("certificates", SAMPLE, namespace="shop", now=NOW))
    assert len(certificates) == 2 and certificates[1].startswith("spiffe://cluster.local/ns/shop/")
    assert [c["pod"] for c in select("connections", SAMPLE, direction="outbound")] == ["legacy/db"]
    assert [c["pod"] for c in select("connections", SAMPLE, namespace="shop")] == ["shop/web-0"]
    assert lines(render("policies", SAMPLE, namespace="nowhere")) == ["NAMESPACE  POLICY NAME  ACTION  SCOPE"]


def test_all_is_every_table_in_order():
    text = render("all", SAMPLE, now=NOW)
    sections = text.split("\n\n")
    assert [s.splitlines()[0].split()[0] for s in sections if not s.startswith("Errors")] == \
        ["NAMESPACE", "NAMESPACE", "NAMESPACE", "CERTIFICATE", "NAMESPACE"]
    everything = select("all", SAMPLE, namespace="legacy")
    assert everything["node"] == "node-0"
    assert [w["name"] for w in everything["workloads"]] == ["db"]


def test_a_sparse_dump_still_renders():
    text = render("all", {"node": "n", "workloads": [{"name": "x"}], "connections": None})
    assert "x" in text


def test_parse_address():
    assert parse_address("127.0.0.1:15000") == ("127.0.0.1", 15000)
    assert parse_address("[::1]:15000") == ("::1", 15000)
    for bad in ("15000", "host:", "host:0", "host:http"):
        with pytest.raises(UsageError, match="--admin-address"):
            parse_address(bad)


def test_a_target_names_its_address_with_ipv6_hosts_in_brackets():
    assert Target("::1", 15000).description == "ztunnel admin at [::1]:15000"
    in_node = Target("10.0.0.1", 15000, where="in node node-0")
    assert in_node.description == "ztunnel admin at 10.0.0.1:15000 in node node-0"


def test_node_netns_comes_from_the_lab_status():
    status = {"lab": "demo", "nodes": [{"name": "node-0", "netns": "amb-demo.node-0"},
                                       {"name": "node-1", "netns": "amb-demo.node-1"}]}
    assert node_netns(status, "node-1") == "amb-demo.node-1"
    with pytest.raises(LabError, match="no node node-7 in lab 'demo'; its nodes are node-0, node-1"):
        node_netns(status, "node-7")


# -- the command, end to end


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="ambient")
    register(top.add_subparsers(dest="command", required=True))
    return top


async def run_command(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    return await trio.to_thread.run_sync(args.func, args)


@pytest.fixture
async def admin_port(nursery):
    routes = {"/config_dump": lambda: Response.json(SAMPLE)}
    return await nursery.start(serve_http, ("127.0.0.1", 0), routes)


async def test_admin_address_end_to_end(admin_port, capsys):
    assert await run_command(["ztunnel-config", "workloads", "--admin-address", f"127.0.0.1:{admin_port}"]) == 0
    assert capsys.readouterr().out == render("workloads", SAMPLE) + "\n"
    assert await run_command(["ztunnel-config", "connections", "--admin-address", f"127.0.0.1:{admin_port}",
                              "-o", "json", "--direction", "inbound"]) == 0
    assert json.loads(capsys.readouterr().out) == [SAMPLE["connections"][0]]
    assert await run_command(["ztunnel-config", "certs", "--admin-address", f"127.0.0.1:{admin_port}",
                              "-n", "shop"]) == 0
    assert "legacy" not in capsys.readouterr().out
    assert await run_command(["zc", "services", "--admin-address", f"127.0.0.1:{admin_port}", "-o", "yaml",
                              "-n", "shop"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == [SAMPLE["services"][0]]
    assert await run_command(["zc", "workloads", "--admin-address", f"127.0.0.1:{admin_port}", "-o", "wide"]) == 0
    assert capsys.readouterr().out == render("workloads", SAMPLE, output="wide") + "\n"


async def test_refused_connection_is_one_clear_line():
    with socket.socket() as sock:  # bound, never listening: a connection to it is refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(ConfigFetchError) as caught:
            await trio.to_thread.run_sync(fetch_config_dump, Target("127.0.0.1", port))
    assert str(caught.value) == f"ztunnel admin at 127.0.0.1:{port}: connection refused; is ztunnel running there?"
    assert isinstance(caught.value, LabError)  # `ambient` prints it as one line


@pytest.mark.parametrize("response, message", [
    (Response.text(503, "not ready: no certificates\nmore"), "answered 503: not ready: no certificates"),
    (Response.text(200, "<html>"), "sent a config dump that is not JSON"),
    (Response.json([1, 2]), "sent a config dump that is not a JSON object"),
])
async def test_bad_answers_are_errors(nursery, response, message):
    port = await nursery.start(serve_http, ("127.0.0.1", 0), {"/config_dump": lambda: response})
    with pytest.raises(ConfigFetchError, match=message):
        await trio.to_thread.run_sync(fetch_config_dump, Target("127.0.0.1", port))


@pytest.mark.skipif(os.geteuid() != 0, reason="setns needs CAP_SYS_ADMIN")
async def test_fetch_from_a_netns_runs_in_a_thread_that_enters_it(admin_port):
    own = os.readlink("/proc/thread-self/ns/net")
    target = Target("127.0.0.1", admin_port, netns_path="/proc/self/ns/net", where="in node test")
    assert await trio.to_thread.run_sync(fetch_config_dump, target) == SAMPLE
    assert os.readlink("/proc/thread-self/ns/net") == own


async def test_a_missing_netns_says_so(admin_port):
    target = Target("127.0.0.1", admin_port, netns_path="/nonexistent/netns/amb-x.node-0")
    with pytest.raises(ConfigFetchError, match="amb-x.node-0 does not exist: is the lab up"):
        await trio.to_thread.run_sync(fetch_config_dump, target)


def test_node_of_a_lab_that_is_not_running(tmp_path, monkeypatch):
    monkeypatch.setenv("AMBIENT_LAB_ROOT", str(tmp_path))
    args = parser().parse_args(["ztunnel-config", "all", "--node", "node-0", "--lab", "nolab"])
    with pytest.raises(LabError, match="lab 'nolab' is not running"):
        args.func(args)


def test_node_from_the_lab_status(tmp_path, monkeypatch):
    monkeypatch.setenv("AMBIENT_LAB_ROOT", str(tmp_path))
    (tmp_path / "fake").mkdir()
    status = {"lab": "fake", "nodes": [{"name": "node-0", "netns": "amb-fake.node-0"}]}
    (tmp_path / "fake" / "status.json").write_text(json.dumps(status))
    args = parser().parse_args(["ztunnel-config", "workloads", "--node", "node-3", "--lab", "fake"])
    with pytest.raises(LabError, match="no node node-3 in lab 'fake'"):
        args.func(args)


def test_a_lab_with_an_admin_address_alone_is_a_usage_error():
    args = parser().parse_args(["ztunnel-config", "workloads", "--name", "x", "--admin-address", "127.0.0.1:15000"])
    with pytest.raises(UsageError, match="--name: not with --admin-address alone"):
        args.func(args)


def lab_status(root, name: str, nodes: list[dict]) -> None:
    (root / name).mkdir()
    (root / name / "status.json").write_text(json.dumps({"lab": name, "nodes": nodes}))


ZTUNNEL_LESS = {"name": "node-0", "netns": "amb-fake.node-0", "components": []}
WITH_ZTUNNEL = {"name": "node-1", "netns": "amb-fake.node-1", "components": [{"name": "ztunnel-node-1"}]}


@pytest.mark.parametrize(("argv", "env", "where"), [
    (["--name", "fake"], {}, "in node node-1 of lab 'fake'"),  # the first node with a ztunnel
    (["--lab", "fake"], {}, "in node node-1 of lab 'fake'"),  # waypoint's spelling, kept
    ([], {"AMBIENT_LAB": "fake"}, "in node node-1 of lab 'fake'"),
    (["--node", "node-0"], {"AMBIENT_LAB": "fake"}, "in node node-0 of lab 'fake'"),
    (["--admin-address", "10.0.0.1:15000"], {"AMBIENT_LAB": "fake"}, ""),  # an address alone: no lab
])
def test_the_lab_s_ztunnel_is_found_without_node(tmp_path, monkeypatch, argv, env, where):
    from ambient.ztunnel_config import resolve_target

    monkeypatch.setenv("AMBIENT_LAB_ROOT", str(tmp_path))
    monkeypatch.delenv("AMBIENT_LAB", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    lab_status(tmp_path, "fake", [ZTUNNEL_LESS, WITH_ZTUNNEL])
    lab_status(tmp_path, "other", [WITH_ZTUNNEL])
    target = resolve_target(parser().parse_args(["ztunnel-config", "workloads", *argv]))
    assert target.where == where
    assert target.port == 15000


def test_without_a_lab_the_default_address_is_asked(tmp_path, monkeypatch):
    from ambient.ztunnel_config import resolve_target

    monkeypatch.setenv("AMBIENT_LAB_ROOT", str(tmp_path))
    monkeypatch.delenv("AMBIENT_LAB", raising=False)
    target = resolve_target(parser().parse_args(["ztunnel-config", "workloads"]))
    assert (target.host, target.port, target.netns_path) == ("127.0.0.1", 15000, None)


def test_a_lab_without_ztunnels_says_so(tmp_path, monkeypatch):
    from ambient.ztunnel_config import resolve_target

    monkeypatch.setenv("AMBIENT_LAB_ROOT", str(tmp_path))
    lab_status(tmp_path, "fake", [ZTUNNEL_LESS])
    with pytest.raises(ConfigFetchError, match="no node of lab 'fake' runs a ztunnel"):
        resolve_target(parser().parse_args(["ztunnel-config", "workloads", "--name", "fake"]))


# -- zc log: ztunnel's POST /logging, as istioctl's `zc log`


@pytest.mark.parametrize(("levels", "reset", "path"), [
    (None, False, "/logging"),
    (["debug"], False, "/logging?level=debug"),
    (["ambient.ztunnel=debug", "info"], False, "/logging?level=ambient.ztunnel=debug,info"),
    (["a:trace"], True, "/logging?reset&level=a:trace"),
    (None, True, "/logging?reset"),
])
def test_logging_path_is_istioctl_s_request(levels, reset, path):
    assert logging_path(levels, reset) == path


@pytest.fixture
async def logging_port(nursery):
    """A real ProxyAdmin's /logging over the levels of a logger tree of the test's own."""
    levels = LogLevels(logging.getLogger("zc-log-test"))
    admin = ProxyAdmin(view=None, log_levels=levels, name="ztunnel")  # type: ignore[arg-type] - /logging only
    port = await nursery.start(serve_http, ("127.0.0.1", 0), {"/logging": admin.admin_routes()["/logging"]})
    yield port
    levels.change("", reset=True)


async def test_zc_log_reads_and_sets_the_levels_live(logging_port, capsys):
    where = ["--admin-address", f"127.0.0.1:{logging_port}"]
    assert await run_command(["zc", "log", *where]) == 0
    initial = capsys.readouterr().out
    assert initial.startswith("current log level is ")
    assert await run_command(["zc", "log", *where, "--level", "zc-log-test.proxy=debug", "--level", "error"]) == 0
    assert capsys.readouterr().out == "current log level is zc-log-test.proxy=debug,error\n"
    assert logging.getLogger("zc-log-test.proxy").level == logging.DEBUG
    assert await run_command(["zc", "log", *where, "--reset"]) == 0
    assert capsys.readouterr().out == initial
    assert logging.getLogger("zc-log-test.proxy").level == logging.NOTSET


def test_zc_log_refuses_a_bad_level_as_a_usage_error():
    from tests.ambient.test_cli_habits import ambient

    done = ambient("zc", "log", "--level", "info", "--level", "proxy=loud")
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (
        "ambient ztunnel-config log: error: argument --level: level 'proxy=loud' is invalid; say LEVEL or "
        "NAME=LEVEL, LEVEL one of off|error|warn|info|debug|trace")


async def test_zc_log_from_nothing_listening_is_one_line():
    with socket.socket() as sock:  # bound, never listening: a connection to it is refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(ConfigFetchError) as error:
            await trio.to_thread.run_sync(post_admin, Target("127.0.0.1", port), "/logging", 2.0)
    assert str(error.value) == f"ztunnel admin at 127.0.0.1:{port}: connection refused; is ztunnel running there?"


async def test_zc_log_in_a_missing_netns_says_so():
    with pytest.raises(ConfigFetchError, match=r"^/run/netns/amb-none\.node-9 does not exist: is the lab up\?$"):
        post_admin(Target("127.0.0.1", 15000, "/run/netns/amb-none.node-9"), "/logging", 1.0)
