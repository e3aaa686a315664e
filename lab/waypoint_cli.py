"""``ambient waypoint apply|list|delete|status``: istioctl's waypoint commands over a directory of YAML.

Where istioctl talks to the Kubernetes API, these read and write the configuration directory: the
running lab's (``--lab`` picks it as ``--name`` does for ``ambient lab``; the waypoint's own name is
``--name``, as in istioctl) or one given with ``--config DIR``. The lab and its control plane follow
that directory, so an applied waypoint starts running and a deleted one stops without a restart.

- ``apply`` writes one file per waypoint, ``<dir>/waypoint.<ns>.<name>.yaml`` (atomically, under a
  hidden temporary name that no reader of the directory picks up), holding the Gateway istioctl
  would apply. Applying again rewrites it, as istioctl's server-side apply replaces the fields it
  owns (a new ``--for`` needs no ``--overwrite``: that flag is about the namespace's label). A
  waypoint of that name declared in another file is left alone: the command says where it is.
- ``--enroll-namespace`` sets ``istio.io/use-waypoint`` on the Namespace. If no file declares the
  namespace, it writes ``<dir>/namespace.<ns>.yaml``; if the user's file does, only that label is
  written into that document, leaving the rest of the file as it was (``lab.yaml_edit``).
- ``list`` and ``status`` report ``PROGRAMMED`` from the lab's status (the waypoint pod is Ready:
  its proxy has its certificate and its config); with no running lab on that directory the
  condition is ``Unknown``, as Kubernetes says of a condition nobody has reported yet.
- ``--wait`` (``apply`` and ``status``) returns once traffic can use the waypoint: its pod Ready, and
  its workload listed ``Healthy`` in the ``/config_dump`` of every node's ztunnel (the source ztunnel
  of a request sends to a waypoint only over healthy workloads; ``lab.admin_client`` asks each one
  inside its node's netns). Nodes without a ztunnel are skipped. On timeout it says what is missing.
- ``delete`` removes the files ``apply`` wrote; a waypoint declared in a user's file is refused with
  the file's name.

Errors are one line and exit 1 (``mesh.errors.UsageError``). ``ambient waypoint run`` (the proxy)
is registered here from ``waypoint.cli``; the ``ambient`` entry point registers only that one when
it is the command, so the proxy never loads the lab's modules.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from lab.listing import add_output_flag
from mesh import resources as r
from mesh.errors import UsageError
from waypoint.cli import register_run

DEFAULT_NAMESPACE = "default"  # istioctl's namespace when the kubeconfig names none
DEFAULT_WAYPOINT = "waypoint"  # istioctl's default waypoint name (constants.DefaultNamespaceWaypoint)
WAIT_TIMEOUT = 90.0  # seconds: istioctl's --waypoint-timeout default
POLL_INTERVAL = 1.0  # seconds between reads of the lab's status while waiting, as istioctl's ticker
FETCH_TIMEOUT = 5.0  # seconds for one ztunnel's /config_dump while waiting (it answers from memory)
# A look after the deadline still gives each ztunnel this long: the wait overruns by at most this per node.
MIN_FETCH_TIMEOUT = 0.2
HEALTHY = "Healthy"  # a workload's status in ztunnel's dump (ztunnel/dump.py, as Istio's) that it sends to
TABLE_PADDING = 5  # spaces after each column but the last: istioctl's tabwriter padding
WRITTEN_BY = "# Written by `ambient waypoint apply`; `ambient waypoint delete` removes it.\n"
UNKNOWN = "Unknown"


def register(subparsers: argparse._SubParsersAction) -> None:
    from lab.state import LAB_ENV

    group = subparsers.add_parser("waypoint", help="manage waypoints, as istioctl waypoint does")
    sub = group.add_subparsers(dest="waypoint_command", required=True, metavar="COMMAND")

    def command(name: str, help: str, func, namespace_default: str | None = DEFAULT_NAMESPACE):
        parser = sub.add_parser(name, help=help)
        parser.add_argument("-n", "--namespace", default=namespace_default,
                            help=f"the namespace (default {DEFAULT_NAMESPACE})")
        parser.add_argument("--lab", help="the lab whose configuration directory to use "
                            f"(default ${LAB_ENV}, else the only one)")
        parser.add_argument("--config", type=Path, metavar="DIR", help="a configuration directory instead of a lab's")
        parser.set_defaults(func=_with_lab(name, func))
        return parser

    apply = command("apply", "write a waypoint Gateway into the configuration directory", cmd_apply)
    apply.add_argument("--name", default=DEFAULT_WAYPOINT, help=f"name of the waypoint (default {DEFAULT_WAYPOINT})")
    apply.add_argument("--for", dest="traffic_type", default="", metavar="TYPE",
                       help=f"the traffic type {sorted(r.WAYPOINT_FOR_VALUES)} for the waypoint")
    apply.add_argument("--enroll-namespace", action="store_true",
                       help="if set, the namespace will be labeled with the waypoint name")
    apply.add_argument("--overwrite", action="store_true", help="overwrite the existing waypoint used by the namespace")
    apply.add_argument("-r", "--revision", default="", help="the revision to label the waypoint with")
    apply.add_argument("-w", "--wait", action="store_true", help="wait for the waypoint to be ready")
    apply.add_argument("--waypoint-timeout", type=float, default=WAIT_TIMEOUT, metavar="SECONDS",
                       help=f"timeout for waiting for the waypoint to be ready (default {WAIT_TIMEOUT:g})")

    listing = command("list", "list the waypoints", cmd_list)
    listing.add_argument("-A", "--all-namespaces", action="store_true", help="list waypoints in all namespaces")
    add_output_flag(listing)

    delete = command("delete", "delete waypoints written by `ambient waypoint apply`", cmd_delete)
    delete.add_argument("names", nargs="*", metavar="NAME")
    delete.add_argument("--all", action="store_true", help="delete all waypoints in the namespace")

    status = command("status", "show whether the waypoints of a namespace are programmed", cmd_status,
                     namespace_default=None)
    status.add_argument("--name", help="only this waypoint")
    status.add_argument("-w", "--wait", action="store_true", help="wait until each waypoint is programmed")
    status.add_argument("--waypoint-timeout", type=float, default=WAIT_TIMEOUT, metavar="SECONDS",
                        help=f"timeout for waiting for the status (default {WAIT_TIMEOUT:g})")

    register_run(sub)


USES_LAB = "it uses the lab's state, which only root may"


Command = Callable[[argparse.Namespace], int | None]


def _with_lab(name: str, func: Command) -> Command:
    """``func`` that, on a lab's directory (no ``--config``), says in one line that it needs root
    where the kernel refuses a user who is not (the lab's lock, its directory, a node's netns)."""
    def run(args: argparse.Namespace) -> int | None:
        if args.config is not None:
            return func(args)
        from lab.cli import root_needed

        with root_needed(f"waypoint {name} --lab", USES_LAB):
            return func(args)

    return run


# -- where the configuration is, and what it holds


@dataclass(frozen=True)
class Target:
    """The configuration directory, and the lab that follows it (None: no running lab does)."""

    directory: Path
    status_path: Path | None = None

    def lab_status(self) -> dict | None:
        """The lab's status.json, if a lab runs on this directory."""
        from lab.state import read_json

        if self.status_path is None:
            return None
        status = read_json(self.status_path)
        if status is None or Path(status.get("config_dir", "")) != self.directory:
            return None
        return status


