"""The waypoint's metrics: Istio's standard request and TCP metrics, ``reporter="waypoint"``
(DESIGN.md section 8, Istio's "Istio Standard Metrics").

Two halves, as ztunnel's. ``request_labels`` and ``tcp_labels`` are pure: from a finished request
or tunnel (``waypoint.records``) they return the label set Istio's waypoint reports, the source and
destination labels coming from ``mesh.istio_labels`` (the same functions ztunnel labels with, so a
workload is named alike on every hop). ``WaypointMetrics`` counts them, keyed by label set, and
renders Prometheus's text format (``exposition``, ``mesh.prometheus``):

    istio_requests_total                      counter, +1 per request (or gRPC call) that ended
    istio_request_duration_milliseconds       histogram of its duration, Envoy's default buckets
    istio_request_bytes                       histogram of its request body size
    istio_response_bytes                      histogram of its response body size
    istio_tcp_connections_opened_total        opaque TCP tunnels (no HTTP inside), counted when they end
    istio_tcp_connections_closed_total
    istio_tcp_received_bytes_total            bytes from the client (Istio's "received during request")
    istio_tcp_sent_bytes_total                bytes to the client
    ambient_waypoint_open_tunnels             gauges of our own, read at each scrape from ``follow``'s
    ambient_waypoint_open_requests            source (the proxy), when one is given
    <a WasmPlugin's own>{plugin}              what plugins define (proxy_define_metric), by plugin
    istio_build{component="proxy",tag}        1, as Istio's proxies export it

Cardinality is bounded by the mesh, never by what clients send: every label value is read from the
discovery view (workloads, services), the identities TLS verified, or a small closed set (the
protocol, the status code, the gRPC status, Envoy's flags). There is no path, method, host or
header label, and a status or a gRPC status outside its range (an upstream may send anything) is
reported as ``"unknown"``, so a hostile peer cannot mint series.

Labels, where Istio leaves room: ``source_principal`` is the verified identity of the HBONE peer
(the source workload's certificate, which its ztunnel presents for it); ``destination_principal``
the identity the waypoint checked on its upstream tunnel, else the destination workload's; a
request without a Service (addressed to a pod IP) has ``destination_service*`` ``"unknown"``;
``response_code`` is ``"0"`` when no response was sent (the client left first), as Envoy reports it;
``grpc_response_status`` is ``""`` for a request that is not gRPC, as Istio's stats filter writes it.
The TCP series have the request label set without ``response_code`` and ``grpc_response_status``,
``request_protocol="tcp"``. Unlike ztunnel, the waypoint is handed a tunnel only when it ends, so it
is counted opened and closed then; the gauge of open tunnels is the live view.
"""

from __future__ import annotations

import re
import threading
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from typing import Protocol

from mesh import __version__
from mesh.istio_labels import MUTUAL_TLS, UNKNOWN, principal, service_labels, workload_labels
from mesh.prometheus import CONTENT_TYPE, Histogram, escape, family_header, render_labels
from waypoint.records import NO_FLAGS, RequestRecord, TcpRecord

__all__ = ["CONTENT_TYPE", "REPORTER", "REQUEST_LABEL_NAMES", "TCP_LABEL_NAMES", "WaypointMetrics",
           "request_labels", "tcp_labels"]

REPORTER = "waypoint"

# Istio's label set for the standard metrics, in the order its waypoint reports them.
REQUEST_LABEL_NAMES: tuple[str, ...] = (
    "reporter",
    "source_workload", "source_canonical_service", "source_canonical_revision", "source_workload_namespace",
    "source_principal", "source_app", "source_version", "source_cluster",
    "destination_workload", "destination_workload_namespace", "destination_principal", "destination_app",
    "destination_version", "destination_service", "destination_service_name", "destination_service_namespace",
    "destination_canonical_service", "destination_canonical_revision", "destination_cluster",
    "request_protocol", "response_code", "grpc_response_status", "response_flags", "connection_security_policy",
)
TCP_LABEL_NAMES: tuple[str, ...] = tuple(
    name for name in REQUEST_LABEL_NAMES if name not in ("response_code", "grpc_response_status"))

