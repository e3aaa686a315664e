"""ztunnel's node ports: admin (``/config_dump``, ``/logging``, ``/quitquitquit``), stats (``/metrics``)
and readiness (DESIGN.md section 7).

The HTTP server, the routes every proxy shares and the log levels are ``mesh.http_admin``'s (the
waypoint serves the same ports the same way); ``ZtunnelAdmin`` is that ``ProxyAdmin`` under
ztunnel's name, over an ``AdminView`` of the ztunnel process (its config dump, its readiness, its
metrics). The shared names are re-exported here, where ztunnel's command, ``ambient
ztunnel-config`` and the benchmarks have always found the ports.
"""

from __future__ import annotations

from mesh.http_admin import (
    ADMIN_PORT,
    DEFAULT_ADMIN_LISTEN,
    DEFAULT_READINESS_LISTEN,
    DEFAULT_STATS_LISTEN,
    READINESS_PORT,
    STATS_PORT,
    AdminView,
    LogLevels,
    ProxyAdmin,
    Response,
    serve_http,
)

__all__ = ["ADMIN_PORT", "DEFAULT_ADMIN_LISTEN", "DEFAULT_READINESS_LISTEN", "DEFAULT_STATS_LISTEN", "READINESS_PORT",
           "STATS_PORT", "AdminView", "Response", "ZtunnelAdmin", "serve_http"]


class ZtunnelAdmin(ProxyAdmin):
    """The admin, stats and readiness servers of one ztunnel, over ``view``."""

    def __init__(self, view: AdminView, log_levels: LogLevels | None = None) -> None:
        super().__init__(view, log_levels, name="ztunnel")
