"""The probes of a running pod's containers, as the daemon runs them: readiness, which the pod's status
follows, and liveness, whose failures kill the container's process so that its restart policy decides
(kubelet semantics: ``lab.probes``; the process: ``lab.processes.Supervisor``). Exec probes run in the
pod's netns, isolated as its containers are (``run_in_netns_status``).
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable
from functools import partial
from pathlib import Path

import trio

from lab import network
from lab.dns_wiring import open_tcp_in_netns
from lab.isolation import PodSandbox
from lab.probes import run_liveness, run_readiness
from lab.processes import ProcessState, Supervisor
from lab.resolv import prepare_mount
from lab.topology import PodPlan
from lab.workloads import ContainerPlan
from mesh import resources as r

log = logging.getLogger("ambient.lab")


async def run_in_netns_status(netns: str, argv: tuple[str, ...], cwd: Path, env: dict[str, str],
                              sandbox: PodSandbox | None = None, resolv_conf: Path | None = None) -> int:
    """Run ``argv`` in ``netns`` (an exec probe), isolated as the pod's containers are (``sandbox``,
    and ``resolv_conf`` over /etc/resolv.conf); its exit status. Cancelling kills it."""
    isolate = sandbox.prepare() if sandbox is not None else None
    mount_resolv = prepare_mount(resolv_conf) if resolv_conf is not None else None

    def enter(fd: int) -> None:  # in the child: system calls only (see lab.processes)
        network.enter_netns(fd)
        if mount_resolv is not None:
            mount_resolv()
        if isolate is not None:
            isolate()

    fd = os.open(network.netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        result = await trio.run_process(
            list(argv), check=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, cwd=cwd, env=env, preexec_fn=partial(enter, fd),
        )
    finally:
        os.close(fd)
    return result.returncode


class PodProbes:
    """Runs each container's probes for the daemon, which cancels them (its cancel scope per pod) when the
    pod stops; ``notify`` is called when a readiness changes."""

    def __init__(self, supervisor: Supervisor, config_dir: Path, notify: Callable[[], None]) -> None:
        self.supervisor = supervisor
        self.config_dir = config_dir
        self.notify = notify

    async def readiness(self, ready: dict[str, tuple[bool, str | None]], placed: PodPlan, container: r.Container,
                        plan: ContainerPlan) -> None:
        """Keep ``ready[container]`` as the readiness probe says: (ready, why not)."""
        def on_change(is_ready: bool, message: str) -> None:
            ready[plan.name] = (is_ready, message)
            self.notify()

        def on_result(result) -> None:  # while not ready, the status says why (the last failure)
            is_ready, message = ready.get(plan.name, (False, None))
            if not is_ready and not result.ok and message != result.message:
                ready[plan.name] = (False, result.message)
                self.notify()

        assert plan.process is not None
        try:
            await run_readiness(
                plan.readiness_probe, container, str(placed.ip),
                connect=partial(open_tcp_in_netns, placed.netns),
                run_command=partial(self._exec, placed.netns, plan.process.environment, plan.process.sandbox,
                                    plan.process.resolv_conf),
                on_change=on_change, on_result=on_result,
            )
        except ValueError as exc:  # a probe port the container lacks: mesh.parse reports it first
            on_change(False, f"readiness probe: {exc}")

    async def liveness(self, pod: tuple[str, str], placed: PodPlan, container: r.Container,
                       plan: ContainerPlan) -> None:
        """The container's liveness probe: failing, its process is killed and its restart policy decides
        (``lab status`` counts the restart)."""
        assert plan.process is not None
        name = plan.process.name
        last: list[int | None] = [None]  # the run probed last

        def current() -> int | None:
            status = self.supervisor.status().get(name)
            return status.pid if status is not None and status.state is ProcessState.RUNNING else None

        async def started() -> int | None:
            status = await self.supervisor.wait_for(
                name, lambda s: s.state is ProcessState.RUNNING and s.pid is not None and s.pid != last[0])
            last[0] = status.pid
            return status.pid

        async def restart(pid, message: str) -> None:
            log.info("pod %s/%s container %s: %s", *pod, plan.name, message)
            await self.supervisor.kill(name, pid, message)

        try:
            await run_liveness(
                plan.liveness_probe, container, str(placed.ip), connect=partial(open_tcp_in_netns, placed.netns),
                run_command=partial(self._exec, placed.netns, plan.process.environment, plan.process.sandbox,
                                    plan.process.resolv_conf),
                started=started, current=current, restart=restart)
        except ValueError as exc:  # a probe port the container lacks: mesh.parse reports it first
            log.warning("pod %s/%s container %s: liveness probe: %s", *pod, plan.name, exc)

    async def _exec(self, netns: str, env: dict[str, str], sandbox: PodSandbox | None, resolv_conf: Path | None,
                    argv: tuple[str, ...]) -> int:
        return await run_in_netns_status(netns, argv, self.config_dir, env, sandbox, resolv_conf)
