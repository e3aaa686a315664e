"""The waypoint's side ports, the same as ztunnel's (``mesh.http_admin``): 15000 admin on loopback
(``/config_dump``, ``/logging``, ``/quitquitquit``), 15020 ``/metrics``, 15021 ``/healthz/ready``.

``WaypointAdmin`` is ``ProxyAdmin`` under the waypoint's name, over any ``mesh.http_admin.AdminView``
(``config_dump()``, ``ready()``, ``metrics()``). ``WaypointAdminView`` is that view made of the
pieces the waypoint process has: its ``DumpView`` (``waypoint.dump``), its ``WaypointMetrics``, and
whether discovery has answered. Readiness follows issue 19: a waypoint is ready once it holds its
certificate and its first configuration, and its HBONE listener is bound; until then it says which
of these it waits for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mesh.http_admin import AdminView, LogLevels, ProxyAdmin
from waypoint.dump import DumpView, config_dump
from waypoint.metrics import WaypointMetrics

__all__ = ["WaypointAdmin", "WaypointAdminView", "readiness"]


def readiness(view: DumpView, synced: bool) -> tuple[bool, str]:
    """Whether the waypoint can serve, and what it waits for (or serves) in words."""
    waiting = []
    if view.certificate is None:
        waiting.append(f"the certificate of {view.identity}")
    if not synced:
        waiting.append("the first discovery update")
    if view.hbone_address is None:
        waiting.append("its HBONE listener")
    if waiting:
        return False, "waiting for " + ", ".join(waiting)
    return True, f"serving {len(view.served_services)} service(s) for {view.gateway}"


class WaypointAdminView:
    """An ``AdminView`` of the waypoint process: ``synced`` says whether discovery has answered."""

    def __init__(self, view: DumpView, metrics: WaypointMetrics, synced: Callable[[], bool]) -> None:
        self._view = view
        self._metrics = metrics
        self._synced = synced

    def metrics(self) -> bytes:
        return self._metrics.exposition()

    def config_dump(self) -> dict[str, Any]:
        return config_dump(self._view)

    def ready(self) -> tuple[bool, str]:
        return readiness(self._view, self._synced())


class WaypointAdmin(ProxyAdmin):
    """The admin, stats and readiness servers of one waypoint, over ``view``."""

    def __init__(self, view: AdminView, log_levels: LogLevels | None = None) -> None:
        super().__init__(view, log_levels, name="waypoint")