def find_target(args: argparse.Namespace) -> Target:
    from lab.state import LabNotFoundError, NoLabError, is_running, pick_lab, read_json

    if args.config is not None:
        directory = args.config.absolute()
        if not directory.is_dir():
            raise UsageError(f"--config: {args.config} is not a directory")
        try:  # a lab on this very directory reports the waypoints' status
            paths = pick_lab(args.lab, flag="--lab")
            running = is_running(paths)
        except (LabNotFoundError, ValueError):
            return Target(directory)
        except PermissionError:  # the lab's lock is root's: to a user who is not, its status is unknown
            return Target(directory)
        return Target(directory, paths.status if running else None)
    try:
        paths = pick_lab(args.lab, flag="--lab")
    except NoLabError as exc:
        raise UsageError(f"{exc}, or name a configuration directory with --config DIR") from None
    except ValueError as exc:  # the name's rule, already naming --lab or AMBIENT_LAB
        raise UsageError(str(exc)) from None
    record = read_json(paths.record) if is_running(paths) else None
    if not record or "config_dir" not in record:
        raise UsageError(f"lab {paths.name!r} is not running; start it with `ambient lab up DIR`, "
                         "or name a configuration directory with --config DIR")
    return Target(Path(record["config_dir"]), paths.status)


def waypoint_file(directory: Path, namespace: str, name: str) -> Path:
    return directory / f"waypoint.{namespace}.{name}.yaml"