# The ranges a status may take before it is "unknown" (see the module's note on cardinality).
MIN_STATUS, MAX_STATUS = 100, 599  # HTTP status codes; 0 is "no response"
MAX_GRPC_STATUS = 16  # gRPC's codes are 0 (OK) .. 16 (UNAUTHENTICATED)

REQUESTS = "istio_requests_total"
DURATION = "istio_request_duration_milliseconds"
REQUEST_BYTES = "istio_request_bytes"
RESPONSE_BYTES = "istio_response_bytes"
TCP_OPENED = "istio_tcp_connections_opened_total"
TCP_CLOSED = "istio_tcp_connections_closed_total"
TCP_RECEIVED = "istio_tcp_received_bytes_total"
TCP_SENT = "istio_tcp_sent_bytes_total"
OPEN_TUNNELS = "ambient_waypoint_open_tunnels"
OPEN_REQUESTS = "ambient_waypoint_open_requests"

_HELP = {
    REQUESTS: "Total number of requests",
    DURATION: "Request duration in milliseconds",
    REQUEST_BYTES: "Request body size in bytes",
    RESPONSE_BYTES: "Response body size in bytes",
    TCP_OPENED: "The total number of TCP connections opened",
    TCP_CLOSED: "The total number of TCP connections closed",
    TCP_RECEIVED: "The size of total bytes received during request in case of a TCP connection",
    TCP_SENT: "The size of total bytes sent during response in case of a TCP connection",
    OPEN_TUNNELS: "HBONE tunnels the waypoint serves now (ambient-mesh's own)",
    OPEN_REQUESTS: "HTTP requests the waypoint is handling now (ambient-mesh's own)",
}


class OpenCounts(Protocol):
    """What the proxy counts live, read at each scrape."""

    @property
    def open_tunnels(self) -> int: ...

    @property
    def open_requests(self) -> int: ...

    def plugin_samples(self) -> Iterable[PluginSample]:
        """The metrics WasmPlugins defined (proxy_define_metric): (plugin, name, kind, value)."""
        ...


# One plugin metric: the WasmPlugin ("<ns>/<name>"), the name it gave, "counter" | "gauge" | "histogram",
# and its value ((count, sum) for a histogram, which the host keeps without buckets).
PluginSample = tuple[str, str, str, "int | tuple[int, int]"]
_METRIC_NAME = re.compile(r"[^a-zA-Z0-9_:]")


def plugin_metric_lines(samples: Iterable[PluginSample]) -> list[str]:
    """The plugins' metrics in the text format, one family per name, labelled by plugin. A name is the
    plugin's own with what the format does not allow turned into ``_`` (Envoy's ``wasmcustom.x`` is
    ``wasmcustom_x``); a name another plugin already gave another kind is left out (a family has one)."""
    families: dict[str, tuple[str, list[str]]] = {}
    for plugin, name, kind, value in samples:
        metric = _METRIC_NAME.sub("_", name)
        if not metric or metric[0].isdigit():
            metric = "_" + metric
        family = families.setdefault(metric, (kind, []))
        if family[0] != kind:
            continue
        labels = f'{{plugin="{escape(plugin)}"}}'
        if isinstance(value, tuple):
            count, total = value
            family[1].extend([f'{metric}_bucket{{plugin="{escape(plugin)}",le="+Inf"}} {count}',
                              f"{metric}_sum{labels} {total}", f"{metric}_count{labels} {count}"])
        else:
            family[1].append(f"{metric}{labels} {value}")
    lines: list[str] = []
    for metric, (kind, series) in families.items():
        lines += [*family_header(metric, kind, "Defined by a WasmPlugin"), *series]
    return lines


# The labels of the two ends, by the identity of the objects they come from: the view's workloads and
# services are immutable and swapped whole, so the same objects give the same labels. Each entry keeps
# its objects alive (so an id cannot be reused while it is cached); the cache is dropped when full.
_ENDS_CACHE_SIZE = 1024
_ends_cache: dict[tuple[int, ...], tuple[object, dict[str, str], tuple[str, ...]]] = {}

# Where the end labels sit in REQUEST_LABEL_NAMES: after "reporter", before "request_protocol"; the
# five that follow them are the request's own (see _request_key).
_ENDS_SLICE = slice(1, REQUEST_LABEL_NAMES.index("request_protocol"))


