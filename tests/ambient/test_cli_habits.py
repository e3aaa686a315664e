"""The ``ambient`` command's habits, as a user meets them: each case runs ``python -m ambient`` in a
process and checks the exact line on stderr and the exit status (issue #21, "The CLI").

The not-root cases run the command as uid/gid 65534 through ``setpriv`` against a lab as the
commands see one (its lock held by this test, 0600 as the daemon makes it; its record and
status.json written), in a directory that user may traverse.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

import mesh
from ambient.cli import EXIT_BROKEN_PIPE, EXIT_USAGE, git_revision
from lab.state import LabLock, LabPaths, write_record

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534
TIMEOUT = 60  # seconds for one command: an import of the packages and one answer


def ambient(*argv: str, env: dict | None = None, stdout=subprocess.PIPE, prefix: list[str] | None = None,
            python: str = sys.executable) -> subprocess.CompletedProcess:
    return subprocess.run([*(prefix or []), python, "-m", "ambient", *argv], cwd=REPO, stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=TIMEOUT, env={**os.environ, **(env or {})})


def only_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


# -- version


def test_version_and_dash_dash_version_print_istioctl_s_client_line():
    revision = git_revision()
    expected = f"client version: {mesh.__version__}" + (f" (git {revision[:12]})" if revision else "")
    for argv in (["version"], ["--version"]):
        done = ambient(*argv)
        assert (done.returncode, done.stdout, done.stderr) == (0, expected + "\n", "")


def test_version_as_json_and_yaml_is_the_same_dict():
    as_json = json.loads(ambient("version", "-o", "json").stdout)
    as_yaml = yaml.safe_load(ambient("version", "-o", "yaml").stdout)
    assert as_json == as_yaml
    assert as_json["clientVersion"]["version"] == mesh.__version__
    assert as_json["clientVersion"].get("revision") == git_revision()


def test_git_revision_reads_loose_packed_detached_and_worktree_heads(tmp_path):
    sha_a, sha_b, sha_c = "a" * 40, "b" * 40, "c" * 40
    git = tmp_path / "repo" / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "refs" / "heads" / "main").write_text(sha_a + "\n")
    assert git_revision(tmp_path / "repo") == sha_a
    (git / "refs" / "heads" / "main").unlink()  # after `git gc`: only in packed-refs
    (git / "packed-refs").write_text(f"# pack-refs with: peeled fully-peeled sorted\n{sha_b} refs/heads/main\n")
    assert git_revision(tmp_path / "repo") == sha_b
    worktree_git = git / "worktrees" / "wt"  # `git worktree add`: .git is a file naming this directory
    worktree_git.mkdir(parents=True)
    (worktree_git / "HEAD").write_text(sha_c + "\n")  # detached
    (worktree_git / "commondir").write_text("../..\n")
    (tmp_path / "wt").mkdir()
    (tmp_path / "wt" / ".git").write_text(f"gitdir: {worktree_git}\n")
    assert git_revision(tmp_path / "wt") == sha_c
    (worktree_git / "HEAD").write_text("ref: refs/heads/main\n")  # its refs are the main repository's
    assert git_revision(tmp_path / "wt") == sha_b
    assert git_revision(tmp_path / "not-a-checkout") is None


# -- zc


def test_zc_is_ztunnel_config():
    done = ambient("zc", "workloads", "--admin-address", "nowhere")
    assert (done.returncode, only_line(done.stderr)) == (
        1, "ambient: error: --admin-address: 'nowhere' is not HOST:PORT")
    assert "usage: ambient ztunnel-config workloads" in ambient("zc", "workloads", "--help").stdout


# -- no traceback


@pytest.mark.parametrize("argv", [
    ["ca", "init", "--dir", "/nonexistent/ca"],
    ["controlplane", "--config", "/nonexistent", "--state", "/nonexistent"],
    ["ztunnel"],
    ["waypoint", "run"],
])
def test_a_bad_trust_domain_is_a_usage_error_by_mesh_identity_s_rule(argv):
    done = ambient(*argv, "--trust-domain", "bad domain")
    assert done.returncode == EXIT_USAGE and "Traceback" not in done.stderr
    prog = " ".join(["ambient", *argv[:2 if argv[0] in ("ca", "waypoint") else 1]])
    assert done.stderr.splitlines()[-1] == (f"{prog}: error: argument --trust-domain: trust domain 'bad domain' "
                                            "must be 1-255 characters of a-z, 0-9, '.', '-', '_'")


# A bug planted in `ambient version`: what a user sees of an exception nobody expected.
BUG = ("import sys, ambient.cli as cli\n"
       "def cmd_version(args): raise RuntimeError('boom')\n"
       "cli.cmd_version = cmd_version\n"
       "sys.exit(cli.main(sys.argv[1:]))\n")


def test_an_unexpected_error_is_one_line_and_its_traceback_is_logged_at_debug():
    done = subprocess.run([sys.executable, "-c", BUG, "version"], cwd=REPO, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert (done.returncode, only_line(done.stderr)) == (
        1, "ambient: error: RuntimeError: boom (--log-level debug shows where)")
    done = subprocess.run([sys.executable, "-c", BUG, "--log-level", "debug", "version"], cwd=REPO,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 1
    assert "DEBUG ambient: ambient version failed\nTraceback (most recent call last):" in done.stderr
    assert done.stderr.splitlines()[-1] == "ambient: error: RuntimeError: boom"


# -- a closed pipe


def closed_pipe_run(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run with stdout a pipe whose reader is already gone (as `| head -1` once it has its line):
    every write fails, whatever the size of the output and however fast the reader."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return ambient(*argv, env=env, stdout=write_end)
    finally:
        os.close(write_end)


@pytest.mark.parametrize(("argv", "status"), [
    (["version"], EXIT_BROKEN_PIPE),
    (["validate", "-o", "json", "manifests/samples"], EXIT_BROKEN_PIPE),
    (["zc", "--help"], 0),  # argparse's own printing already ignores the error, then exits 0
])
def test_a_closed_pipe_is_quiet(argv, status):
    done = closed_pipe_run(*argv)
    assert (done.returncode, done.stderr) == (status, "")


def fake_lab(root: Path, name: str = "t1") -> LabLock:
    """A running lab as the commands see one: its lock held (by this process), record and status."""
    paths = LabPaths.of(name, root)
    lock = LabLock(paths)
    lock.acquire()
    config = root / "config"
    config.mkdir(exist_ok=True)
    write_record(paths, {"name": name, "config_dir": str(config), "pid": os.getpid()})
    paths.logs.mkdir(parents=True, exist_ok=True)
    log = paths.logs / "default_a_c.log"
    log.write_text("".join(f"line {i}\n" for i in range(10_000)))  # more than a pipe holds
    pod = {"namespace": "default", "name": "a", "node": "node-0", "ip": "10.244.0.2", "ready": "1/1",
           "all_ready": True, "state": "Running", "restarts": 0, "dataplane_mode": "ambient", "message": None,
           "netns": f"amb-{name}.default.a", "containers": [{"name": "c", "log": str(log)}]}
    node = {"name": "node-0", "netns": f"amb-{name}.node-0", "fabric_ip": "172.30.0.2", "pod_cidr": "10.244.0.0/24",
            "pods": 1, "components": [{"name": "ztunnel-node-0", "state": "running", "log": str(log)}]}
    paths.status.write_text(json.dumps({
        "lab": name, "config_dir": str(config), "state_dir": str(paths.root), "nodes": [node], "pods": [pod],
        "services": [], "controlplane": {"state": "running", "address": "172.30.0.1:15012", "restarts": 0,
                                         "log": str(paths.logs / "controlplane.log")}}))
    return lock


@pytest.fixture
def lab_root():
    """A state root the unprivileged user may traverse (pytest's tmp_path is 0700), made as the lab
    makes its own: files 0644 but the lock, 0600."""
    root = Path(tempfile.mkdtemp(prefix="ambient-cli-habits-"))
    root.chmod(0o755)
    old = os.umask(0o022)
    lock = fake_lab(root)
    os.umask(old)
    yield root
    lock.release()
    shutil.rmtree(root)


@pytest.mark.parametrize("argv", [["lab", "status", "--name", "t1"], ["lab", "logs", "default/a", "--name", "t1"]])
def test_a_closed_pipe_is_quiet_for_lab_listings(lab_root, argv):
    done = closed_pipe_run(*argv, env={"AMBIENT_LAB_ROOT": str(lab_root)})
    assert (done.returncode, done.stderr) == (EXIT_BROKEN_PIPE, "")


# -- not root


def unprivileged() -> tuple[list[str], str, dict]:
    """How to run ``python -m ambient`` as uid 65534: setpriv, and an interpreter that user can
    reach (this one, else the system's of the same version with this one's path), or skip."""
    if os.geteuid() != 0:
        pytest.skip("changing to another user needs root")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed: cannot run a command as an unprivileged user")
    prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    path = os.pathsep.join([str(REPO), *(p for p in sys.path if p)])
    system = shutil.which(f"python{sys.version_info.major}.{sys.version_info.minor}", path="/usr/bin:/usr/local/bin")
    for python, env in ((sys.executable, {}), (system, {"PYTHONPATH": path})):
        if python is None:
            continue
        probe = subprocess.run([*prefix, python, "-c", "import ambient.cli, lab.cli"], cwd=REPO,
                               capture_output=True, timeout=TIMEOUT, env={**os.environ, **env})
        if probe.returncode == 0:
            return prefix, python, env
    pytest.skip(f"no Python interpreter that uid {NOBODY} may run and import the project with "
                f"({sys.executable} sits where that user cannot reach)")


@pytest.mark.parametrize(("argv", "message"), [
    (["lab", "up", "manifests/samples"],
     "lab up needs root (it creates network namespaces and cgroups)"),
    (["lab", "down", "--name", "t1"],
     "lab down needs root (it stops the lab's processes and removes its network namespaces)"),
    (["lab", "status", "--name", "t1"], "lab status needs root (it reads the lab's state, which only root may)"),
    (["lab", "logs", "default/a", "--name", "t1"],
     "lab logs needs root (it reads the lab's state, which only root may)"),
    (["exec", "--name", "t1", "default/a", "--", "true"], "exec needs root (it enters the pod's network namespace)"),
    (["ztunnel-config", "workloads", "--node", "node-0", "--lab", "t1"],
     "ztunnel-config --node needs root (it enters the node's network namespace)"),
    (["zc", "all", "--node", "node-0", "--lab", "t1"],
     "ztunnel-config --node needs root (it enters the node's network namespace)"),
    (["zc", "log", "--level", "debug", "--lab", "t1"],
     "ztunnel-config log needs root (it enters the node's network namespace)"),
    (["waypoint", "apply", "--lab", "t1"],
     "waypoint apply --lab needs root (it uses the lab's state, which only root may)"),
    (["waypoint", "list", "--lab", "t1"],
     "waypoint list --lab needs root (it uses the lab's state, which only root may)"),
])
def test_not_root_is_one_line_for_every_lab_command(lab_root, argv, message):
    prefix, python, env = unprivileged()
    done = ambient(*argv, env={**env, "AMBIENT_LAB_ROOT": str(lab_root), "HOME": "/"}, prefix=prefix, python=python)
    assert (done.returncode, only_line(done.stderr)) == (1, f"ambient: error: {message}; run it with sudo")


def test_not_root_may_still_read_what_it_may(lab_root):
    """A configuration directory is the user's to read, a lab on the machine or not; so is the version."""
    prefix, python, env = unprivileged()
    env = {**env, "AMBIENT_LAB_ROOT": str(lab_root), "HOME": "/"}
    done = ambient("waypoint", "list", "--config", str(lab_root / "config"), "--lab", "t1", env=env, prefix=prefix,
                   python=python)
    assert (done.returncode, done.stdout, done.stderr) == (0, "No waypoints found.\n", "")
    done = ambient("validate", str(lab_root / "config"), env=env, prefix=prefix, python=python)
    assert (done.returncode, done.stderr) == (0, "0 resources, 0 errors, 0 warnings\n")
    assert ambient("version", env=env, prefix=prefix, python=python).returncode == 0


def test_root_needed_names_the_command_only_for_a_user_who_is_not_root(monkeypatch):
    from lab.admin_client import NetnsAccessError
    from lab.cli import LabError, root_needed

    monkeypatch.setattr(os, "geteuid", lambda: NOBODY)
    with pytest.raises(LabError, match=r"^zc needs root \(why\); run it with sudo$"):
        with root_needed("zc", "why", also=(NetnsAccessError,)):
            raise NetnsAccessError("entering the network namespace x needs root")
    with pytest.raises(NetnsAccessError):  # not named: its own message
        with root_needed("zc", "why"):
            raise NetnsAccessError("entering the network namespace x needs root")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(PermissionError):  # root refused: something else, with its own message
        with root_needed("zc", "why"):
            raise PermissionError(13, "Permission denied")


# -- one way to pick a lab


@pytest.fixture
def two_labs(tmp_path):
    """Two running labs, t1 and t2, as the commands see them."""
    locks = [fake_lab(tmp_path, "t1"), fake_lab(tmp_path, "t2")]
    yield tmp_path
    for lock in locks:
        lock.release()


SEVERAL = "ambient: error: 2 labs are running (t1, t2): pick one with {flag} or AMBIENT_LAB"


@pytest.mark.parametrize(("argv", "flag"), [
    (["lab", "status"], "--name"),
    (["lab", "logs", "default/a"], "--name"),
    (["lab", "down"], "--name"),  # never a guess at which to remove
    (["exec", "default/a", "--", "true"], "--name"),
    (["ztunnel-config", "workloads"], "--name"),
    (["zc", "all", "--node", "node-0"], "--name"),
    (["waypoint", "list"], "--lab"),  # waypoint's --name is the waypoint's, as in istioctl
    (["waypoint", "apply"], "--lab"),
])
def test_several_labs_and_none_picked_is_one_line_listing_them(two_labs, argv, flag):
    env = {"AMBIENT_LAB_ROOT": str(two_labs), "AMBIENT_LAB": ""}
    done = ambient(*argv, env=env)
    assert (done.returncode, done.stdout, only_line(done.stderr)) == (1, "", SEVERAL.format(flag=flag))
    assert sorted(p.name for p in two_labs.iterdir() if p.name.startswith("t")) == ["t1", "t2"]  # nothing removed


@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_lab_is_picked_by_name_or_ambient_lab(two_labs, how):
    argv, env = (["--name", "t2"], {"AMBIENT_LAB": ""}) if how == "flag" else ([], {"AMBIENT_LAB": "t2"})
    done = ambient("lab", "status", "-o", "json", *argv, env={"AMBIENT_LAB_ROOT": str(two_labs), **env})
    assert (done.returncode, done.stderr) == (0, "")
    assert json.loads(done.stdout)["lab"] == "t2"


def test_the_flag_wins_over_ambient_lab(two_labs):
    done = ambient("lab", "status", "-o", "json", "--name", "t1", env={"AMBIENT_LAB_ROOT": str(two_labs),
                                                                       "AMBIENT_LAB": "t2"})
    assert json.loads(done.stdout)["lab"] == "t1"


def test_the_only_lab_is_picked(lab_root):
    done = ambient("lab", "status", "-o", "json", env={"AMBIENT_LAB_ROOT": str(lab_root), "AMBIENT_LAB": ""})
    assert (done.returncode, json.loads(done.stdout)["lab"]) == (0, "t1")


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["lab", "status"], {"AMBIENT_LAB": "Bad_Name"}, "AMBIENT_LAB: invalid lab name 'Bad_Name'"),
    (["lab", "status", "--name", "Bad_Name"], {}, "--name: invalid lab name 'Bad_Name'"),
    (["waypoint", "list", "--lab", "Bad_Name"], {}, "--lab: invalid lab name 'Bad_Name'"),
])
def test_a_bad_lab_name_says_where_it_came_from(tmp_path, argv, env, message):
    done = ambient(*argv, env={"AMBIENT_LAB_ROOT": str(tmp_path), "AMBIENT_LAB": "", **env})
    assert done.returncode == 1
    assert only_line(done.stderr).startswith(f"ambient: error: {message}: it must be a DNS label")


