"""The lab's process supervisor: specs and helpers (anyone), real processes in netns and cgroups (root).

The root tests run `sh` scripts that report what they see (their netns, cgroup, environment) into
the log file and exit, or that hand a pid to the test through a FIFO; the tests await the
supervisor's state changes (`wait_for`) and FIFO reads, never a sleep, each bounded by fail_after.
Every test lab has a unique name; its fixture removes the lab's netns and cgroups even if a test fails,
and checks that the supervisor itself left none behind.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
from pathlib import Path

import pytest
import trio
from pyroute2 import netns as pyroute2_netns

from lab.processes import (
    BASE_ENV,
    RESTART_BACKOFF,
    CgroupUnavailableError,
    ProcessSpec,
    ProcessState,
    RestartPolicy,
    Supervisor,
    cleanup_cgroups,
    find_cgroup2_root,
    kill_cgroup,
    lab_cgroup_dir,
    pod_env,
    process_cgroup,
)
from lab.topology import netns_prefix
from mesh.backoff import Backoff

FAST = dict(backoff=Backoff(initial=0.01, cap=0.04, jitter=0), healthy_after=60)  # ProcessSpec fields
BOUND = 5  # seconds: every wait in these tests is bounded


def _cgroup2_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: the supervisor creates cgroups and enters network namespaces"
    try:
        find_cgroup2_root()
    except CgroupUnavailableError as exc:
        return f"needs cgroup v2: {exc}"
    return None


def root_only(test):
    test = pytest.mark.skipif(_cgroup2_reason() is not None, reason=_cgroup2_reason() or "")(test)
    return pytest.mark.root(test)


# Specs and helpers: no root needed.


def test_spec_validates_and_freezes(tmp_path):
    spec = ProcessSpec("a", ["sh", "-c", "true"], tmp_path / "a.log", tmp_path / "cg", env={"X": "1"})
    assert spec.argv == ("sh", "-c", "true")
    assert spec.restart_policy is RestartPolicy.ALWAYS and spec.backoff == RESTART_BACKOFF and spec.healthy_after == 10
    assert spec.environment == {**BASE_ENV, "X": "1"}
    with pytest.raises(TypeError):
        spec.env["Y"] = "2"
    never = ProcessSpec("a", ["x"], tmp_path, tmp_path, restart_policy="Never")
    assert never.restart_policy is RestartPolicy.NEVER
    bad_fields = [
        dict(argv=()), dict(argv=("",)), dict(argv=("a\0",)), dict(env={"A=B": "1"}), dict(env={"A": 1}),
        dict(env={"A": "\0"}), dict(name=""), dict(healthy_after=-1),
    ]
    for bad in bad_fields:
        with pytest.raises(ValueError):
            ProcessSpec(**{"name": "a", "argv": ("x",), "log_path": tmp_path, "cgroup": tmp_path, **bad})


def test_base_env_is_minimal():
    assert set(BASE_ENV) == {"PATH", "HOME"}


def test_pod_env():
    assert pod_env("shop", "web", "10.244.0.2", "web-sa", [{"name": "MODE", "value": "fast"}]) == {
        "POD_NAME": "web",
        "POD_NAMESPACE": "shop",
        "POD_IP": "10.244.0.2",
        "SERVICE_ACCOUNT": "web-sa",
        "HOSTNAME": "web",
        "MODE": "fast",
    }
    assert pod_env("shop", "web", "10.244.0.2", container_env={"POD_NAME": "mine"})["POD_NAME"] == "mine"
    with pytest.raises(ValueError, match="valueFrom"):
        pod_env("shop", "web", "10.244.0.2", container_env=[{"name": "X", "valueFrom": {}}])


def test_restarts_back_off_from_half_a_second_doubling_up_to_ten_without_jitter():
    assert [RESTART_BACKOFF.delay(n) for n in range(7)] == [0.5, 1, 2, 4, 8, 10, 10]


def test_cgroup_names_carry_the_lab_prefix_and_stay_apart(tmp_path):
    lab_dir = lab_cgroup_dir("demo", tmp_path)
    assert lab_dir == tmp_path / "amb-demo.lab" and lab_dir.name.startswith(netns_prefix("demo"))
    web = process_cgroup("demo", "shop/web/web", tmp_path)
    assert web.parent == lab_dir and web.name.startswith("shop_web_web-")
    assert process_cgroup("demo", "a_b/c", tmp_path) != process_cgroup("demo", "a/b_c", tmp_path)
    assert process_cgroup("demo", "cgroup.procs", tmp_path).name != "cgroup.procs"


def test_find_cgroup2_root(tmp_path):
    mounts = tmp_path / "mounts"
    hybrid = "cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
    mounts.write_text(hybrid)
    assert find_cgroup2_root(mounts) == Path("/sys/fs/cgroup/unified")
    mounts.write_text("cgroup2 /x cgroup2 rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n")
    assert find_cgroup2_root(mounts) == Path("/sys/fs/cgroup")
    mounts.write_text("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n")
    with pytest.raises(CgroupUnavailableError, match="cgroup v2 is not mounted"):
        find_cgroup2_root(mounts)


async def test_start_needs_a_running_supervisor_and_its_own_cgroup(tmp_path, nursery):
    supervisor = Supervisor("demo", cgroup_root=tmp_path)
    spec = ProcessSpec("a", ["true"], tmp_path / "a.log", process_cgroup("demo", "a", tmp_path))
    with pytest.raises(RuntimeError, match="not running"):
        await supervisor.start(spec)
    await nursery.start(supervisor.run)
    with pytest.raises(ValueError, match="not under this lab"):
        other_lab = process_cgroup("other", "a", tmp_path)
        await supervisor.start(ProcessSpec("a", ["true"], tmp_path / "a.log", other_lab))


# Real processes: root and cgroup v2.


@pytest.fixture
def lab():
    name = f"pt-{secrets.token_hex(4)}"
    yield name
    for netns in pyroute2_netns.listnetns():
        if netns.startswith(netns_prefix(name)):
            pyroute2_netns.remove(netns)
    leftovers = cleanup_cgroups(name)
    assert not lab_cgroup_dir(name).exists()
    assert leftovers == [], "the supervisor left cgroups behind"


@pytest.fixture
def netns(lab):
    name = f"{netns_prefix(lab)}pod-test"
    pyroute2_netns.create(name)
    return name  # removed by `lab`


@pytest.fixture
async def supervisor(lab, nursery):
    supervisor = Supervisor(lab, grace_period=2)
    await nursery.start(supervisor.run)
    return supervisor  # stopped when pytest-trio cancels `nursery`, before `lab` cleans up


@pytest.fixture
def spec_for(lab, tmp_path):
    def spec_for(name: str, script: str = "", argv: tuple[str, ...] = (), **kwargs) -> ProcessSpec:
        argv = argv or ("sh", "-c", script)
        log_path = tmp_path / "logs" / f"{name}.log"
        return ProcessSpec(name, argv, log_path, process_cgroup(lab, name), **kwargs)

    return spec_for


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a killed orphan may linger as a zombie until init reaps it


async def read_fifo(path: Path) -> str:
    def read() -> str:
        with open(path) as fifo:  # blocks until the script opens it for writing
            return fifo.read().strip()

    return await trio.to_thread.run_sync(read, abandon_on_cancel=True)


def finished(status) -> bool:
    return status.state.finished


@root_only
@pytest.mark.parametrize("in_netns", [True, False], ids=["netns", "current-netns"])
async def test_runs_in_its_netns_and_cgroup_with_the_pod_env_and_logs(
    request, supervisor, spec_for, monkeypatch, in_netns
):
    monkeypatch.setenv("AMBIENT_TEST_PARENT_ONLY", "leak")  # must not reach the child
    netns = request.getfixturevalue("netns") if in_netns else None
    script = (
        "readlink /proc/self/ns/net; cat /proc/self/cgroup; "
        "echo links: $(tail -n +3 /proc/net/dev | cut -d: -f1); env; echo oops >&2"
    )
    spec = spec_for(
        "shop/web/web",
        script,
        netns=netns,
        restart_policy="OnFailure",
        env=pod_env("shop", "web", "10.244.0.2", "web-sa", {"MODE": "fast"}),
    )
    with trio.fail_after(BOUND):
        first = await supervisor.start(spec)
        status = await supervisor.wait_for(spec.name, finished)
    assert (status.state, status.last_exit, status.restarts) == (ProcessState.STOPPED, 0, 0)
    assert status.pid is None
    log = spec.log_path.read_text()
    assert f"[supervisor] started pid {first.pid}\n" in log
    assert "exited with status 0; not restarting (restart policy OnFailure)" in log
    out = log.splitlines()
    child_netns = next(line for line in out if line.startswith("net:["))
    if in_netns:
        assert child_netns != os.readlink("/proc/self/ns/net") and "links: lo" in out
    else:
        assert child_netns == os.readlink("/proc/self/ns/net")
    cgroup_v2 = next(line for line in out if line.startswith("0::"))
    assert cgroup_v2.endswith(f"/{spec.cgroup.parent.name}/{spec.cgroup.name}")
    env = dict(line.split("=", 1) for line in out if re.match(r"[A-Z_][A-Z0-9_]*=", line))
    pod_keys = ("POD_NAME", "POD_NAMESPACE", "POD_IP", "SERVICE_ACCOUNT", "MODE")
    assert {key: env.get(key) for key in pod_keys} == {
        "POD_NAME": "web",
        "POD_NAMESPACE": "shop",
        "POD_IP": "10.244.0.2",
        "SERVICE_ACCOUNT": "web-sa",
        "MODE": "fast",
    }
    assert "AMBIENT_TEST_PARENT_ONLY" not in env and env["PATH"] == BASE_ENV["PATH"]
    assert "oops" in out  # stderr too
    assert not spec.cgroup.exists()  # removed once it will not run again


@root_only
async def test_stop_kills_the_process_and_its_child_and_removes_the_cgroup(
    supervisor, spec_for, tmp_path
):
    fifo = tmp_path / "child-pid"
    os.mkfifo(fifo)
    # Ignores SIGTERM, so only the SIGKILL of the whole cgroup after the grace period can end it.
    spec = spec_for("stubborn", f"trap '' TERM; sleep 1000 & echo $! > {fifo}; wait; wait")
    with trio.fail_after(BOUND):
        status = await supervisor.start(spec)
        child = int(await read_fifo(fifo))
        procs = (spec.cgroup / "cgroup.procs").read_text().split()
        assert status.state is ProcessState.RUNNING and {str(status.pid), str(child)} <= set(procs)
        stopped = await supervisor.stop(spec.name, timeout=0.2)
    assert (stopped.state, stopped.last_exit, stopped.pid) == (ProcessState.STOPPED, -9, None)
    assert not alive(status.pid) and not alive(child)
    assert not spec.cgroup.exists()
    assert "stopped; exited with signal SIGKILL" in spec.log_path.read_text()
    assert supervisor.status()[spec.name] == stopped


@root_only
async def test_an_exited_process_is_restarted_with_a_new_pid(supervisor, spec_for, tmp_path):
    marker = tmp_path / "ran-once"
    # The first run exits 3; the second stays up.
    script = f"if [ -e {marker} ]; then exec sleep 1000; fi; touch {marker}; exit 3"
    spec = spec_for("flaky", script, **FAST)
    with trio.fail_after(BOUND):
        first = await supervisor.start(spec)
        second = await supervisor.wait_for(
            spec.name, lambda s: s.restarts == 1 and s.state is ProcessState.RUNNING
        )
    assert second.pid != first.pid and second.last_exit == 3
    assert (spec.cgroup / "cgroup.procs").read_text().split() == [str(second.pid)]
    log = spec.log_path.read_text()
    assert "exited with status 3; restarting in 0.01 s" in log
    assert log.count("started pid") == 2 and f"started pid {second.pid}" in log


@root_only
async def test_restarts_back_off_doubling_up_to_the_cap(supervisor, spec_for):
    spec = spec_for("crashy", "exit 1", **FAST)
    with trio.fail_after(BOUND):
        await supervisor.start(spec)
        # Stopped while it waits for its 5th start, so the exit status stays that of a run.
        await supervisor.wait_for(
            spec.name, lambda s: s.restarts == 3 and s.state is ProcessState.BACKOFF
        )
        stopped = await supervisor.stop(spec.name)
    delays = re.findall(r"restarting in (\S+) s", spec.log_path.read_text())
    assert delays == ["0.01", "0.02", "0.04", "0.04"]
    assert (stopped.state, stopped.last_exit, stopped.restarts) == (ProcessState.STOPPED, 1, 3)


@root_only
async def test_a_run_longer_than_healthy_after_resets_the_backoff(supervisor, spec_for):
    spec = spec_for("healthy-crashy", "exit 1", backoff=Backoff(initial=0.01, cap=0.04, jitter=0),
                    healthy_after=0)
    with trio.fail_after(BOUND):
        await supervisor.start(spec)
        await supervisor.wait_for(
            spec.name, lambda s: s.restarts == 2 and s.state is ProcessState.BACKOFF
        )
        await supervisor.stop(spec.name)
    assert re.findall(r"restarting in (\S+) s", spec.log_path.read_text()) == ["0.01"] * 3


@root_only
@pytest.mark.parametrize(
    "policy, code, state",
    [
        ("Never", 7, ProcessState.FAILED),
        ("Never", 0, ProcessState.STOPPED),
        ("OnFailure", 0, ProcessState.STOPPED),
    ],
)
async def test_a_policy_that_does_not_restart_leaves_the_final_status(
    supervisor, spec_for, policy, code, state
):
    spec = spec_for("once", f"exit {code}", restart_policy=policy, **FAST)
    with trio.fail_after(BOUND):
        await supervisor.start(spec)
        status = await supervisor.wait_for(spec.name, finished)
    assert (status.state, status.last_exit, status.restarts) == (state, code, 0)
    assert not spec.cgroup.exists()
    assert f"not restarting (restart policy {policy})" in spec.log_path.read_text()


@root_only
@pytest.mark.parametrize("policy, restarted", [("Always", True), ("OnFailure", True), ("Never", False)])
async def test_kill_ends_a_run_and_its_restart_policy_decides(supervisor, spec_for, policy, restarted):
    # As the kubelet after a failed liveness probe: SIGTERM, the exit (signal, a failure) goes to the policy.
    spec = spec_for("live", "exec sleep 1000", restart_policy=policy, **FAST)
    with trio.fail_after(BOUND):
        first = await supervisor.start(spec)
        assert await supervisor.kill(spec.name, first.pid, "Liveness probe failed: exec [check] exited 1")
        if restarted:
            status = await supervisor.wait_for(spec.name, lambda s: s.restarts == 1 and s.state is ProcessState.RUNNING)
            assert status.pid != first.pid and status.last_exit == -signal.SIGTERM
            assert not await supervisor.kill(spec.name, first.pid, "too late")  # that run is gone
        else:
            status = await supervisor.wait_for(spec.name, finished)
            assert (status.state, status.restarts) == (ProcessState.FAILED, 0)
    log = spec.log_path.read_text()
    assert f"Liveness probe failed: exec [check] exited 1; killing pid {first.pid}" in log
    assert "too late" not in log


@root_only
async def test_kill_sigkills_a_run_that_ignores_sigterm(lab, nursery, spec_for, tmp_path):
    supervisor = Supervisor(lab, grace_period=0.2)
    await nursery.start(supervisor.run)
    fifo = tmp_path / "trapped"
    os.mkfifo(fifo)
    # Says so once SIGTERM is ignored, so the kill cannot come before the trap.
    spec = spec_for("stubborn-live", f"trap '' TERM; echo yes > {fifo}; while :; do sleep 0.05; done", **FAST)
    with trio.fail_after(BOUND):
        first = await supervisor.start(spec)
        assert await read_fifo(fifo) == "yes"
        assert await supervisor.kill(spec.name, first.pid, "Liveness probe failed")
        status = await supervisor.wait_for(spec.name, lambda s: s.restarts == 1)
    assert status.last_exit == -signal.SIGKILL


@root_only
async def test_cancelling_the_supervisor_stops_every_process(lab, netns, spec_for):
    supervisor = Supervisor(lab, grace_period=2)
    specs = [spec_for("a", "exec sleep 1000"), spec_for("b", "exec sleep 1000", netns=netns)]
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            pids = [(await supervisor.start(spec)).pid for spec in specs]
            assert all(alive(pid) for pid in pids)
            nursery.cancel_scope.cancel()
    assert not any(alive(pid) for pid in pids)
    for spec in specs:
        status = supervisor.status()[spec.name]
        assert (status.state, status.last_exit) == (ProcessState.STOPPED, -15)  # stopped gracefully
        assert "stopped; exited with signal SIGTERM" in spec.log_path.read_text()
    assert not lab_cgroup_dir(lab).exists()


@root_only
async def test_a_missing_command_or_netns_is_reported_and_the_supervisor_keeps_going(
    supervisor, spec_for, lab
):
    missing = spec_for("missing", argv=("/nonexistent/cmd",), **FAST)
    no_netns = spec_for("no-netns", "true", netns=f"{netns_prefix(lab)}nope", restart_policy="Never")
    with trio.fail_after(BOUND):
        status = await supervisor.start(missing)
        assert status.state is ProcessState.BACKOFF and "No such file or directory" in status.error
        retried = await supervisor.wait_for(missing.name, lambda s: s.restarts >= 2)
        failed = await supervisor.start(no_netns)
        fine = await supervisor.start(spec_for("fine", "exec sleep 1000"))
    assert retried.pid is None and retried.last_exit is None
    assert failed.state is ProcessState.FAILED
    assert f"netns {netns_prefix(lab)}nope does not exist" in failed.error
    assert fine.state is ProcessState.RUNNING
    assert "failed to start '/nonexistent/cmd'" in missing.log_path.read_text()
    assert "could not start; restarting in 0.01 s" in missing.log_path.read_text()


@root_only
@pytest.mark.parametrize("use_kill_file", [True, False], ids=["cgroup.kill", "kill-each-pid"])
def test_cleanup_cgroups_after_a_crash_kills_and_removes_them_and_is_safe_twice(lab, use_kill_file):
    # What a crashed `lab up` leaves: a lab cgroup directory with a live process in a child cgroup.
    cgroup = process_cgroup(lab, "orphan")
    cgroup.mkdir(parents=True)
    procs_fd = os.open(cgroup / "cgroup.procs", os.O_WRONLY)
    try:
        sleeper = subprocess.Popen(["sleep", "1000"], preexec_fn=lambda: os.write(procs_fd, b"0"))
    finally:
        os.close(procs_fd)
    try:
        if not use_kill_file:  # the path for kernels before 5.14
            kill_cgroup(cgroup, use_kill_file=False)
            assert sleeper.wait(timeout=BOUND) == -9
        assert cleanup_cgroups(lab) == [cgroup]
        assert sleeper.wait(timeout=BOUND) == -9
        assert not lab_cgroup_dir(lab).exists()
        assert cleanup_cgroups(lab) == []
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
