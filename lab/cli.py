"""``ambient lab up|status|logs|down`` and ``ambient exec``: the local lab from the command line.

``lab up`` works like ``kind create cluster``: it starts the lab's daemon (``lab.daemon``) in
its own session, relays its progress lines from a pipe, and returns once the daemon reports every
pod ready and every ambient pod enrolled, as its status.json already shows (or ``--timeout``
passed), leaving the lab running in the background; ``--foreground`` runs the daemon in the
command itself until Ctrl-C. The daemon writes the progress lines to the pipe and a last line,
``READY_MARKER``, then closes it: the end of the pipe without that line means the daemon failed, and
the command shows the end of its log. The other commands read the daemon's ``status.json`` and act
on the lab ``--name`` or ``$AMBIENT_LAB`` picks, or the only one there is (``lab.state.pick_lab``).

The lab runs as root and keeps its lock, namespaces and processes root's, so a lab command run
without root fails at whatever the kernel refuses first; ``root_needed`` turns that refusal into one
line naming the command (``needs_root``), for this module's commands and those of
``ambient.ztunnel_config`` and ``lab.waypoint_cli`` that use a lab.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bpf import bpffs
from lab.components import resolv_conf_path
from lab.listing import add_namespace_flags, add_output_flag
from lab.log_view import FOLLOW_POLL_INTERVAL
from lab.processes import CgroupUnavailableError, cleanup_cgroups, lab_cgroup_dir, process_cgroup
from lab.resolv import prepare_mount
from lab.state import (
    DEFAULT_LAB_NAME,
    LAB_ENV,
    LabLock,
    LabPaths,
    NoLabError,
    daemon_pid,
    default_lab_name,
    is_running,
    pick_lab,
    pidfd_wait,
    read_json,
    write_record,
)
from lab.topology import MAX_NODES, LabPlanError
from lab.workloads import container_process_name, pod_sandbox
from mesh.errors import describe
from mesh.netns import enter_netns, netns_path

log = logging.getLogger("ambient.lab")

READY_MARKER = "ambient-lab-ready"
STOP_TIMEOUT = 60.0  # for the daemon to stop its processes and remove its network
LOG_TAIL_LINES = 30


class LabError(Exception):
    """A lab command cannot do what was asked; the message says why and what to do."""


# Why each command needs root, for the one line a user without it gets.
CREATES_NETNS = "it creates network namespaces and cgroups"
REMOVES_NETNS = "it stops the lab's processes and removes its network namespaces"
READS_STATE = "it reads the lab's state, which only root may"
ENTERS_POD_NETNS = "it enters the pod's network namespace"


def needs_root(command: str, reason: str) -> str:
    return f"{command} needs root ({reason}); run it with sudo"


@contextmanager
def root_needed(command: str, reason: str, also: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """Run the body; a permission error the kernel gives a user who is not root becomes the one line
    of ``needs_root``, as do the exceptions in ``also`` (the same refusal as another module reports
    it, e.g. ``lab.admin_client.NetnsAccessError``). As root such an error is something else (a file
    made unreadable on purpose, a security module) and keeps its own message."""
    refusals: tuple[type[Exception], ...] = (PermissionError, *also)
    try:
        yield
    except refusals as exc:
        if os.geteuid() == 0:
            raise
        raise LabError(needs_root(command, reason)) from exc


def _duration_arg(text: str) -> float:
    """``--since``'s type: Go's durations, as kubectl takes them; a bad one is a usage error."""
    from lab.log_view import LogOptionError, parse_duration

    try:
        return parse_duration(text)
    except LogOptionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


LAB_HELP = f"the lab (default ${LAB_ENV}, else the only one)"


def register(subparsers: argparse._SubParsersAction) -> None:
    lab = subparsers.add_parser("lab", help="the local lab: a cluster of network namespaces on this machine")
    sub = lab.add_subparsers(dest="lab_command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="build a lab from a directory of Kubernetes YAML and run it")
    up.add_argument("dir", type=Path, help="directory of Kubernetes-format YAML (watched: edits apply live)")
    up.add_argument("--name", help=f"the lab's name (default ${LAB_ENV}, else {DEFAULT_LAB_NAME})")
    up.add_argument("--nodes", type=int, default=2, help="number of nodes (default 2)")
    up.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C takes the lab down")
    up.add_argument("--timeout", type=float, default=60.0,
                    help="seconds to wait for every pod to be ready and every ambient pod enrolled")
    up.add_argument("--no-ztunnel", dest="ztunnel", action="store_false",
                    help="run no ztunnel on the nodes (to test capture with a ztunnel of your own)")
    up.add_argument("--progress-fd", type=int, help=argparse.SUPPRESS)  # the background daemon's pipe
    up.set_defaults(func=cmd_up)

    status = sub.add_parser("status", help="nodes, pods and services of the lab")
    status.add_argument("--name", help=LAB_HELP)
    add_output_flag(status)
    add_namespace_flags(status, "pods, services and waypoints")
    status.set_defaults(func=cmd_status)

    logs = sub.add_parser("logs", help="the log of a pod's container or of a component, as kubectl logs")
    logs.add_argument("target", metavar="POD|DEPLOYMENT|COMPONENT",
                      help="[NAMESPACE/]POD, [NAMESPACE/]deploy/NAME (its first ready pod; a plain NAME no pod "
                      "has is a Deployment's too), or controlplane, lab, ztunnel-node-0, ...")
    logs.add_argument("-c", "--container", help="the container, for a pod with several")
    logs.add_argument("-n", "--namespace", help="the pod's or Deployment's namespace (default: any)")
    logs.add_argument("-f", "--follow", action="store_true",
                      help=f"then print what is appended, until Ctrl-C (polls every {FOLLOW_POLL_INTERVAL:g} s)")
    logs.add_argument("--tail", type=int, default=-1, metavar="N", help="only the last N lines (default -1: all)")
    logs.add_argument("--since", metavar="DURATION", type=_duration_arg,
                      help="only lines newer than this (5s, 2m, 1h), by the timestamps lines start with")
    logs.add_argument("--name", help=LAB_HELP)
    logs.set_defaults(func=cmd_logs)

    down = sub.add_parser("down", help="stop the lab and remove everything it made")
    down.add_argument("--name", help=LAB_HELP)
    down.set_defaults(func=cmd_down)

    exec_ = subparsers.add_parser("exec", help="run a command in a lab pod's network namespace")
    exec_.add_argument("--name", help=LAB_HELP)
    exec_.add_argument("pod", metavar="NAMESPACE/POD")
    exec_.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND...")
    exec_.set_defaults(func=cmd_exec)


# -- up


def _check_manifests(config_dir: Path) -> None:
    from mesh.parse import parse_paths

    result = parse_paths([config_dir])
    if result.errors:
        for problem in result.errors:
            print(problem, file=sys.stderr)
        raise LabError(f"{len(result.errors)} error(s) in {config_dir}; fix them (see `ambient validate`)")


def _check_free(paths: LabPaths) -> None:
    """Refuse a lab that runs or left namespaces or cgroups; forget a dead one's state directory."""
    if is_running(paths):
        raise LabError(f"lab {paths.name!r} is already running; `ambient lab down --name {paths.name}` first")
    from lab import network  # pyroute2: only for the commands that change or list namespaces

    leftovers = network.lab_netns(paths.name)
    try:
        if lab_cgroup_dir(paths.name).exists():
            leftovers.append(str(lab_cgroup_dir(paths.name)))
    except CgroupUnavailableError:
        pass
    if leftovers:
        raise LabError(f"lab {paths.name!r} left {', '.join(leftovers)} behind; "
                       f"`ambient lab down --name {paths.name}` removes them")
    if paths.root.exists():  # only files of a lab that stopped or crashed: start afresh
        remove_state(paths)


