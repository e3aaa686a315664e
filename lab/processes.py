"""The lab's process supervisor: real processes in a netns and a cgroup, restarted with backoff.

How it works: a `ProcessSpec` (frozen) says what to run (argv, env, cwd), where (a lab netns or the
current one), in which cgroup and with which restart policy and backoff. `Supervisor.run` owns a
nursery; `await supervisor.start(spec)` adds one task per process to it, which loops:

    starting -> running -> (exit) -> backoff -> starting ...   (or -> stopped/failed, by policy)

Restart n waits `spec.backoff.delay(n)` (`mesh.backoff`, no jitter: 0.5 s doubling up to 10 s); a run
of at least `spec.healthy_after` seconds counts as healthy and starts the count over.

The child is placed *before* it execs: between fork and exec it writes "0" to its cgroup's
`cgroup.procs` (which moves the writer) and calls setns on the lab netns, so even its first
instruction runs in the right cgroup and netns, and nothing it forks can escape either. The netns and
`cgroup.procs` are opened by the parent first, so a missing netns is a clear error rather than a bare
"exception in preexec_fn". A pod's process then gets its own mount namespace with the pod's
resolv.conf over /etc/resolv.conf (`spec.resolv_conf`, see `lab.resolv`) and isolates itself from
the node (`spec.sandbox`, see `lab.isolation`), last, since that drops the capabilities the steps
before need. Its environment is
a minimal base (PATH, HOME) plus `spec.env`, never the supervisor's own. stdout and stderr are
appended to `spec.log_path`, interleaved with one "[supervisor]" line per event ("started pid N",
"exited with status S; restarting in X s").

When the main process exits, whatever it left in its cgroup is killed before a restart, so restarts
never pile up orphans. Stopping (`stop`, or cancelling `run`) sends SIGTERM to the main process, waits
up to the grace period, then kills the whole cgroup (`cgroup.kill`, or SIGKILL to every pid in
`cgroup.procs` of a frozen cgroup on kernels before 5.14) and removes it. The supervisor only ever
signals a `trio.Process` it started or the members of cgroups under its own lab directory
`<cgroup v2 root>/amb-<lab>.lab/`, which carries the lab's netns prefix so that `cleanup_cgroups`
(for `lab down` after a crash) removes exactly one lab's cgroups.

`kill(name, pid, reason)` ends one run as the kubelet ends a container whose liveness probe fails
(SIGTERM, SIGKILL of the cgroup after the grace period); the exit then goes to the restart policy
like any other.

Every state change wakes `wait_for(name, predicate)`, so callers and tests await a restart or a stop
instead of sleeping. The cgroup v2 root is the cgroup2 mount at /sys/fs/cgroup, or the first other
cgroup2 mount (/sys/fs/cgroup/unified on hybrid systems); without one, `CgroupUnavailableError` says
so.
"""

from __future__ import annotations

import enum
import errno
import hashlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import trio

from lab.isolation import PodSandbox
from lab.resolv import prepare_mount
from lab.topology import netns_prefix
from mesh.backoff import Backoff
from mesh.netns import enter_netns, netns_path

CGROUP_MOUNTS = Path("/proc/self/mounts")
PREFERRED_CGROUP2_ROOT = Path("/sys/fs/cgroup")
LAB_CGROUP_SUFFIX = "lab"  # the lab's directory is "<netns prefix>lab", e.g. amb-demo.lab

# What a container gets without asking: enough to find programs, nothing of the supervisor's own.
BASE_ENV: Mapping[str, str] = MappingProxyType(
    {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}
)
DEFAULT_GRACE_PERIOD = 5.0
_CGROUP_EMPTY_TIMEOUT = 5.0  # after SIGKILL the kernel empties a cgroup in milliseconds
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
# Restart delays: 0.5 s doubling up to 10 s, without jitter (one supervisor, nobody to spread out from).
RESTART_BACKOFF = Backoff(initial=0.5, cap=10.0, multiplier=2.0, jitter=0)
HEALTHY_AFTER = 10.0  # a process up this long counts as healthy: its next restart waits the initial delay


