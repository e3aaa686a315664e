"""The waypoint's access log: one JSON object per request, and per opaque TCP tunnel, to the logger
``ambient.waypoint.access`` at INFO (DESIGN.md section 8).

``request_entry`` and ``tcp_entry`` are pure: a finished record (``waypoint.records``) and the wall
time it ended give the object. The fields are those of Envoy's default access log as Istio encodes
it in JSON (``start_time``, ``method``, ``path``, ``protocol``, ``response_code``, ``response_flags``,
``authority``, ``request_id`` from x-request-id, ``route_name``), except where ztunnel's access log
(``ztunnel.connections.access_log_entry``) already names the same thing, whose name wins so that
one vocabulary reads both proxies' logs:

    time, message                   when the line was written (ISO 8601, UTC), and what happened
    src.addr, src.workload, src.namespace, src.identity     the client: its address (the original
                                    one, from ``forwarded``), its pod and namespace, its verified identity
    dst.addr                        where the request went (Envoy's ``upstream_host``): the endpoint
    dst.service, dst.workload, dst.namespace, dst.identity  the Service's hostname, the endpoint's pod
                                    and namespace, and the identity its tunnel proved
    duration                        whole milliseconds, as ztunnel writes it: ``"12ms"``
    bytes_recv, bytes_sent          body bytes from the client and to it (Envoy's ``bytes_received``
                                    and ``bytes_sent``; ztunnel's inbound meaning)
    policy, reason, error           the L7 policy that decided; why it denied (RBAC), or why the
                                    request failed otherwise: ztunnel's names for its decision and error
                                    (``detail`` for a note on a request that did not fail)

A field without a value is left out. ``start_time`` is RFC 3339 with milliseconds; records carry the
proxy's monotonic clock, so it is the end's wall time less the duration (the proxy hands a record
over as the response ends). Request content (path, authority, x-request-id) is written as received,
JSON-escaped, and is already bounded by the proxy's header limits (``waypoint.limits``).

Logging is off for a level above INFO on ``ambient.waypoint.access`` (``POST /logging?level=
ambient.waypoint.access:off``): nothing is built then.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable

from mesh.addresses import format_address
from mesh.api import workload_pb2 as wpb
from waypoint.records import NO_FLAGS, RequestRecord, TcpRecord

LOGGER_NAME = "ambient.waypoint.access"
RBAC_FLAG = "RBAC"
SERVER_ERROR = 500  # a response from this status up is a failure, as Envoy counts it


def _time(moment: dt.datetime) -> str:
    if moment.tzinfo is not dt.UTC:  # the clock's own times are UTC already: no new object for them
        moment = moment.astimezone(dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _address(address: tuple[str, int] | None) -> str | None:
    return format_address(*address) if address is not None else None


def _ends(record: RequestRecord | TcpRecord) -> dict[str, object]:
    """The fields of the two ends, with ztunnel's names."""
    source, destination, service = record.source, record.destination, record.destination_service
    return {
        "src.addr": _address(record.source_address),
        "src.workload": _pod(source), "src.namespace": source.namespace if source is not None else None,
        "src.identity": str(record.source_principal) if record.source_principal else None,
        "dst.addr": _address(record.upstream_address),
        "dst.service": service.hostname if service is not None else None,
        "dst.workload": _pod(destination),
        "dst.namespace": destination.namespace if destination is not None else None,
        "dst.identity": str(record.destination_principal) if record.destination_principal else None,
    }


def _pod(workload: wpb.Workload | None) -> str | None:
    return workload.name if workload is not None else None


def _flags(flags: str) -> list[str]:
    return [flag for flag in flags.split(",") if flag and flag != NO_FLAGS]


def _outcome(flags: list[str], detail: str | None, failed: bool) -> tuple[str, dict[str, str | None]]:
    """The message, and where the detail goes: ``reason`` for a policy denial, else ``error``."""
    if RBAC_FLAG in flags:
        return "denied", {"reason": detail}
    if flags or failed:
        return "failed", {"error": detail}
    return "complete", {"detail": detail}


def request_entry(record: RequestRecord, ended: dt.datetime) -> dict[str, object]:
    """The access log's object for ``record``, which ended at ``ended`` (an aware datetime)."""
    response_flags = record.response_flags
    # Most requests have no flags: no list to split them into then.
    flags = _flags(response_flags) if response_flags and response_flags != NO_FLAGS else []
    outcome, detail = _outcome(flags, record.detail, record.status == 0 or record.status >= SERVER_ERROR)
    duration = max(record.duration, 0.0)
    entry: dict[str, object | None] = {
        "time": _time(ended), "message": f"request {outcome}",
        "start_time": _time(ended - dt.timedelta(seconds=duration)),
        "method": record.method, "path": record.path, "protocol": record.http_version,
        "response_code": record.status, "response_flags": response_flags or NO_FLAGS,
        "grpc_status": record.grpc_status, "authority": record.authority, "request_id": record.request_id,
        **_ends(record),
        "duration": f"{int(duration * 1000)}ms",
        "bytes_recv": record.request_bytes, "bytes_sent": record.response_bytes,
        "route_name": record.route, "policy": record.policy, **detail,
    }
    return {key: value for key, value in entry.items() if value is not None}


def tcp_entry(record: TcpRecord, ended: dt.datetime) -> dict[str, object]:
    """The access log's object for an opaque TCP tunnel: ztunnel's fields, ``protocol`` ``"TCP"``."""
    flags = _flags(record.response_flags)
    outcome, detail = _outcome(flags, record.detail, False)
    entry: dict[str, object | None] = {
        "time": _time(ended), "message": f"connection {outcome}",
        "start_time": _time(ended - dt.timedelta(seconds=max(record.duration, 0.0))),
        "protocol": "TCP", "response_flags": record.response_flags or NO_FLAGS, **_ends(record),
        "duration": f"{int(max(record.duration, 0.0) * 1000)}ms",
        "bytes_recv": record.received_bytes, "bytes_sent": record.sent_bytes, **detail,
    }
    return {key: value for key, value in entry.items() if value is not None}


# json.dumps's own settings, without the check for circular references: an entry is flat, made here.
_ENCODER = json.JSONEncoder(check_circular=False)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class AccessLog:
    """Writes one JSON line per finished request or tunnel to ``logger`` (``ambient.waypoint.access``).

    ``clock`` gives the wall time a record is written at (a parameter for the tests)."""

    def __init__(self, logger: logging.Logger | None = None, clock: Callable[[], dt.datetime] = _now) -> None:
        self.logger = logger if logger is not None else logging.getLogger(LOGGER_NAME)
        self._clock = clock

    def request(self, record: RequestRecord) -> None:
        if self.logger.isEnabledFor(logging.INFO):
            self._write(_ENCODER.encode(request_entry(record, self._clock())), "request")

    def tcp(self, record: TcpRecord) -> None:
        if self.logger.isEnabledFor(logging.INFO):
            self._write(_ENCODER.encode(tcp_entry(record, self._clock())), "tcp")

    def _write(self, line: str, function: str) -> None:
        """``logger.info(line)`` without its search of the stack for the caller (a cost per request):
        the caller is known. The record goes through the logger's filters and handlers as any other."""
        logger = self.logger
        logger.handle(logger.makeRecord(logger.name, logging.INFO, __file__, 0, line, (), None, function))