def namespace_file(directory: Path, namespace: str) -> Path:
    return directory / f"namespace.{namespace}.yaml"


def written_here(path: Path) -> bool:
    """Whether ``path`` is a file these commands wrote (its first line says so)."""
    try:
        with open(path) as f:
            return f.readline() == WRITTEN_BY
    except OSError:
        return False


def read_directory(directory: Path):
    """The resources of the directory's YAML (documents with errors are left out, as the lab
    leaves them out) and the cluster state they make."""
    from controlplane.view import ClusterState
    from mesh.parse import parse_paths

    resources = parse_paths([directory]).resources
    return resources, ClusterState.build(resources)


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``text`` at once: a reader sees the old file or the new one. The
    temporary file is hidden and not .yaml, so that no watcher of the directory reads it."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, mode)  # O_CREAT's mode is masked by the umask
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def check_name(what: str, value: str) -> None:
    from mesh.identity import validate_k8s_name

    try:
        validate_k8s_name(what, value)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


# -- apply


def gateway_yaml(namespace: str, name: str, traffic_type: str, revision: str) -> str:
    """The Gateway ``istioctl waypoint generate`` prints, keys sorted as sigs.k8s.io/yaml writes them."""
    labels = {key: value for key, value in ((r.WAYPOINT_FOR, traffic_type), ("istio.io/rev", revision)) if value}
    label_lines = "".join(f"    {key}: {value}\n" for key, value in sorted(labels.items()))
    return (WRITTEN_BY + "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n"
            + ("  labels:\n" + label_lines if labels else "")
            + f"  name: {name}\n  namespace: {namespace}\n"
            f"spec:\n  gatewayClassName: {r.WAYPOINT_CLASS}\n  listeners:\n"
            "  - name: mesh\n    port: 15008\n    protocol: HBONE\n")


def namespace_yaml(namespace: str, labels: dict[str, str]) -> str:
    label_lines = "".join(f"    {key}: {value}\n" for key, value in sorted(labels.items()))
    return (WRITTEN_BY + f"apiVersion: v1\nkind: Namespace\nmetadata:\n  labels:\n{label_lines}  name: {namespace}\n")


def _declared(resources, kind: str, namespace: str, name: str) -> list[r.Resource]:
    return [res for res in resources if res.kind == kind and res.meta.namespace == namespace and res.meta.name == name]