def test_lab_down_with_no_lab_has_nothing_to_do(tmp_path):
    done = ambient("lab", "down", env={"AMBIENT_LAB_ROOT": str(tmp_path), "AMBIENT_LAB": ""})
    assert (done.returncode, done.stdout, done.stderr) == (0, "No lab to take down\n", "")


# -- lab logs: --tail, --since, -f, a Deployment's pod


def lab_env(root: Path) -> dict:
    return {"AMBIENT_LAB_ROOT": str(root), "AMBIENT_LAB": ""}


def test_logs_tail(lab_root):
    done = ambient("lab", "logs", "default/a", "--tail", "2", env=lab_env(lab_root))
    assert (done.returncode, done.stdout, done.stderr) == (0, "line 9998\nline 9999\n", "")
    done = ambient("lab", "logs", "ztunnel-node-0", "--tail", "0", env=lab_env(lab_root))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_logs_since_by_the_lines_timestamps(lab_root):
    import datetime as dt

    now = dt.datetime.now(dt.UTC)

    def stamp(ago: float) -> str:
        return (now - dt.timedelta(seconds=ago)).strftime("%Y-%m-%dT%H:%M:%SZ")

    (lab_root / "t1" / "logs" / "default_a_c.log").write_text(
        f"{stamp(3600)} [supervisor] started pid 1\nold output\n"
        f"{stamp(60)} [supervisor] exited with status 1; restarting in 1 s\n{stamp(59)} [supervisor] started pid 2\n"
        "new output\n")
    done = ambient("lab", "logs", "a", "--since", "5m", env=lab_env(lab_root))
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout == (f"{stamp(60)} [supervisor] exited with status 1; restarting in 1 s\n"
                           f"{stamp(59)} [supervisor] started pid 2\nnew output\n")
    done = ambient("lab", "logs", "a", "--since", "5m", "--tail", "1", env=lab_env(lab_root))
    assert done.stdout == "new output\n"