def _ends(record: RequestRecord | TcpRecord) -> tuple[dict[str, str], tuple[str, ...]]:
    """The end labels by name, and their values in the order of REQUEST_LABEL_NAMES (cached together)."""
    objects = (record.source, record.source_principal, record.destination, record.destination_principal,
               record.destination_service)
    key = tuple(map(id, objects))
    held = _ends_cache.get(key)
    if held is not None:
        return held[1], held[2]
    source_principal = str(record.source_principal) if record.source_principal else None
    destination_principal = str(record.destination_principal) if record.destination_principal else None
    labels = {
        **workload_labels("source", record.source),
        "source_principal": principal(source_principal, record.source, True),
        **workload_labels("destination", record.destination),
        "destination_principal": principal(destination_principal, record.destination, True),
        **service_labels(record.destination_service),
    }
    values = tuple(labels[name] for name in REQUEST_LABEL_NAMES[_ENDS_SLICE])
    if len(_ends_cache) >= _ENDS_CACHE_SIZE:
        _ends_cache.clear()
    _ends_cache[key] = (objects, labels, values)
    return labels, values


def _end_labels(record: RequestRecord | TcpRecord) -> dict[str, str]:
    return _ends(record)[0]


def _common_labels(record: RequestRecord | TcpRecord) -> dict[str, str]:
    return {
        "reporter": REPORTER,
        **_end_labels(record),
        "response_flags": record.response_flags or NO_FLAGS,
        "connection_security_policy": MUTUAL_TLS,  # HBONE both ways: the waypoint never sees plaintext
    }


def response_code(status: int) -> str:
    """The ``response_code`` label: the status, ``"0"`` for none, ``"unknown"`` outside HTTP's range."""
    return str(status) if status == 0 or MIN_STATUS <= status <= MAX_STATUS else UNKNOWN


def grpc_response_status(status: str | None) -> str:
    """The ``grpc_response_status`` label: ``""`` when not gRPC, the code 0..16, else ``"unknown"``."""
    if status is None:
        return ""
    text = status.strip()
    return text if text.isdigit() and len(text) <= 2 and int(text) <= MAX_GRPC_STATUS else UNKNOWN


def request_labels(record: RequestRecord) -> dict[str, str]:
    """The label set of ``record`` (every name of ``REQUEST_LABEL_NAMES``, in that order)."""
    labels = _common_labels(record)
    labels["request_protocol"] = record.protocol if record.protocol in ("http", "grpc") else "http"
    labels["response_code"] = response_code(record.status)
    labels["grpc_response_status"] = grpc_response_status(record.grpc_status)
    return {name: labels[name] for name in REQUEST_LABEL_NAMES}


def _request_key(record: RequestRecord) -> tuple[str, ...]:
    """``tuple(request_labels(record).values())``, without the dicts: the series key, once per request."""
    return (REPORTER, *_ends(record)[1], record.protocol if record.protocol in ("http", "grpc") else "http",
            response_code(record.status), grpc_response_status(record.grpc_status),
            record.response_flags or NO_FLAGS, MUTUAL_TLS)


def tcp_labels(record: TcpRecord) -> dict[str, str]:
    """The label set of an opaque tunnel (every name of ``TCP_LABEL_NAMES``, in that order)."""
    labels = _common_labels(record)
    labels["request_protocol"] = "tcp"
    return {name: labels[name] for name in TCP_LABEL_NAMES}


# A request's series, found by what its labels come from rather than by its labels (a tuple of 25
# strings to build and hash, for each of four families): the ends' objects by identity (see _ends) and
# the record's own fields. Raw fields: a status or gRPC status outside its range is another entry here
# for the same "unknown" series, so an upstream that sends many makes this cache drop more often, but
# never adds a series. Each entry keeps its objects alive; the cache is dropped when full.
_SERIES_CACHE_SIZE = 4096

_Buckets = tuple[list[int], list[float]]  # a histogram series: per-bucket counts, [sum]


def _observe(bounds: tuple[float, ...], series: _Buckets, value: float) -> None:
    """``Histogram.observe`` into a series already found."""
    series[0][bisect_left(bounds, value)] += 1
    series[1][0] += value


