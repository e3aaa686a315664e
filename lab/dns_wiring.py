"""The lab daemon's wiring of the cluster DNS, and the wait for a component's port to accept.

How it works: ``ClusterDns`` is the daemon's handle on its DNS server (``lab.dns_server``, run by the
daemon's ``Supervisor`` in the ``cp`` netns): ``start`` writes the first view (the directory as read,
no pod IPs yet), starts the process and waits until its TCP port accepts, which the server opens
after its UDP socket; ``write_view`` rewrites the view file only when the view changed (the server
watches the file); ``resolv_conf`` writes a namespace's ClusterFirst resolv.conf, which every pod's
containers and exec probes see over /etc/resolv.conf (``lab.resolv``).

``wait_for_port`` is the readiness wait the control plane and the DNS share: a component is ready once
its port accepts in the control plane's netns, and a process that exits meanwhile is reported at once
rather than waited for until the timeout.
"""

from __future__ import annotations

from pathlib import Path

import trio

from lab import components, network
from lab.dns import DnsView
from lab.processes import ProcessSpec, ProcessState, Supervisor
from lab.resolv import write_resolv_conf
from lab.state import LabPaths
from lab.topology import LabPlan
from mesh.watched_file import write_json_atomic

READY_INTERVAL = 0.05  # between tries of a component's port
DNS_READY_TIMEOUT = 30.0  # a Python process importing trio and dnspython binds in well under a second


async def open_tcp_in_netns(netns: str, host: str, port: int) -> trio.SocketStream:
    sock = trio.socket.from_stdlib_socket(network.socket_in_netns(netns))
    try:
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def wait_for_port(supervisor: Supervisor, spec: ProcessSpec, netns: str, host: str, port: int,
                        timeout: float, what: str) -> None:
    """Until ``host:port`` accepts in ``netns``; ``spec``'s process exiting (or restarting) meanwhile
    raises RuntimeError naming ``what`` and its log."""
    with trio.fail_after(timeout):
        while True:
            status = supervisor.status()[spec.name]
            if status.restarts > 0 or status.state is not ProcessState.RUNNING:
                raise RuntimeError(f"{what} exited ({status.error or status.last_exit}); see {spec.log_path}")
            try:
                stream = await open_tcp_in_netns(netns, host, port)
            except OSError:
                await trio.sleep(READY_INTERVAL)
                continue
            await stream.aclose()
            return


class ClusterDns:
    """The daemon's cluster DNS: its process, its view file and the namespaces' resolv.conf files."""

    def __init__(self, paths: LabPaths) -> None:
        self.paths = paths
        self._view: DnsView | None = None  # the view last written for the server

    async def start(self, supervisor: Supervisor, plan: LabPlan, view: DnsView, log_level: str) -> str:
        """Write ``view``, start the server and wait until it serves; where it serves ("host:port")."""
        await trio.to_thread.run_sync(self.write_view, view)
        spec = components.dns_process(self.paths, plan, log_level)
        await supervisor.start(spec)
        host, port = components.dns_address(plan)
        await wait_for_port(supervisor, spec, plan.control_plane.netns, host, port, DNS_READY_TIMEOUT,
                            "the cluster DNS")
        return f"{host}:{port}"

    def write_view(self, view: DnsView) -> None:
        """Blocking (call it in a thread): the view file, only if ``view`` differs from the last one."""
        if view != self._view:
            path = components.dns_view_path(self.paths)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, view.to_json(), mode=0o644)
            self._view = view

    def resolv_conf(self, plan: LabPlan, namespace: str) -> Path:
        """Blocking: the namespace's resolv.conf, written (again: the same content) before each pod starts."""
        return write_resolv_conf(components.resolv_conf_path(self.paths, namespace), namespace,
                                 components.dns_address(plan)[0])
