"""`ambient cni install` into temporary CNI directories: the binary copied, the plugin chained exactly once
into the file the runtime reads, a single-plugin .conf converted, and --uninstall undoing only our part."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from ambient.cli import main
from bpf.cni_install import (
    PLUGIN_TYPE,
    WATCH_INTERVAL,
    InstallConfig,
    InstallError,
    install,
    installed,
    network_config_file,
    plan_conflist,
)

CALICO = {
    "name": "k8s-pod-network",
    "cniVersion": "0.3.1",
    "plugins": [
        {"type": "calico", "datastore_type": "kubernetes", "ipam": {"type": "calico-ipam"}},
        {"type": "portmap", "snat": True, "capabilities": {"portMappings": True}},
    ],
}
BRIDGE_CONF = {"cniVersion": "0.4.0", "name": "bridge", "type": "bridge", "bridge": "cni0",
               "ipam": {"type": "host-local", "subnet": "10.244.0.0/24"}}


@pytest.fixture
def dirs(tmp_path):
    bin_dir, conf_dir = tmp_path / "bin", tmp_path / "net.d"
    bin_dir.mkdir()
    conf_dir.mkdir()
    binary = tmp_path / "ambient-cni.built"
    binary.write_bytes(b"\x7fELF pretend plugin")
    return bin_dir, conf_dir, binary


def run(bin_dir, conf_dir, binary, *extra: str) -> int:
    return main(["cni", "install", "--bin-dir", str(bin_dir), "--conf-dir", str(conf_dir),
                 "--plugin-binary", str(binary), *extra])


def ours(conflist: dict) -> list[dict]:
    return [plugin for plugin in conflist["plugins"] if plugin["type"] == PLUGIN_TYPE]


def test_install_copies_the_binary_and_chains_the_plugin_last_once_even_when_run_twice(dirs, capsys):
    bin_dir, conf_dir, binary = dirs
    (conf_dir / "10-calico.conflist").write_text(json.dumps(CALICO))
    assert run(*dirs) == 0
    assert run(*dirs, "--agent-socket", "/run/ambient/cni.sock") == 0
    installed = bin_dir / PLUGIN_TYPE
    assert installed.read_bytes() == binary.read_bytes()
    assert stat.S_IMODE(installed.stat().st_mode) == 0o755
    conflist = json.loads((conf_dir / "10-calico.conflist").read_text())
    assert conflist["plugins"][:2] == CALICO["plugins"]  # the pod network untouched, and first
    assert conflist["plugins"][2:] == [{"type": PLUGIN_TYPE, "agent_socket": "/run/ambient/cni.sock",
                                        "exclude_namespaces": ["kube-system"]}]
    assert {k: v for k, v in conflist.items() if k != "plugins"} == {"name": "k8s-pod-network", "cniVersion": "0.3.1"}
    assert "chained in" in capsys.readouterr().out
    assert sorted(os.listdir(conf_dir)) == ["10-calico.conflist"]  # no temporary file left
    assert sorted(os.listdir(bin_dir)) == [PLUGIN_TYPE]


def test_a_single_plugin_conf_becomes_a_conflist_of_it_and_ours(dirs):
    bin_dir, conf_dir, _ = dirs
    (conf_dir / "10-bridge.conf").write_text(json.dumps(BRIDGE_CONF))
    assert run(*dirs, "--exclude-namespace", "kube-system", "--exclude-namespace", "istio-system") == 0
    assert sorted(os.listdir(conf_dir)) == ["10-bridge.conflist"]
    conflist = json.loads((conf_dir / "10-bridge.conflist").read_text())
    assert (conflist["cniVersion"], conflist["name"]) == ("0.4.0", "bridge")
    assert conflist["plugins"][0] == {k: v for k, v in BRIDGE_CONF.items() if k not in ("cniVersion", "name")}
    assert ours(conflist)[0]["exclude_namespaces"] == ["kube-system", "istio-system"]
    assert run(*dirs) == 0  # and again: still once
    assert len(ours(json.loads((conf_dir / "10-bridge.conflist").read_text()))) == 1


def test_the_runtimes_file_is_the_lexically_first_configuration(tmp_path):
    for name in ("20-b.conflist", "10-a.conf", "05-notes.txt", "99-z.json"):
        (tmp_path / name).write_text("{}")
    assert network_config_file(tmp_path).name == "10-a.conf"


def test_uninstall_removes_our_entry_and_binary_and_nothing_else(dirs):
    bin_dir, conf_dir, _ = dirs
    (conf_dir / "10-calico.conflist").write_text(json.dumps(CALICO))
    assert run(*dirs) == 0
    assert run(*dirs, "--uninstall") == 0
    assert json.loads((conf_dir / "10-calico.conflist").read_text()) == CALICO
    assert not (bin_dir / PLUGIN_TYPE).exists()
    assert run(*dirs, "--uninstall") == 0  # nothing left to remove: still fine


@pytest.mark.parametrize(("setup", "words"), [
    pytest.param(lambda conf_dir: None, "no network configuration", id="no configuration yet"),
    pytest.param(lambda conf_dir: (conf_dir / "10-x.conflist").write_text("{nope"), "not JSON", id="broken JSON"),
    pytest.param(lambda conf_dir: (conf_dir / "10-x.conflist").write_text('{"plugins": {}}'), "plugins is not a list",
                 id="plugins not a list"),
    pytest.param(lambda conf_dir: (conf_dir / "10-x.conf").write_text('{"name": "x"}'), "neither",
                 id="no type"),
])
def test_refusals_name_the_file_and_change_nothing(dirs, capsys, setup, words):
    bin_dir, conf_dir, _ = dirs
    setup(conf_dir)
    before = {path.name: path.read_bytes() for path in conf_dir.iterdir()}
    assert run(*dirs) != 0
    err = capsys.readouterr().err
    assert words in err and str(conf_dir) in err
    assert {path.name: path.read_bytes() for path in conf_dir.iterdir()} == before
    assert not (bin_dir / PLUGIN_TYPE).exists()


def test_a_missing_plugin_binary_says_how_to_build_it(dirs, capsys, tmp_path):
    bin_dir, conf_dir, _ = dirs
    assert run(bin_dir, conf_dir, tmp_path / "nothing") != 0
    assert "make cni-plugin" in capsys.readouterr().err


@pytest.mark.parametrize("socket_path", ["relative/cni.sock", '/run/"quoted".sock', "/" + "s" * 120])
def test_the_agent_socket_must_be_a_plain_absolute_path_that_fits_a_unix_address(tmp_path, socket_path):
    with pytest.raises(InstallError, match="--agent-socket"):
        InstallConfig(tmp_path, tmp_path, tmp_path / "b", socket_path)


def test_planning_is_idempotent_and_replaces_an_older_entry(tmp_path):
    old = InstallConfig(tmp_path, tmp_path, tmp_path / "b", "/old.sock")
    new = InstallConfig(tmp_path, tmp_path, tmp_path / "b", "/new.sock")
    once = plan_conflist(CALICO, old, "x")
    assert plan_conflist(once, old, "x") == once
    assert ours(plan_conflist(once, new, "x")) == [{"type": PLUGIN_TYPE, "agent_socket": "/new.sock",
                                                     "exclude_namespaces": ["kube-system"]}]


def test_installed_is_true_only_for_our_exact_entry_and_binary(dirs):
    bin_dir, conf_dir, binary = dirs
    config = InstallConfig(bin_dir, conf_dir, binary, "/var/run/ambient/cni.sock")
    (conf_dir / "10-calico.conflist").write_text(json.dumps(CALICO))
    assert not installed(config)
    install(config)
    assert installed(config)
    (bin_dir / PLUGIN_TYPE).write_bytes(b"an older build")
    assert not installed(config)
    install(config)
    (conf_dir / "10-calico.conflist").write_text(json.dumps(CALICO))  # the network plugin rewrote it
    assert not installed(config)


def test_watch_installs_again_after_the_network_plugin_rewrites_its_file_and_leaves_it_on_exit(dirs):
    bin_dir, conf_dir, binary = dirs
    conflist = conf_dir / "10-calico.conflist"
    conflist.write_text(json.dumps(CALICO))
    watcher = subprocess.Popen([sys.executable, "-m", "ambient.cli", "cni", "install", "--watch",
                                "--bin-dir", str(bin_dir), "--conf-dir", str(conf_dir),
                                "--plugin-binary", str(binary)], stdout=subprocess.PIPE, text=True)
    try:
        assert watcher.stdout is not None and "chained in" in watcher.stdout.readline()
        conflist.write_text(json.dumps(CALICO))
        deadline = time.monotonic() + 10 * WATCH_INTERVAL
        while not ours(json.loads(conflist.read_text())):
            assert time.monotonic() < deadline, "--watch did not install the plugin again"
            os.sched_yield()
    finally:
        watcher.send_signal(signal.SIGTERM)
        watcher.wait(timeout=10)
        if watcher.stdout is not None:
            watcher.stdout.close()
    assert len(ours(json.loads(conflist.read_text()))) == 1 and (bin_dir / PLUGIN_TYPE).exists()