def cmd_up(args: argparse.Namespace) -> int:
    from lab.daemon import LabConfig

    if os.geteuid() != 0:
        raise LabError(needs_root("lab up", CREATES_NETNS))
    source = "--name" if args.name is not None else LAB_ENV
    args.name = args.name or default_lab_name() or DEFAULT_LAB_NAME
    config_dir = args.dir.resolve()
    if not config_dir.is_dir():
        raise LabError(f"{args.dir}: not a directory")
    if not 1 <= args.nodes <= MAX_NODES:
        raise LabError(f"--nodes: a lab has 1 to {MAX_NODES} nodes, not {args.nodes}")
    try:
        paths = LabPaths.of(args.name)
    except LabPlanError as exc:
        raise LabError(f"{source}: {exc}") from None
    config = LabConfig(args.name, config_dir, args.nodes, args.log_level, args.timeout, args.ztunnel)
    if args.progress_fd is not None:  # the background daemon, started below by the user's `lab up`
        return _run_daemon(config, paths, _pipe_progress(args.progress_fd))
    _check_manifests(config_dir)
    _check_free(paths)
    print(f"Creating lab {args.name!r} from {config_dir} ({args.nodes} nodes)", flush=True)
    if args.foreground:
        return _run_daemon(config, paths, _print_progress, foreground=True)
    return _start_background(args, config_dir, paths)