def cmd_apply(args: argparse.Namespace) -> int:
    namespace, name = args.namespace, args.name or DEFAULT_WAYPOINT
    if name == "none":
        raise UsageError("invalid name provided for waypoint, 'none' is a reserved value")
    check_name("--namespace", namespace)
    check_name("--name", name)
    if args.traffic_type and args.traffic_type not in r.WAYPOINT_FOR_VALUES:
        valid = " ".join(sorted(r.WAYPOINT_FOR_VALUES))
        raise UsageError(f"invalid traffic type: {args.traffic_type}. Valid options are: [{valid}]")
    target = find_target(args)
    resources, state = read_directory(target.directory)
    path = waypoint_file(target.directory, namespace, name)
    for gateway in _declared(resources, "Gateway", namespace, name):
        if Path(gateway.origin.file).absolute() != path.absolute():
            raise UsageError(f"Gateway {namespace}/{name} is declared in {gateway.origin.file} (line "
                             f"{gateway.origin.line}), which this command did not write: change it there")
    if path.exists() and not written_here(path):
        raise UsageError(f"{path} exists and was not written by `ambient waypoint apply`: move it away first")
    ns = state.namespaces.get(namespace)
    ns_labels = ns.meta.labels if ns is not None else {}
    if args.enroll_namespace:
        if not args.overwrite and ns_labels.get(r.USE_WAYPOINT):
            print(f"⚠️ Warning: namespace ({namespace}) already has an enrolled Waypoint. Consider adding the "
                  "`--overwrite` flag to your apply command.")
            return 0
        if ns_labels.get(r.DATAPLANE_MODE) != "ambient":
            print("⚠️ Warning: namespace is not enrolled in ambient. Consider running\t"
                  f"`kubectl label namespace {namespace} istio.io/dataplane-mode=ambient`")
    write_atomic(path, gateway_yaml(namespace, name, args.traffic_type, args.revision))
    print(f"✅ waypoint {namespace}/{name} applied")
    if args.wait:
        if target.status_path is None:
            raise UsageError("--wait: no running lab follows this directory to run the waypoint")
        missing = wait_usable(target, namespace, name, args.waypoint_timeout)
        if missing:
            raise UsageError(f"timed out while waiting for waypoint {namespace}/{name}: {'; '.join(missing)}")
        print(f"✅ waypoint {namespace}/{name} is ready!")
    if args.enroll_namespace:
        label_namespace(target.directory, resources, namespace, name)
        print(f'✅ namespace {namespace} labeled with "{r.USE_WAYPOINT}: {name}"')
    return 0


def label_namespace(directory: Path, resources, namespace: str, waypoint: str) -> None:
    """Set ``istio.io/use-waypoint: <waypoint>`` on the Namespace: in the file that declares it
    (only that label is written), or in a Namespace file of our own if no file does."""
    from lab.yaml_edit import YamlEditError, set_label

    declared = _declared(resources, "Namespace", "", namespace)  # cluster-scoped: no namespace of its own
    if len(declared) > 1:
        files = ", ".join(sorted({res.origin.file for res in declared}))
        raise UsageError(f"namespace {namespace} is declared {len(declared)} times ({files}): keep one")
    if not declared:
        write_atomic(namespace_file(directory, namespace), namespace_yaml(namespace, {r.USE_WAYPOINT: waypoint}))
        return
    file = Path(declared[0].origin.file)
    text = file.read_text()
    try:
        edited = set_label(text, str(file), "Namespace", namespace, r.USE_WAYPOINT, waypoint)
    except YamlEditError as exc:
        raise UsageError(str(exc)) from None
    write_atomic(file, edited, mode=file.stat().st_mode & 0o777)


# -- list and status


def _waypoints(target: Target, namespace: str | None) -> list[dict]:
    """The waypoints of the directory (of ``namespace``, or all), with what the lab says of each."""
    return _waypoints_in(target, namespace, target.lab_status())


def _waypoints_in(target: Target, namespace: str | None, status: Mapping | None) -> list[dict]:
    """As ``_waypoints``, with the lab's status already read (None: no lab runs on the directory)."""
    from lab.waypoints import waypoint_entries

    _, state = read_directory(target.directory)
    entries = waypoint_entries(state, status["pods"] if status else [])
    for entry in entries:
        entry["known"] = status is not None
    return [e for e in entries if namespace is None or e["namespace"] == namespace]


def format_columns(rows: list[list[str]]) -> str:
    """Columns as istioctl's tabwriter aligns them: each padded to its widest cell + 5."""
    from lab.listing import format_table

    return format_table(rows, gap=TABLE_PADDING)