class CgroupUnavailableError(RuntimeError):
    """cgroup v2 is not mounted, so the lab cannot give each process its own cgroup."""


class CgroupError(RuntimeError):
    """A cgroup could not be emptied or removed."""


class RestartPolicy(enum.Enum):
    ALWAYS = "Always"  # like a Deployment's pods
    ON_FAILURE = "OnFailure"
    NEVER = "Never"

    def restarts(self, succeeded: bool) -> bool:
        return self is RestartPolicy.ALWAYS or (self is RestartPolicy.ON_FAILURE and not succeeded)


class ProcessState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"  # exited (or failed to start), waiting to restart
    STOPPED = "stopped"  # stopped on request, or exited 0 and not restarted
    FAILED = "failed"  # failed and the policy says not to restart

    @property
    def finished(self) -> bool:
        return self in (ProcessState.STOPPED, ProcessState.FAILED)


@dataclass(frozen=True)
class ProcessSpec:
    name: str  # unique key, e.g. "shop/web/web" (namespace/pod/container) or "controlplane"
    argv: tuple[str, ...]
    log_path: Path
    cgroup: Path  # a directory under the lab's cgroup directory, see `process_cgroup`
    netns: str | None = None  # a netns under /var/run/netns, or None for the supervisor's own
    env: Mapping[str, str] = field(default_factory=dict)  # added to BASE_ENV
    cwd: Path | None = None
    restart_policy: RestartPolicy = RestartPolicy.ALWAYS
    backoff: Backoff = RESTART_BACKOFF
    healthy_after: float = HEALTHY_AFTER  # a run this long resets the backoff to its first delay
    sandbox: PodSandbox | None = None  # a pod's isolation from the node (`lab.isolation`); None for the mesh's own
    # A pod's resolv.conf, bound over /etc/resolv.conf in the process's own mount namespace (`lab.resolv`)
    resolv_conf: Path | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a process needs a name")
        if self.healthy_after < 0:
            raise ValueError(f"process {self.name}: healthy_after must be >= 0, not {self.healthy_after}")
        argv = tuple(self.argv)
        if not argv or not all(isinstance(arg, str) and "\0" not in arg for arg in argv) or not argv[0]:
            raise ValueError(
                f"process {self.name}: argv must be a non-empty list of strings, not {self.argv!r}"
            )
        for key, value in self.env.items():
            # Checked here, since exec would refuse them only when the supervisor is running.
            if not key or "=" in key or "\0" in key or not isinstance(value, str) or "\0" in value:
                raise ValueError(f"process {self.name}: bad environment variable {key!r}={value!r}")
        object.__setattr__(self, "argv", argv)
        # Read-only, so the frozen spec cannot change under a running process.
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))
        object.__setattr__(self, "log_path", Path(self.log_path))
        object.__setattr__(self, "cgroup", Path(self.cgroup))
        if self.resolv_conf is not None:
            object.__setattr__(self, "resolv_conf", Path(self.resolv_conf))
        object.__setattr__(self, "restart_policy", RestartPolicy(self.restart_policy))

    @property
    def environment(self) -> dict[str, str]:
        return {**BASE_ENV, **self.env}


@dataclass(frozen=True)
class ProcessStatus:
    name: str
    state: ProcessState
    pid: int | None  # the running process, None when there is none
    restarts: int
    last_exit: int | None  # a returncode: negative for a signal; None if it never exited
    error: str | None = None  # why the last start failed