def test_logs_since_is_a_go_duration(lab_root):
    done = ambient("lab", "logs", "a", "--since", "5 minutes", env=lab_env(lab_root))
    assert (done.returncode, done.stderr.splitlines()[-1]) == (
        EXIT_USAGE, "ambient lab logs: error: argument --since: '5 minutes' is not a duration such as 10s, 5m or 1h30m")


def add_pods(root: Path, *pods: dict) -> None:
    status_path = root / "t1" / "status.json"
    status = json.loads(status_path.read_text())
    status["pods"] += pods
    status_path.write_text(json.dumps(status))


@pytest.mark.parametrize("target", ["deploy/echo", "deployment/echo", "default/deploy/echo", "echo"])
def test_logs_of_a_deployment_are_its_first_ready_pod_s(lab_root, target):
    logs = lab_root / "t1" / "logs"
    entries = []
    for index, ready in ((0, False), (1, True), (2, True)):
        name = f"echo-0123456789-{index}"
        (logs / f"default_{name}_echo.log").write_text(f"from {name}\n")
        entries.append({"namespace": "default", "name": name, "all_ready": ready,
                        "containers": [{"name": "echo", "log": str(logs / f"default_{name}_echo.log")}]})
    add_pods(lab_root, *entries)
    done = ambient("lab", "logs", target, env=lab_env(lab_root))
    assert (done.returncode, done.stdout, done.stderr) == (0, "from echo-0123456789-1\n", "")