def _print_progress(line: str) -> None:
    if line != READY_MARKER:
        print(f" • {line}", flush=True)


def _pipe_progress(fd: int):
    pipe = os.fdopen(fd, "w", buffering=1)

    def progress(line: str) -> None:
        if line != READY_MARKER:
            log.info("%s", line)  # also in lab.log, where what happens after `up` returned is kept
        if pipe.closed:
            return
        try:
            pipe.write(line + "\n")
            if line == READY_MARKER:
                pipe.close()
        except BrokenPipeError:  # the user's `lab up` is gone; the lab goes on
            pass

    return progress


def _start_background(args: argparse.Namespace, config_dir: Path, paths: LabPaths) -> int:
    paths.logs.mkdir(parents=True, exist_ok=True)
    read_end, write_end = os.pipe()
    argv = [sys.executable, "-m", "ambient", "--log-level", args.log_level, "lab", "up", str(config_dir),
            "--name", paths.name, "--nodes", str(args.nodes), "--timeout", str(args.timeout),
            "--progress-fd", str(write_end)] + ([] if args.ztunnel else ["--no-ztunnel"])
    with open(paths.daemon_log, "ab") as log:
        daemon = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(write_end,),
                                  start_new_session=True)  # its own session: the terminal closing does not stop it
    os.close(write_end)
    ready = False
    try:
        with os.fdopen(read_end) as pipe:
            for line in pipe:
                line = line.rstrip("\n")
                if line == READY_MARKER:
                    ready = True
                    break
                print(f" • {line}", flush=True)
    except KeyboardInterrupt:
        print("Interrupted: taking the lab down", file=sys.stderr)
        daemon.terminate()
        daemon.wait(timeout=STOP_TIMEOUT)
        return 130
    if not ready:
        status = daemon.wait(timeout=STOP_TIMEOUT)
        tail = _tail(paths.daemon_log, LOG_TAIL_LINES)
        print(f"The lab's daemon exited with status {status} before the lab was up. "
              f"The end of {paths.daemon_log}:\n{tail}", file=sys.stderr)
        return 1
    print(f"Lab {paths.name!r} is running in the background (daemon pid {daemon.pid}). Try:\n"
          f"  ambient lab status\n"
          f"  ambient exec NAMESPACE/POD -- COMMAND\n"
          f"  ambient lab logs NAMESPACE/POD\n"
          f"  ambient lab down", flush=True)
    return 0