def _programmed(entry: dict) -> str:
    if not entry["known"]:
        return UNKNOWN
    return "True" if entry["programmed"] else "False"


def cmd_list(args: argparse.Namespace) -> int:
    from lab.listing import JSON, YAML, Column, format_data, table_rows

    target = find_target(args)
    entries = _waypoints(target, None if args.all_namespaces else args.namespace)
    if args.output in (JSON, YAML):  # the same entries as data: an empty list, not a sentence
        print(format_data(entries, args.output))
        return 0
    if not entries:
        print("No waypoints found.")
        return 0
    columns = [Column("NAMESPACE", lambda e: e["namespace"])] if args.all_namespaces else []
    columns += [Column("NAME", lambda e: e["name"]), Column("REVISION", lambda e: e["revision"]),
                Column("TRAFFIC TYPE", lambda e: e["for"]), Column("PROGRAMMED", _programmed),
                Column("POD", lambda e: e["pod"], wide=True), Column("READY", lambda e: e["ready"], wide=True),
                Column("USED BY", lambda e: ", ".join(e["used_by"]) or "-", wide=True)]
    print(format_columns(table_rows(entries, columns, args.output)))
    return 0


def _condition(entry: dict, directory: Path) -> tuple[str, str, str]:
    from lab.waypoints import programmed_condition

    if not entry["known"]:
        return UNKNOWN, "Pending", f"no running lab follows {directory}"
    return programmed_condition(entry)


def ztunnel_nodes(status: Mapping) -> list[Mapping]:
    """The node entries of the lab's status whose node runs a ztunnel (``lab up --no-ztunnel``: none)."""
    from lab.components import ztunnel_name

    return [node for node in status.get("nodes", ())
            if any(c.get("name") == ztunnel_name(node["name"]) for c in node.get("components", ()))]


def workload_gap(dump: Mapping, pod: Mapping) -> str | None:
    """Why ``dump`` (a ztunnel's /config_dump) would still refuse traffic through the waypoint ``pod``
    (its entry in the lab's status): ztunnel sends to a waypoint only over its Healthy workloads.
    None once the dump lists the pod's workload, at the pod's current IP, Healthy."""
    what = f"pod {pod['namespace']}/{pod['name']}"
    listed = [w for w in dump.get("workloads") or () if isinstance(w, dict)
              and w.get("namespace") == pod["namespace"] and w.get("name") == pod["name"]]
    if not listed:
        return f"does not list {what} yet"
    here = [w for w in listed if pod["ip"] in (w.get("workloadIps") or ())]
    if not here:
        elsewhere = sorted({ip for w in listed for ip in w.get("workloadIps") or ()})
        return f"lists {what} at {', '.join(elsewhere) or 'no address'}, not at {pod['ip']}"
    if not any(w.get("status") == HEALTHY for w in here):
        return f"lists {what} as {here[0].get('status') or 'of unknown health'}, not {HEALTHY}"
    return None


def _what_is_missing(target: Target, namespace: str, name: str, fetch_timeout: float) -> list[str]:
    """One look: what still keeps traffic from the waypoint (empty: nothing). Its pod must be Ready
    (the lab's Programmed condition), and every ztunnel of the lab must list the pod's workload
    Healthy, else a source on that node is reset ("waypoint ... has no healthy endpoint")."""
    from lab.admin_client import ConfigFetchError, NetnsAccessError, fetch_config_dump, node_admin_target
    from lab.components import ztunnel_name
    from lab.waypoints import programmed_condition

    status = target.lab_status()
    if status is None:
        return ["the lab no longer runs on this directory"]
    entry = next((e for e in _waypoints_in(target, namespace, status) if e["name"] == name), None)
    if entry is None:
        return [f"the lab runs no waypoint {namespace}/{name}"]
    if not entry["programmed"]:
        return [programmed_condition(entry)[2]]
    pod = next((p for p in status["pods"] if (p["namespace"], p["name"]) == (namespace, entry["pod"])), None)
    if pod is None or not pod.get("ip"):  # Ready without an address: a status written mid-change
        return [f"waypoint pod {namespace}/{entry['pod']} has no address yet"]
    missing = []
    for node in ztunnel_nodes(status):
        try:
            dump = fetch_config_dump(node_admin_target(node, status.get("lab", "")), fetch_timeout)
        except NetnsAccessError as exc:  # waiting will not make us root
            raise UsageError(f"--wait: {exc}") from None
        except ConfigFetchError as exc:  # a ztunnel (re)starting: ask again next round
            missing.append(str(exc))
            continue
        gap = workload_gap(dump, pod)
        if gap is not None:
            missing.append(f"{ztunnel_name(node['name'])} {gap}")
    return missing


