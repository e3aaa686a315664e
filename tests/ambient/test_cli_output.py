"""Listings the way kubectl prints them (issue #21, "The CLI"): ``-o json|yaml|wide`` on every
listing, ``-n``/``-A``, kubectl's AGE, and the configuration errors ``lab status`` shows. The
formatter and the renderers are pure (tested as tables); the commands run as processes against a
fake lab (``tests.ambient.test_cli_habits.fake_lab``) and a configuration directory."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from ambient.cli import EXIT_USAGE
from ambient.ztunnel_config import render as render_zc
from lab.listing import Column, format_listing, human_age, parse_timestamp
from lab.status_view import render as render_status
from tests.ambient.test_cli_habits import ambient, fake_lab
from tests.ambient.test_ztunnel_config import SAMPLE

NOW = dt.datetime(2026, 12, 7, 12, 0, 0, tzinfo=dt.UTC)


# -- the formatter


@pytest.mark.parametrize(("seconds", "age"), [
    (-5, "<invalid>"), (-0.5, "0s"), (0, "0s"), (5, "5s"), (119, "119s"), (120, "2m"), (125, "2m5s"),
    (599, "9m59s"), (600, "10m"), (3 * 3600 - 1, "179m"), (3 * 3600, "3h"), (3 * 3600 + 60, "3h1m"),
    (8 * 3600, "8h"), (47 * 3600, "47h"), (48 * 3600, "2d"), (49 * 3600, "2d1h"), (8 * 86400, "8d"),
    (729 * 86400, "729d"), (730 * 86400, "2y"), (731 * 86400, "2y1d"), (8 * 365 * 86400, "8y"),
])
def test_human_age_is_kubectl_s(seconds, age):
    assert human_age(NOW - dt.timedelta(seconds=seconds), NOW) == age


def test_an_age_without_a_timestamp_is_unknown_as_kubectl_says():
    assert human_age(None, NOW) == "<unknown>"
    assert parse_timestamp("2026-12-07T11:59:00Z") == NOW - dt.timedelta(minutes=1)
    assert parse_timestamp("2026-12-07T11:59:00") == NOW - dt.timedelta(minutes=1)  # naive: UTC
    assert [parse_timestamp(v) for v in (None, "", "yesterday", 3)] == [None] * 4


ITEMS = [{"name": "a", "ip": "10.0.0.1"}, {"name": "bb", "ip": "10.0.0.22"}]
COLUMNS = [Column("NAME", lambda i: i["name"]), Column("IP", lambda i: i["ip"], wide=True)]


def test_one_formatter_for_table_wide_json_and_yaml():
    assert format_listing(ITEMS, COLUMNS, "table") == "NAME\na\nbb"
    assert format_listing(ITEMS, COLUMNS, "wide") == "NAME  IP\na     10.0.0.1\nbb    10.0.0.22"
    assert json.loads(format_listing(ITEMS, COLUMNS, "json")) == ITEMS
    assert yaml.safe_load(format_listing(ITEMS, COLUMNS, "yaml")) == ITEMS
    assert format_listing([], COLUMNS, "json") == "[]"


# -- lab status, rendered


def pod(namespace: str, name: str, **extra) -> dict:
    return {"namespace": namespace, "name": name, "node": "node-0", "ip": "10.244.0.2", "ready": "1/1",
            "all_ready": True, "state": "Running", "restarts": 0, "dataplane_mode": "ambient", "message": None,
            "capture": "enrolled", "netns": f"amb-t.{namespace}.{name}", "service_account": "web",
            "containers": [{"name": "c"}], **extra}


STATUS = {
    "lab": "t", "config_dir": "/cfg", "state_dir": "/state",
    "controlplane": {"state": "running", "address": "172.30.0.1:15012", "restarts": 0},
    "nodes": [{"name": "node-0", "netns": "amb-t.node-0", "fabric_ip": "172.30.0.2", "pod_cidr": "10.244.0.0/24",
               "pods": 2, "components": [{"name": "ztunnel-node-0", "state": "running"}]}],
    "pods": [pod("shop", "web", created="2026-12-07T11:57:00Z"), pod("default", "curl")],
    "services": [{"namespace": "shop", "name": "web", "vip": "10.96.0.10", "created": "2026-12-05T12:00:00Z",
                  "ports": [{"name": "http", "port": 80, "target_port": 8080, "protocol": "TCP"}]}],
    "waypoints": [],
}


def test_lab_status_has_kubectl_s_age_from_the_status_and_the_lab_s_start():
    text = render_status(STATUS, True, output="table", lab_started=NOW - dt.timedelta(hours=5), now=NOW)
    lines = text.splitlines()
    assert lines[0] == "Lab 't': running for 5h; config /cfg; state /state"
    assert lines[3].split() == ["NODE", "FABRIC", "IP", "POD", "CIDR", "PODS", "AGE", "COMPONENTS"]
    assert lines[4].split()[4] == "5h"
    pods = {line.split()[1]: line.split() for line in lines[6:9]}
    assert pods["POD"][7] == "AGE"
    assert (pods["web"][7], pods["curl"][7]) == ("3m", "<unknown>")
    assert lines[10].split() == ["NAMESPACE", "SERVICE", "VIP", "PORTS", "AGE"]
    assert lines[11].split()[-1] == "2d"


def test_lab_status_wide_adds_columns_and_n_keeps_one_namespace():
    text = render_status(STATUS, True, output="wide", namespace="shop", now=NOW)
    lines = text.splitlines()
    assert lines[6].endswith("SERVICE ACCOUNT  CONTAINERS  NETNS")
    assert lines[7].split()[-3:] == ["web", "c", "amb-t.shop.web"]
    assert len([line for line in lines if "curl" in line]) == 0
    assert lines[9].endswith("PORT NAMES") and lines[10].endswith("http")


def test_lab_status_as_data_is_the_status_with_the_same_rows():
    for output, load in (("json", json.loads), ("yaml", yaml.safe_load)):
        data = load(render_status(STATUS, False, output=output, namespace="default", now=NOW))
        assert [p["name"] for p in data["pods"]] == ["curl"]
        assert (data["services"], data["running"], data["config_errors"]) == ([], False, [])
        assert data["nodes"] == STATUS["nodes"]


def test_lab_status_lists_the_configuration_errors_it_holds():
    text = render_status(STATUS, True, output="table", config_errors=["/cfg/a.yaml:3: bad [AMB0001]"], now=NOW)
    assert text.splitlines()[-2:] == ["Configuration errors (1), as `ambient validate /cfg` reports them:",
                                      "  /cfg/a.yaml:3: bad [AMB0001]"]


# -- ztunnel-config, rendered


def test_zc_wide_adds_columns():
    lines = render_zc("workloads", SAMPLE, output="wide").splitlines()
    assert lines[0].split()[-3:] == ["STATUS", "SERVICE", "ACCOUNT"]
    assert render_zc("workloads", SAMPLE).splitlines()[0].split()[-1] == "PROTOCOL"
    services = render_zc("services", SAMPLE, output="wide").splitlines()
    assert services[0].split()[-2:] == ["HOSTNAME", "PORTS"]
    assert services[2].split()[-2:] == ["web.shop.svc.cluster.local", "80->8080"]
    policies = render_zc("policies", SAMPLE, output="wide", namespace="shop").splitlines()
    assert policies[1].split()[-2:] == ["false", "1"]


# -- the commands, as processes


@pytest.fixture
def lab_root():
    root = Path(tempfile.mkdtemp(prefix="ambient-cli-output-"))
    lock = fake_lab(root)
    yield root
    lock.release()
    shutil.rmtree(root)


def status_run(root: Path, *argv: str):
    return ambient("lab", "status", "--name", "t1", *argv, env={"AMBIENT_LAB_ROOT": str(root)})


def test_lab_status_output_formats(lab_root):
    table = status_run(lab_root)
    assert table.returncode == 0 and table.stderr == ""
    assert "AGE" in table.stdout.splitlines()[3]
    wide = status_run(lab_root, "-o", "wide")
    assert "SERVICE ACCOUNT" in wide.stdout and "amb-t1.default.a" in wide.stdout
    as_yaml = yaml.safe_load(status_run(lab_root, "-o", "yaml").stdout)
    as_json = json.loads(status_run(lab_root, "-o", "json").stdout)
    assert as_yaml == as_json and as_json["running"] is True and as_json["config_errors"] == []
    assert json.loads(status_run(lab_root, "-o", "json", "-n", "other").stdout)["pods"] == []
    assert json.loads(status_run(lab_root, "-o", "json", "-A").stdout)["pods"][0]["name"] == "a"


def test_lab_status_n_and_a_together_is_a_usage_error(lab_root):
    done = status_run(lab_root, "-n", "default", "-A")
    assert done.returncode == EXIT_USAGE
    assert done.stderr.splitlines()[-1] == ("ambient lab status: error: argument -A/--all-namespaces: "
                                            "not allowed with argument -n/--namespace")


def test_lab_status_shows_the_errors_of_its_configuration_as_validate_words_them(lab_root):
    config = lab_root / "config"
    (config / "bad.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports: 7\n")
    validate = ambient("validate", str(config))
    expected = validate.stdout.splitlines()
    assert validate.returncode == 1 and expected
    done = status_run(lab_root)
    assert (done.returncode, done.stderr) == (0, "")
    lines = done.stdout.splitlines()
    at = lines.index(f"Configuration errors ({len(expected)}), as `ambient validate {config}` reports them:")
    assert lines[at + 1:] == [f"  {line}" for line in expected]
    findings = json.loads(status_run(lab_root, "-o", "json").stdout)["config_errors"]
    assert findings == json.loads(ambient("validate", str(config), "-o", "json").stdout)["findings"]


def test_waypoint_list_as_data_and_wide(lab_root):
    config = lab_root / "config"
    assert ambient("waypoint", "apply", "--config", str(config), "-n", "shop").returncode == 0
    done = ambient("waypoint", "list", "--config", str(config), "-n", "shop", "-o", "json")
    entries = json.loads(done.stdout)
    assert [(e["namespace"], e["name"], e["for"]) for e in entries] == [("shop", "waypoint", "service")]
    assert yaml.safe_load(ambient("waypoint", "list", "--config", str(config), "-n", "shop", "-o", "yaml").stdout) \
        == entries
    assert json.loads(ambient("waypoint", "list", "--config", str(config), "-o", "json").stdout) == []
    wide = ambient("waypoint", "list", "--config", str(config), "-A", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAMESPACE", "NAME", "REVISION", "TRAFFIC", "TYPE", "PROGRAMMED", "POD", "READY",
                               "USED", "BY"]
    assert wide[1].split() == ["shop", "waypoint", "default", "service", "Unknown", "waypoint-waypoint", "0/1", "-"]


# -- gRPC's own log lines, off for the CLI's gRPC clients only


@pytest.mark.parametrize(("argv", "env", "quiet"), [
    (["ca", "request", "--server", "x:1"], None, True),
    (["--log-level", "info", "ca", "request"], None, True),
    (["--log-level", "debug", "ca", "request"], None, False),  # debugging: gRPC's lines too
    (["--log-level=debug", "ca", "request"], None, False),
    (["ca", "request"], "INFO", False),  # the user's own setting stands
    (["ca", "serve", "--dir", "d"], None, False),  # a daemon logs as gRPC does
    (["lab", "up", "d"], None, False),  # the processes it starts inherit the environment
])
def test_grpc_is_quiet_for_ca_request_only(monkeypatch, argv, env, quiet):
    import os

    from ambient.cli import GRPC_QUIET, _quiet_grpc

    if env is None:
        monkeypatch.delenv("GRPC_VERBOSITY", raising=False)
    else:
        monkeypatch.setenv("GRPC_VERBOSITY", env)
    _quiet_grpc(argv)
    assert os.environ.get("GRPC_VERBOSITY") == (GRPC_QUIET if quiet else env)