def pod_env(
    namespace: str,
    pod: str,
    pod_ip: str,
    service_account: str = "default",
    container_env: Mapping[str, str] | Iterable[Mapping[str, str]] = (),
) -> dict[str, str]:
    """The environment of a pod's container: the pod variables, then the container's `env`.

    `container_env` is a mapping or the Kubernetes list form ([{"name": ..., "value": ...}]); the
    container's own values win, as they would with a downward-API variable of the same name.
    """
    env = {
        "POD_NAME": pod,
        "POD_NAMESPACE": namespace,
        "POD_IP": str(pod_ip),
        "SERVICE_ACCOUNT": service_account,
        "HOSTNAME": pod,  # what Kubernetes sets, since a pod's hostname is its name
    }
    if isinstance(container_env, Mapping):
        env.update(container_env)
        return env
    for item in container_env:
        if "value" not in item:
            raise ValueError(
                f"env {item.get('name')!r} of pod {namespace}/{pod}: "
                "only `value` is supported, not valueFrom"
            )
        env[item["name"]] = str(item["value"])
    return env


def find_cgroup2_root(mounts: Path = CGROUP_MOUNTS) -> Path:
    """Where cgroup v2 is mounted: /sys/fs/cgroup if it is cgroup2, else the first cgroup2 mount."""
    try:
        lines = mounts.read_text().splitlines()
    except OSError as exc:
        raise CgroupUnavailableError(f"cannot read {mounts} to find the cgroup v2 mount: {exc}") from exc
    mounts_fields = (line.split() for line in lines)
    roots = [Path(fields[1]) for fields in mounts_fields if len(fields) > 2 and fields[2] == "cgroup2"]
    if not roots:
        raise CgroupUnavailableError(
            f"cgroup v2 is not mounted (no cgroup2 entry in {mounts}); the lab runs every process in "
            "its own cgroup v2 cgroup: mount it, e.g. `mount -t cgroup2 none /sys/fs/cgroup`"
        )
    return PREFERRED_CGROUP2_ROOT if PREFERRED_CGROUP2_ROOT in roots else roots[0]


def lab_cgroup_dir(lab_name: str, cgroup_root: Path | None = None) -> Path:
    """The lab's own cgroup directory; every process cgroup of the lab is a child of it."""
    root = find_cgroup2_root() if cgroup_root is None else Path(cgroup_root)
    return root / f"{netns_prefix(lab_name)}{LAB_CGROUP_SUFFIX}"


def process_cgroup(lab_name: str, name: str, cgroup_root: Path | None = None) -> Path:
    """The cgroup of process `name`: readable, and unique thanks to a hash of the exact name.

    "shop/web/web" becomes "shop_web_web-<8 hex>": the hash keeps "a_b/c" and "a/b_c" apart and keeps
    a name such as "cgroup.procs" from clashing with the files of the lab's directory.
    """
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return lab_cgroup_dir(lab_name, cgroup_root) / f"{_UNSAFE.sub('_', name)[:100]}-{digest}"


def kill_cgroup(cgroup: Path, *, use_kill_file: bool = True) -> None:
    """SIGKILL every process in `cgroup` and its descendants; nothing happens if it is gone."""
    kill_file = cgroup / "cgroup.kill"
    try:
        if use_kill_file and kill_file.exists():
            kill_file.write_text("1")  # atomic for the whole subtree, forks included
            return
        # Before Linux 5.14: freeze first, so nothing can fork between reading the pids and killing.
        freeze = cgroup / "cgroup.freeze"
        frozen = freeze.exists()
        if frozen:
            freeze.write_text("1")
        try:
            for procs in sorted(cgroup.rglob("cgroup.procs")):
                for pid in procs.read_text().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        finally:
            if frozen:
                freeze.write_text("0")  # a frozen process cannot act on its SIGKILL
    except FileNotFoundError:
        return


def remove_cgroup(cgroup: Path, timeout: float = _CGROUP_EMPTY_TIMEOUT) -> bool:
    """Kill everything in `cgroup`, wait until it is empty, remove it and its children.

    Blocking (it polls cgroup.events for at most `timeout`); returns False if it did not exist.
    """
    if not cgroup.is_dir():
        return False
    kill_cgroup(cgroup)
    deadline = time.monotonic() + timeout
    while _populated(cgroup):
        if time.monotonic() > deadline:
            raise CgroupError(f"cgroup {cgroup} still has processes {timeout} s after SIGKILL")
        time.sleep(0.005)
    # Children first: a cgroup with child cgroups cannot be removed.
    for directory in sorted((path for path in cgroup.rglob("*") if path.is_dir()), reverse=True):
        _rmdir(directory)
    _rmdir(cgroup)
    return True