def wait_usable(target: Target, namespace: str, name: str, timeout: float, *,
                clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> list[str]:
    """Poll until traffic can use the waypoint: its pod Ready (read as `list` reads it) and its
    workload Healthy in every node's ztunnel. [] then; after ``timeout`` seconds, what is still
    missing. A waypoint only Ready can still see the first request reset, as its source's ztunnel
    has not yet heard of it: istioctl's --wait has the same gap, closed here since the lab can ask."""
    deadline = clock() + timeout
    while True:
        fetch_timeout = min(FETCH_TIMEOUT, max(MIN_FETCH_TIMEOUT, deadline - clock()))
        missing = _what_is_missing(target, namespace, name, fetch_timeout)
        if not missing:
            return []
        if clock() >= deadline:
            return missing
        sleep(min(POLL_INTERVAL, max(0.0, deadline - clock())))


def cmd_status(args: argparse.Namespace) -> int:
    target = find_target(args)
    namespace = args.namespace or DEFAULT_NAMESPACE
    entries = [e for e in _waypoints(target, namespace) if args.name is None or e["name"] == args.name]
    if not entries:
        print("No waypoints found.")
        return 0
    if args.wait:
        if target.lab_status() is None:
            raise UsageError("--wait: no running lab follows this directory to run the waypoints")
        for entry in entries:
            missing = wait_usable(target, entry["namespace"], entry["name"], args.waypoint_timeout)
            if missing:
                raise UsageError("timed out while retrieving status for waypoint "
                                 f"{entry['namespace']}/{entry['name']}: {'; '.join(missing)}")
        entries = [e for e in _waypoints(target, namespace) if args.name is None or e["name"] == args.name]
    head = ["NAME", "STATUS", "TYPE", "REASON", "MESSAGE"]
    rows = []
    for entry in entries:
        status, reason, message = _condition(entry, target.directory)
        row = [entry["name"], status, "Programmed", reason, message]
        rows.append([entry["namespace"], *row] if args.namespace is None else row)
    print(format_columns([["NAMESPACE", *head] if args.namespace is None else head, *rows]))
    return 0


# -- delete


def cmd_delete(args: argparse.Namespace) -> int:
    if args.all and args.names:
        raise UsageError("cannot specify waypoint names when deleting all waypoints")
    if not args.all and not args.names:
        raise UsageError("must specify a waypoint name or delete all using --all")
    target = find_target(args)
    resources, _ = read_directory(target.directory)
    namespace = args.namespace
    waypoints = {res.meta.name: res for res in resources
                 if isinstance(res, r.Gateway) and res.is_waypoint and res.meta.namespace == namespace}
    names = sorted(waypoints) if args.all else args.names
    refused = []
    for name in names:
        gateway = waypoints.get(name)
        if gateway is None:
            print(f"waypoint {namespace}/{name} not found")
            continue
        file = Path(gateway.origin.file)
        if file.absolute() != waypoint_file(target.directory, namespace, name).absolute() or not written_here(file):
            refused.append(f"waypoint {namespace}/{name} is declared in {file} (line {gateway.origin.line}), "
                           "which `ambient waypoint apply` did not write: remove it there")
            continue
        file.unlink()
        print(f"waypoint {namespace}/{name} deleted")
    if refused:
        sys.stdout.flush()
        raise UsageError("; ".join(refused))
    return 0
