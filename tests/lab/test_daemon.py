"""When `lab up` is done waiting (no root: the readiness condition, and the status it is checked on)."""

from __future__ import annotations

import json
import threading

import pytest
import trio
import trio.testing

from lab.agents import AWAITING_ZTUNNEL, ENROLLED, NOT_LISTED, PENDING
from lab.daemon import Lab, LabConfig, awaited_pods
from lab.state import LabPaths
from lab.topology import plan_lab

BOUND = 5  # seconds: every wait here is bounded


def pod(name: str, state: str = "Running", ready: bool = True, mode: str = "ambient", capture: str = ENROLLED) -> dict:
    return {"namespace": "mesh", "name": name, "node": "node-0", "ip": "10.244.0.2", "state": state, "all_ready": ready,
            "dataplane_mode": mode, "capture": capture if mode == "ambient" else NOT_LISTED}


@pytest.mark.parametrize("entry, ztunnel, awaited", [
    (pod("ready-and-enrolled"), True, False),
    (pod("plain-and-ready", mode="none"), True, False),
    (pod("plain-not-ready", mode="none", ready=False), True, True),
    # Ready as its probes say, but its node's ztunnel does not have it (yet, or again): `lab status`
    # would show "captured, awaiting ztunnel", so `up` waits on.
    (pod("ready-awaiting-ztunnel", capture=AWAITING_ZTUNNEL), True, True),
    (pod("ready-not-captured", capture=PENDING), True, True),
    (pod("agent-down", capture="unknown: its node agent is not running"), True, True),
    (pod("waiting-for-capture", state="ContainerCreating", ready=False, capture=AWAITING_ZTUNNEL), True, True),
    (pod("crashing", state="CrashLoopBackOff", ready=False), True, True),
    # Without a ztunnel of the lab's own (capture tests bring theirs), being captured is enough.
    (pod("captured-no-ztunnel", capture=AWAITING_ZTUNNEL), False, False),
    (pod("not-captured-no-ztunnel", capture=PENDING), False, True),
    # Pods that cannot run are reported, not waited for.
    (pod("pending", state="Pending", ready=False, capture=NOT_LISTED), True, False),
    (pod("error", state="Error", ready=False, capture=PENDING), True, False),
    (pod("not-running", state="NotRunning", ready=False, mode="none"), True, False),
    (pod("no-config-map", state="CreateContainerConfigError", ready=False, mode="none"), True, False),
    # Ran to success under restartPolicy OnFailure or Never: done, not to be waited for.
    (pod("completed", state="Completed", ready=False, mode="none"), True, False),
])
def test_up_waits_for_every_pod_ready_and_every_ambient_pod_enrolled(entry, ztunnel, awaited):
    assert awaited_pods({"pods": [pod("other", mode="none"), entry]}, ztunnel) == ([entry] if awaited else [])


def make_lab(tmp_path) -> Lab:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    paths = LabPaths.of("t", tmp_path / "state")
    paths.controlplane.mkdir(parents=True)
    lab = Lab(LabConfig("t", config_dir, node_count=1), paths)
    lab.plan = plan_lab("t", [], 1)
    return lab


async def test_the_wait_sees_a_status_only_once_status_json_holds_it(tmp_path, monkeypatch):
    # What `lab up` waits on is checked on the status as written, not on the live state, so a
    # `lab status` right after `up` returned cannot read an older file.
    lab = make_lab(tmp_path)
    ready = {"lab": "t", "updated": "now", "pods": [pod("client")]}
    monkeypatch.setattr(lab, "status", lambda: ready)
    write, held = lab._write_status_files, threading.Event()

    def slow_write(status, statuses):  # a write that takes its time (a loaded machine)
        assert held.wait(BOUND)
        write(status, statuses)

    monkeypatch.setattr(lab, "_write_status_files", slow_write)
    approved: list[dict] = []
    done = trio.Event()

    async def wait_for_the_lab() -> None:
        await lab._wait_until_published(lambda status: not awaited_pods(status))
        approved.append(json.loads(lab.paths.status.read_text()))
        done.set()

    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lab._publish_status)
            nursery.start_soon(wait_for_the_lab)
            await trio.testing.wait_all_tasks_blocked()
            assert approved == [] and not lab.paths.status.exists()  # ready, but not in the file yet
            held.set()
            await done.wait()
            nursery.cancel_scope.cancel()
    assert approved == [ready]