def cleanup_cgroups(lab_name: str, cgroup_root: Path | None = None) -> list[Path]:
    """Kill and remove every cgroup of lab `lab_name` (for `lab down`); returns what it removed."""
    lab_dir = lab_cgroup_dir(lab_name, cgroup_root)
    if not lab_dir.is_dir():
        return []
    removed = [child for child in sorted(lab_dir.iterdir()) if child.is_dir() and remove_cgroup(child)]
    remove_cgroup(lab_dir)
    return removed


def _populated(cgroup: Path) -> bool:
    try:
        events = (cgroup / "cgroup.events").read_text()
    except FileNotFoundError:
        return False
    return "populated 1" in events.splitlines()


def _rmdir(path: Path) -> None:
    try:
        path.rmdir()
    except FileNotFoundError:
        pass


def _enter(procs_fd: int, netns_fd: int | None, isolate: Callable[[], None] | None,
           mount_resolv: Callable[[], None] | None = None) -> None:
    # Runs in the child between fork and exec: system calls only, no imports, no locks.
    os.write(procs_fd, b"0")  # "0" moves the writing process into this cgroup
    if netns_fd is not None:
        enter_netns(netns_fd)
    if mount_resolv is not None:  # before the sandbox, which hides the file's directory and CAP_SYS_ADMIN
        mount_resolv()
    if isolate is not None:  # last: it drops the capabilities the steps above need
        isolate()


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"status {returncode}"


@dataclass(eq=False)
class _Managed:
    """A supervised process's mutable record; only its own task changes it."""

    spec: ProcessSpec
    scope: trio.CancelScope
    done: trio.Event
    state: ProcessState = ProcessState.STARTING
    pid: int | None = None
    restarts: int = 0
    last_exit: int | None = None
    error: str | None = None
    process: trio.Process | None = None
    final_state: ProcessState | None = None  # set when the restart policy ends it
    grace_period: float = DEFAULT_GRACE_PERIOD
    log_fd: int | None = None  # its log, while its task runs

    def status(self) -> ProcessStatus:
        return ProcessStatus(
            self.spec.name, self.state, self.pid, self.restarts, self.last_exit, self.error
        )