@pytest.mark.parametrize(("target", "message"), [
    ("nope", "no pod or Deployment nope in lab 't1'; `ambient lab status` lists them"),
    ("deploy/nope", "no pods of Deployment deploy/nope in lab 't1'; `ambient lab status` lists them"),
])
def test_logs_of_nothing_is_one_line(lab_root, target, message):
    done = ambient("lab", "logs", target, env=lab_env(lab_root))
    assert (done.returncode, done.stdout, only_line(done.stderr)) == (1, "", f"ambient: error: {message}")


def read_line(stream, timeout: float = TIMEOUT) -> str:
    """The next line of a child's stdout, waiting for its data (not for a time)."""
    import select

    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, "no output"
    return stream.readline().decode()


def test_logs_follow_prints_what_is_appended_until_interrupted(lab_root):
    import signal

    log = lab_root / "t1" / "logs" / "default_a_c.log"
    log.write_text("before\n")
    follower = subprocess.Popen([sys.executable, "-m", "ambient", "lab", "logs", "a", "-f"], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, **lab_env(lab_root)})
    try:
        assert read_line(follower.stdout) == "before\n"
        with open(log, "a") as appending:
            appending.write("after\n")
        assert read_line(follower.stdout) == "after\n"
        follower.send_signal(signal.SIGINT)
        assert follower.wait(TIMEOUT) == 130
        assert follower.stderr.read() == b""
    finally:
        follower.kill()
        follower.wait()


def test_logs_follow_ends_when_the_lab_removes_its_logs(lab_root):
    log = lab_root / "t1" / "logs" / "default_a_c.log"
    log.write_text("before\n")
    follower = subprocess.Popen([sys.executable, "-m", "ambient", "lab", "logs", "a", "-f", "--tail", "1"],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, **lab_env(lab_root)})
    try:
        assert read_line(follower.stdout) == "before\n"
        log.unlink()
        assert follower.wait(TIMEOUT) == 0
        assert (follower.stdout.read(), follower.stderr.read()) == (b"", b"")
    finally:
        follower.kill()
        follower.wait()


# -- analyze


@pytest.mark.parametrize("argv", [["manifests/samples"], ["-o", "json", "manifests/samples"], ["/nonexistent"], []])
def test_analyze_is_validate(argv):
    analyzed, validated = ambient("analyze", *argv), ambient("validate", *argv)
    assert (analyzed.returncode, analyzed.stdout, analyzed.stderr) == (
        validated.returncode, validated.stdout, validated.stderr)


def test_help_lists_analyze_as_validate_s_alias():
    assert "validate (analyze)" in ambient("--help").stdout