def _run_daemon(config, paths: LabPaths, progress, foreground: bool = False) -> int:
    import trio

    from lab.daemon import Lab

    lock = LabLock(paths)
    lock.acquire()
    write_record(paths, {"name": config.name, "config_dir": str(config.config_dir), "nodes": config.node_count,
                         "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    failed = False

    async def main() -> None:
        nonlocal failed
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                lab = Lab(config, paths, progress)
                try:
                    elapsed = await nursery.start(lab.run)
                except Exception as exc:
                    failed = True
                    progress(f"The lab failed to start: {describe(exc)}")
                    raise
                progress(f"Lab {config.name!r} is up in {elapsed:.1f} s: {len(lab.plan.nodes)} nodes, "
                         f"{len(lab.plan.pods)} pods; state in {paths.root}")
                if foreground:
                    progress("Press Ctrl-C to take the lab down")
                progress(READY_MARKER)
                async for signum in signals:
                    print(f"signal {signal.Signals(signum).name}: taking the lab down", file=sys.stderr, flush=True)
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(main)
    finally:
        if not failed:  # a failed start keeps its logs for the user; `lab down` or the next `up` removes them
            remove_state(paths, ignore_errors=True)
        lock.release()
    if foreground:
        print(f"Lab {config.name!r} is down", flush=True)
    return 0


def remove_state(paths: LabPaths, ignore_errors: bool = False) -> list[Path]:
    """Remove the lab's state directory, first unmounting the node agents' bpffs in it (which drops
    every pin, and so every capture, of the lab). Returns the mount points it unmounted."""
    unmounted = bpffs.unmount_under(paths.root)
    shutil.rmtree(paths.root, ignore_errors=ignore_errors)
    return unmounted


# -- status


def load_status(paths: LabPaths) -> tuple[dict, bool]:
    running = is_running(paths)
    status = read_json(paths.status)
    if status is None:
        if running:
            raise LabError(f"lab {paths.name!r} is starting; try again in a moment")
        raise LabError(f"lab {paths.name!r} is not running; `ambient lab down --name {paths.name}` "
                       "removes what it left")
    return status, running


def cmd_status(args: argparse.Namespace) -> int:
    import datetime as dt

    from lab.listing import parse_timestamp
    from lab.status_view import render

    with root_needed("lab status", READS_STATE):
        paths = pick_lab(args.name)
        status, running = load_status(paths)
        record = read_json(paths.record) or {}
    lines, findings = config_errors(Path(status["config_dir"]))
    print(render(status, running, output=args.output, namespace=args.namespace, config_errors=lines,
                 findings=findings, lab_started=parse_timestamp(record.get("started")), now=dt.datetime.now(dt.UTC)))
    return 0


def config_errors(config_dir: Path) -> tuple[list[str], list[dict]]:
    """The errors ``ambient validate CONFIG_DIR`` finds in the lab's configuration directory, as its
    text lines and as its ``-o json`` findings: the directory the lab follows is checked as the lab
    checks it (a file with an error is not applied, and its previous resources stay in force). A
    directory gone (the lab was started from a removed checkout) has none to report."""
    from controlplane.validate import to_json, validate
    from mesh.source import Severity

    if not config_dir.is_dir():
        return [], []
    resources, problems = validate([config_dir])
    errors = sorted((p for p in problems if p.severity is Severity.ERROR), key=lambda p: (p.file, p.line))
    return [f"{p} [{p.code}]" for p in errors], to_json(resources, errors)["findings"]


# -- logs


def _find_pod(status: dict, target: str) -> dict:
    from lab.log_view import LogOptionError, pick_pod

    try:
        return pick_pod(status["pods"], target, status["lab"])
    except LogOptionError as exc:
        raise LabError(str(exc)) from None


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def cmd_logs(args: argparse.Namespace) -> int:
    with root_needed("lab logs", READS_STATE):
        return _logs(args)


def _logs(args: argparse.Namespace) -> int:
    from lab.log_view import LogOptionError, follow, pick_pod, read_selected

    since = None if args.since is None else time.time() - args.since
    tail = None if args.tail < 0 else args.tail
    paths = pick_lab(args.name)
    status, _ = load_status(paths)
    components = {"lab": paths.daemon_log, "controlplane": Path(status["controlplane"]["log"])}
    for node in status["nodes"]:
        components.update((c["name"], Path(c["log"])) for c in node["components"])
    if args.target in components:
        path = components[args.target]
    else:
        try:
            pod = pick_pod(status["pods"], args.target, status["lab"], args.namespace)
        except LogOptionError as exc:
            raise LabError(str(exc)) from None
        containers = {c["name"]: c for c in pod["containers"]}
        if args.container is None and len(containers) > 1:
            raise LabError(f"pod {pod['namespace']}/{pod['name']} has containers {', '.join(containers)}: "
                           "pick one with -c")
        container = containers.get(args.container) if args.container else next(iter(containers.values()), None)
        if container is None or "log" not in container:
            raise LabError(f"no log for container {args.container or '(none)'} of pod {pod['namespace']}/{pod['name']}")
        path = Path(container["log"])
    out = sys.stdout.buffer
    try:
        log = open(path, "rb")
    except FileNotFoundError:
        raise LabError(f"{path}: no log yet") from None
    with log:
        if since is None and tail is None:
            shutil.copyfileobj(log, out)
        else:
            out.writelines(read_selected(log, since=since, tail=tail))
        if args.follow:
            out.flush()

            def write(chunk: bytes) -> None:
                out.write(chunk)
                out.flush()

            follow(path, log, write)
    return 0


# -- down


def cmd_down(args: argparse.Namespace) -> int:
    with root_needed("lab down", REMOVES_NETNS):
        return _down(args)


def _down(args: argparse.Namespace) -> int:
    try:
        paths = pick_lab(args.name)
    except NoLabError:  # several, or a bad name, are errors: `down` must not guess which to remove
        print("No lab to take down", flush=True)
        return 0
    pid = daemon_pid(paths)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)  # it stops its processes and removes its network and state
        if not pidfd_wait(pid, STOP_TIMEOUT):
            print(f"The lab's daemon (pid {pid}) did not stop within {STOP_TIMEOUT:g} s; killing it", file=sys.stderr)
            os.kill(pid, signal.SIGKILL)
            pidfd_wait(pid, 10)
    # Whatever a daemon that crashed or was killed left: processes (with their cgroups), netns, files.
    from lab import network

    leftovers = [str(c) for c in _cleanup_cgroups(paths.name)] + network.destroy(paths.name)
    if paths.root.exists():
        leftovers += [f"bpffs {point}" for point in remove_state(paths)]
        leftovers.append(str(paths.root))
    if pid is None and not leftovers:
        print(f"Lab {paths.name!r}: nothing to remove", flush=True)
        return 0
    detail = f" (cleaned up after it: {', '.join(leftovers)})" if pid is None else ""
    print(f"Lab {paths.name!r} is down{detail}", flush=True)
    return 0


def _cleanup_cgroups(name: str) -> list[Path]:
    try:
        return cleanup_cgroups(name)
    except CgroupUnavailableError:
        return []


# -- exec


def cmd_exec(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise LabError("no command: ambient exec NAMESPACE/POD -- COMMAND...")
    if "/" not in args.pod:
        raise LabError(f"{args.pod}: say NAMESPACE/POD")
    with root_needed("exec", ENTERS_POD_NETNS):
        paths = pick_lab(args.name)
        status, _ = load_status(paths)
        pod = _find_pod(status, args.pod)
        if not pod["netns"]:
            raise LabError(f"pod {args.pod} has no network: it is {pod['state']} ({pod['message']})")
        netns_fd = os.open(netns_path(pod["netns"]), os.O_RDONLY)
        try:
            enter_netns(netns_fd)
        finally:
            os.close(netns_fd)
    # Into the first container's cgroup, as `kubectl exec` runs in the container: `lab down` ends it too.
    for container in pod["containers"]:
        cgroup = process_cgroup(paths.name, container_process_name(pod["namespace"], pod["name"], container["name"]))
        try:
            (cgroup / "cgroup.procs").write_text("0")
        except OSError:
            continue
        break
    env = {**os.environ, "POD_NAME": pod["name"], "POD_NAMESPACE": pod["namespace"], "POD_IP": pod["ip"]}
    # The pod's DNS (its namespace's resolv.conf over /etc/resolv.conf, in a mount namespace of its own),
    # then as isolated from the node as the pod's own containers: what a pod can do, exec can, no more.
    resolv_conf = resolv_conf_path(paths, pod["namespace"])
    if resolv_conf.is_file():  # a lab started before cluster DNS has none
        prepare_mount(resolv_conf)()
    pod_sandbox(paths, Path(status["config_dir"])).prepare()()
    sys.stdout.flush()
    try:
        os.execvpe(command[0], command, env)
    except FileNotFoundError:
        print(f"ambient exec: {command[0]}: command not found", file=sys.stderr)
        return 127
    except PermissionError as exc:
        print(f"ambient exec: {command[0]}: {exc.strerror}", file=sys.stderr)
        return 126