class Supervisor:
    """Runs the processes of lab `lab_name` until it is cancelled; see the module docstring."""

    def __init__(
        self, lab_name: str, cgroup_root: Path | None = None, grace_period: float = DEFAULT_GRACE_PERIOD,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.lab_name = lab_name
        self._on_change = on_change  # called on every state change, e.g. to rewrite a status file
        self.cgroup_dir = lab_cgroup_dir(lab_name, cgroup_root)
        self.grace_period = grace_period
        self._records: dict[str, _Managed] = {}
        self._nursery: trio.Nursery | None = None
        self._changed = trio.Event()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.cgroup_dir.mkdir(exist_ok=True)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            try:
                self.cgroup_dir.rmdir()
            except OSError:  # not empty: a cgroup could not be removed; cleanup_cgroups will
                pass

    async def start(self, spec: ProcessSpec) -> ProcessStatus:
        """Start supervising `spec`; returns once the first start has succeeded or failed."""
        if self._nursery is None:
            raise RuntimeError(
                "the supervisor is not running: start it with `await nursery.start(supervisor.run)`"
            )
        if spec.cgroup.parent != self.cgroup_dir:
            raise ValueError(
                f"process {spec.name}: cgroup {spec.cgroup} is not under this lab's {self.cgroup_dir}; "
                "use process_cgroup()"
            )
        for other in self._records.values():
            clash = other.spec.name == spec.name or other.spec.cgroup == spec.cgroup
            if clash and not other.done.is_set():
                raise ValueError(
                    f"process {spec.name}: {other.spec.name} is running with the same name or cgroup"
                )
        record = _Managed(spec, trio.CancelScope(), trio.Event(), grace_period=self.grace_period)
        self._records[spec.name] = record
        self._notify()
        await self._nursery.start(self._supervise, record)
        return record.status()

    async def stop(self, name: str, timeout: float | None = None) -> ProcessStatus:
        """SIGTERM; after `timeout`, SIGKILL of the whole cgroup; remove the cgroup; the final status."""
        record = self._records[name]
        if timeout is not None:
            record.grace_period = timeout
        record.scope.cancel()
        await record.done.wait()
        return record.status()

    async def kill(self, name: str, pid: int, reason: str) -> bool:
        """Kill run ``pid`` of ``name`` as the kubelet kills a container whose liveness probe fails:
        SIGTERM, then after the grace period SIGKILL of its cgroup. Its restart policy then decides, as
        for any exit (a restart counts in ``restarts``). ``reason`` goes to its log. False if ``pid``
        is not its running process (it has exited, or been restarted, since)."""
        record = self._records[name]
        process = record.process
        if process is None or process.pid != pid or process.returncode is not None:
            return False
        if record.log_fd is not None:
            _log(record.log_fd, f"{reason}; killing pid {pid}")
        process.send_signal(signal.SIGTERM)  # trio.Process: never signals a reaped, reused pid
        # The supervising task waits for the process (one waiter only) and publishes its exit.
        with trio.move_on_after(record.grace_period):
            await self.wait_for(name, lambda status: status.pid != pid)
            return True
        await trio.to_thread.run_sync(kill_cgroup, record.spec.cgroup)
        await self.wait_for(name, lambda status: status.pid != pid)
        return True

    def status(self) -> dict[str, ProcessStatus]:
        return {name: record.status() for name, record in self._records.items()}

    async def wait_for(self, name: str, predicate: Callable[[ProcessStatus], bool]) -> ProcessStatus:
        """Wait until the status of `name` satisfies `predicate` (checked at every state change)."""
        while True:
            changed = self._changed  # taken before the check, so no change can slip between
            status = self._records[name].status()
            if predicate(status):
                return status
            await changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
        if self._on_change is not None:
            self._on_change()

    def _update(self, record: _Managed, **changes) -> None:
        for key, value in changes.items():
            setattr(record, key, value)
        self._notify()

    async def _supervise(self, record: _Managed, task_status=trio.TASK_STATUS_IGNORED) -> None:
        spec = record.spec
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        log_fd = os.open(spec.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        record.log_fd = log_fd
        try:
            with record.scope:
                attempt = 0  # restarts since the last healthy run: the backoff's own count
                while True:
                    started_at = trio.current_time()
                    try:
                        process = await self._spawn(spec, log_fd)
                    except (OSError, subprocess.SubprocessError) as exc:
                        process = None
                        error = f"failed to start {spec.argv[0]!r}: {exc}"
                        _log(log_fd, error)
                        self._update(record, error=error)
                        succeeded, outcome = False, "could not start"
                    else:
                        _log(log_fd, f"started pid {process.pid}")
                        running = ProcessState.RUNNING
                        self._update(record, process=process, pid=process.pid, state=running, error=None)
                        task_status.started()
                        task_status = trio.TASK_STATUS_IGNORED  # started() only once
                        returncode = await process.wait()
                        # Leftover children would outlive their parent and pile up over restarts.
                        await trio.to_thread.run_sync(kill_cgroup, spec.cgroup)
                        self._update(record, process=None, pid=None, last_exit=returncode)
                        succeeded, outcome = returncode == 0, f"exited with {_describe_exit(returncode)}"
                    if not spec.restart_policy.restarts(succeeded):
                        policy = spec.restart_policy.value
                        _log(log_fd, f"{outcome}; not restarting (restart policy {policy})")
                        # Published by _terminate, once the cgroup is gone: "finished" means cleaned up.
                        record.final_state = ProcessState.STOPPED if succeeded else ProcessState.FAILED
                        break
                    if trio.current_time() - started_at >= spec.healthy_after:
                        attempt = 0
                    delay = spec.backoff.delay(attempt)
                    _log(log_fd, f"{outcome}; restarting in {delay:g} s")
                    self._update(record, state=ProcessState.BACKOFF)
                    task_status.started()  # a start that failed is reported too, in the status
                    task_status = trio.TASK_STATUS_IGNORED
                    await trio.sleep(delay)
                    attempt += 1
                    self._update(record, state=ProcessState.STARTING, restarts=record.restarts + 1)
        finally:
            # Shielded: cancellation of the supervisor is exactly when the processes must be stopped.
            with trio.CancelScope(shield=True):
                try:
                    await self._terminate(record, log_fd)
                finally:
                    record.log_fd = None
                    os.close(log_fd)
                    record.done.set()
                    self._notify()
        # Reached when the policy ended it, or stop() cancelled record.scope, before or after the first
        # report; the final status is set by now, so start() returns it.
        task_status.started()

    async def _spawn(self, spec: ProcessSpec, log_fd: int) -> trio.Process:
        # Opened here, so that a missing netns or cgroup is a clear error in the log and status.
        spec.cgroup.mkdir(exist_ok=True)
        if _populated(spec.cgroup):  # left over by a supervisor of this lab that crashed
            await trio.to_thread.run_sync(kill_cgroup, spec.cgroup)
        isolate = spec.sandbox.prepare() if spec.sandbox is not None else None
        mount_resolv = prepare_mount(spec.resolv_conf) if spec.resolv_conf is not None else None
        procs_fd = os.open(spec.cgroup / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
        netns_fd = None
        try:
            if spec.netns is not None:
                path = netns_path(spec.netns)
                try:
                    netns_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    message = f"netns {spec.netns} does not exist"
                    raise FileNotFoundError(errno.ENOENT, message, path) from None
            return await trio.lowlevel.open_process(
                list(spec.argv),
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                env=spec.environment,
                cwd=spec.cwd,
                # Fine here despite threads: _enter makes only system calls (see the docstring).
                preexec_fn=lambda: _enter(procs_fd, netns_fd, isolate, mount_resolv),
                # Its own session: a Ctrl-C at the terminal reaches only the supervisor, which then
                # stops the processes in order.
                start_new_session=True,
            )
        finally:
            os.close(procs_fd)
            if netns_fd is not None:
                os.close(netns_fd)

    async def _terminate(self, record: _Managed, log_fd: int) -> None:
        process = record.process
        stopping = process is not None and process.returncode is None
        if stopping:
            process.send_signal(signal.SIGTERM)  # trio.Process: never signals a reaped, reused pid
            with trio.move_on_after(record.grace_period):
                await process.wait()
        # The main process may be gone, but not what it spawned: kill the whole cgroup.
        try:
            await trio.to_thread.run_sync(remove_cgroup, record.spec.cgroup)
        except (CgroupError, OSError) as exc:  # reported, not raised: the other processes must stop too
            _log(log_fd, f"could not remove cgroup: {exc}")
            self._update(record, error=f"could not remove cgroup: {exc}")
        if process is not None:
            if process.returncode is None:  # it left its cgroup (root can): kill it by its own pid
                process.kill()
            await process.wait()
            self._update(record, last_exit=process.returncode)
        if stopping:
            _log(log_fd, f"stopped; exited with {_describe_exit(process.returncode)}")
        elif record.final_state is None:
            _log(log_fd, "stopped")
        self._update(record, process=None, pid=None, state=record.final_state or ProcessState.STOPPED)


def _log(log_fd: int, message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    os.write(log_fd, f"{stamp} [supervisor] {message}\n".encode())
