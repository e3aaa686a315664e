"""Where a lab keeps its state, and how the commands find a lab and its daemon.

A lab that is up is one daemon process (``ambient lab up`` starts it in the background, or runs it
attached with ``--foreground``) that holds an exclusive ``flock`` on ``<dir>/lab.lock`` for as long as
it runs. The lock, not a pid file, says whether the lab is running: the kernel drops it when the
daemon dies however it dies, so a lab whose directory exists but whose lock is free is a lab that
crashed, and ``lab down`` cleans it up. Layout of ``<root>/<lab name>/``:

    lab.lock          held by the daemon
    lab.json          what was asked for (config directory, nodes) and the daemon's pid
    status.json       the live status the daemon rewrites on every change (``ambient lab status``)
    controlplane/     the control plane's state: its CA (ca/) and the pods' status (pods.json)
    waypoints/        per waypoint Gateway (<ns>.<name>/): its token and its proxy's saved state
    logs/             lab.log (the daemon), controlplane.log, pods/<ns>_<pod>_<container>.log

Every command that acts on a lab picks it one way (``pick_lab``): ``--name`` (``--lab`` for ``waypoint``,
whose ``--name`` is the waypoint's), else ``$AMBIENT_LAB``, else the only lab on the machine; with
several and none picked it fails listing them, as kubectl does without a current context.

The root is ``$AMBIENT_LAB_ROOT``, or /var/lib/ambient/labs (the lab needs root anyway, and logs
there survive the terminal). Netns and cgroups are found by the lab's name prefix instead (see
``lab.topology``), so ``lab down`` also removes what a lab left without any state directory.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

from lab.processes import LAB_CGROUP_SUFFIX, CgroupUnavailableError, find_cgroup2_root
from lab.topology import NETNS_PREFIX, LabPlanError, validate_lab_name
from mesh.netns import NETNS_RUN_DIR
from mesh.watched_file import write_json_atomic

ROOT_ENV = "AMBIENT_LAB_ROOT"
LAB_ENV = "AMBIENT_LAB"  # the lab a command acts on when it names none, as KUBECONFIG's current context
DEFAULT_ROOT = Path("/var/lib/ambient/labs")
DEFAULT_LAB_NAME = "ambient"


# The files that make a directory under the root a lab's: its daemon's lock and record, written
# first, and the status it keeps (a daemon that crashed may leave any of them).
LAB_FILES = ("lab.lock", "lab.json", "status.json")


class LabNotFoundError(RuntimeError):
    """No lab matches what the command asked for."""


class NoLabError(LabNotFoundError):
    """None was named and there is no lab on the machine (``lab down``: nothing to do)."""


class SeveralLabsError(LabNotFoundError):
    """None was named and there are several: the command cannot guess which."""


def default_lab_name() -> str | None:
    """``$AMBIENT_LAB`` (None when unset or empty): every ``--name`` of a lab defaults to it."""
    return os.environ.get(LAB_ENV) or None


def state_root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


@dataclass(frozen=True)
class LabPaths:
    name: str
    root: Path

    @classmethod
    def of(cls, name: str, root: Path | None = None) -> LabPaths:
        return cls(validate_lab_name(name), (root or state_root()) / name)

    @property
    def lock(self) -> Path:
        return self.root / "lab.lock"

    @property
    def record(self) -> Path:
        return self.root / "lab.json"

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def controlplane(self) -> Path:
        return self.root / "controlplane"

    def node_dir(self, node: str) -> Path:
        """A node's own state: its agent's bpffs, ZDS socket, status and token."""
        return self.root / "nodes" / node

    def waypoint_dir(self, namespace: str, gateway: str) -> Path:
        """A waypoint's own state: its token for the control plane and what its proxy keeps across a
        restart. Under the lab's root, which no pod sees (``lab.isolation``). A namespace holds no
        ".", so "<ns>.<gateway>" names one waypoint only."""
        return self.root / "waypoints" / f"{namespace}.{gateway}"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def daemon_log(self) -> Path:
        return self.logs / "lab.log"

    def component_log(self, component: str) -> Path:
        """``controlplane``, ``ztunnel-node-0``...: one file per component."""
        return self.logs / f"{component.replace('/', '-')}.log"

    def container_log(self, namespace: str, pod: str, container: str) -> Path:
        # Kubernetes' layout, /var/log/pods/<ns>_<pod>_<uid>/<container>/, flattened: names cannot hold "_".
        return self.logs / "pods" / f"{namespace}_{pod}_{container}.log"


class LabLock:
    """The daemon's exclusive lock: held from ``acquire`` until the process exits or ``release``."""

    def __init__(self, paths: LabPaths) -> None:
        self.paths = paths
        self._fd: int | None = None

    def acquire(self) -> None:
        self.paths.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.paths.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(
                f"lab {self.paths.name!r} is already running; `ambient lab down --name {self.paths.name}` first"
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def is_running(paths: LabPaths) -> bool:
    """Whether a daemon holds the lab's lock (probed with a non-blocking shared lock)."""
    try:
        fd = os.open(paths.lock, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the probe's own lock
    return False


def write_record(paths: LabPaths, record: dict) -> None:
    write_json_atomic(paths.record, record, mode=0o644)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise RuntimeError(f"{path} is not valid JSON ({exc}); `ambient lab down` removes it") from None


def daemon_pid(paths: LabPaths) -> int | None:
    """The running daemon's pid, checked: the lock is held and that pid runs this lab's daemon."""
    record = read_json(paths.record) or {}
    pid = record.get("pid")
    if not isinstance(pid, int) or not is_running(paths):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    # Never signal a pid that was reused by something else.
    return pid if b"lab" in cmdline and paths.name.encode() in cmdline else None


def _names_from_netns() -> set[str]:
    names: set[str] = set()
    try:
        entries = os.listdir(NETNS_RUN_DIR)
    except OSError:
        return names
    for entry in entries:
        if entry.startswith(NETNS_PREFIX) and "." in entry:
            names.add(entry[len(NETNS_PREFIX):].split(".", 1)[0])
    return names


def _names_from_cgroups() -> set[str]:
    try:
        root = find_cgroup2_root()
    except CgroupUnavailableError:
        return set()
    suffix = f".{LAB_CGROUP_SUFFIX}"
    try:
        entries = [p.name for p in root.iterdir()]
    except OSError:
        return set()
    return {e[len(NETNS_PREFIX):-len(suffix)] for e in entries if e.startswith(NETNS_PREFIX) and e.endswith(suffix)}


def known_labs(root: Path | None = None) -> list[str]:
    """Every lab with anything on this machine: a state directory, a netns or a cgroup. A directory
    under the root is a lab's if it holds one of ``LAB_FILES``: anything else there (a user's own
    files) is no lab to pick or to name in a list."""
    root = root or state_root()
    names = _names_from_netns() | _names_from_cgroups()
    try:
        names |= {p.name for p in root.iterdir() if any((p / f).exists() for f in LAB_FILES)}
    except FileNotFoundError:
        pass
    valid = set()
    for name in names:
        try:
            valid.add(validate_lab_name(name))
        except ValueError:
            continue
    return sorted(valid)


def pick_lab(name: str | None, root: Path | None = None, flag: str = "--name") -> LabPaths:
    """The lab ``flag`` names, else ``$AMBIENT_LAB``'s, else the only one there is. A bad name is a
    ``LabPlanError`` naming where it came from (``flag`` or the variable)."""
    source = flag if name is not None else LAB_ENV
    name = name if name is not None else default_lab_name()
    if name is not None:
        try:
            return LabPaths.of(name, root)
        except LabPlanError as exc:
            raise LabPlanError(f"{source}: {exc}") from None
    labs = known_labs(root)
    if not labs:
        raise NoLabError("no lab is running; start one with `ambient lab up DIR`")
    if len(labs) > 1:
        raise SeveralLabsError(f"{len(labs)} labs are running ({', '.join(labs)}): pick one with {flag} or {LAB_ENV}")
    return LabPaths.of(labs[0], root)


def pidfd_wait(pid: int, timeout: float) -> bool:
    """Wait until process ``pid`` has exited (not reaped: it need not be our child); False on timeout."""
    import select

    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            return True
        raise
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    finally:
        os.close(fd)