class WaypointMetrics:
    """The waypoint's series, rendered by ``exposition``. Safe to call from any thread."""

    def __init__(self, *, build_tag: str | None = None) -> None:
        self.build_tag = build_tag or __version__
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, ...], list[int]] = {}  # → [count]
        self._duration = Histogram()
        self._request_bytes = Histogram()
        self._response_bytes = Histogram()
        self._tcp: dict[str, dict[tuple[str, ...], int]] = {TCP_OPENED: {}, TCP_CLOSED: {}, TCP_RECEIVED: {},
                                                            TCP_SENT: {}}
        self._open: OpenCounts | None = None
        self._series: dict[tuple[object, ...], tuple[object, list[int], _Buckets, _Buckets, _Buckets]] = {}

    def follow(self, counts: OpenCounts | None) -> None:
        """Export ``counts``'s open tunnels and requests as gauges, read at each scrape."""
        self._open = counts

    def request(self, record: RequestRecord) -> None:
        """One request that ended (answered, refused, or abandoned)."""
        source, destination, service = record.source, record.destination, record.destination_service
        source_principal, destination_principal = record.source_principal, record.destination_principal
        found = (id(source), id(source_principal), id(destination), id(destination_principal), id(service),
                 record.protocol, record.status, record.grpc_status, record.response_flags)
        with self._lock:
            held = self._series.get(found)
            if held is None:
                key = _request_key(record)
                if len(self._series) >= _SERIES_CACHE_SIZE:
                    self._series.clear()
                held = self._series[found] = (
                    (source, source_principal, destination, destination_principal, service),
                    self._requests.setdefault(key, [0]), self._duration.series(key),
                    self._request_bytes.series(key), self._response_bytes.series(key))
            _, count, duration, request_bytes, response_bytes = held
            count[0] += 1
            _observe(self._duration.bounds, duration, max(record.duration, 0.0) * 1000.0)
            _observe(self._request_bytes.bounds, request_bytes, max(record.request_bytes, 0))
            _observe(self._response_bytes.bounds, response_bytes, max(record.response_bytes, 0))

    def tcp(self, record: TcpRecord) -> None:
        """One opaque TCP tunnel that ended: opened and closed, with its bytes."""
        key = tuple(tcp_labels(record).values())
        with self._lock:
            for name, amount in ((TCP_OPENED, 1), (TCP_CLOSED, 1), (TCP_RECEIVED, max(record.received_bytes, 0)),
                                 (TCP_SENT, max(record.sent_bytes, 0))):
                self._tcp[name][key] = self._tcp[name].get(key, 0) + amount

    def requests_total(self, labels: Mapping[str, str]) -> int:
        """The count of one series of ``istio_requests_total`` (for tests and the config dump)."""
        with self._lock:
            return self._requests.get(tuple(labels[name] for name in REQUEST_LABEL_NAMES), [0])[0]

    def exposition(self) -> bytes:
        """Every series in Prometheus's text format (``CONTENT_TYPE``), families in a fixed order."""
        with self._lock:
            lines = family_header(REQUESTS, "counter", _HELP[REQUESTS])
            lines += [f"{REQUESTS}{render_labels(REQUEST_LABEL_NAMES, key)} {count}"
                      for key, (count,) in self._requests.items()]
            for name, histogram in ((DURATION, self._duration), (REQUEST_BYTES, self._request_bytes),
                                    (RESPONSE_BYTES, self._response_bytes)):
                lines += family_header(name, "histogram", _HELP[name])
                lines += histogram.lines(name, REQUEST_LABEL_NAMES)
            for name, series in self._tcp.items():
                lines += family_header(name, "counter", _HELP[name])
                lines += [f"{name}{render_labels(TCP_LABEL_NAMES, key)} {value}" for key, value in series.items()]
        if self._open is not None:
            for name, value in ((OPEN_TUNNELS, self._open.open_tunnels), (OPEN_REQUESTS, self._open.open_requests)):
                lines += [*family_header(name, "gauge", _HELP[name]), f"{name} {value}"]
            lines += plugin_metric_lines(self._open.plugin_samples())
        lines += [*family_header("istio_build", "gauge", "Istio component build info"),
                  f'istio_build{{component="proxy",tag="{escape(self.build_tag)}"}} 1', ""]
        return "\n".join(lines).encode()
