"""ztunnel's TCP metrics with Istio's names and labels (DESIGN.md section 7).

Two halves. ``tcp_labels`` is pure: from what the proxy knows about a connection (the reporter, the
source and destination workloads as discovery sent them, the verified principals, the destination
service, whether it is mTLS) it returns the label set, following Istio's ztunnel
(``src/proxy/metrics.rs``, ``CommonTrafficLabels``, locality labels included): every value that is not
known is ``"unknown"``; a plaintext connection's ``connection_security_policy`` is ``"unknown"`` too.
``ZtunnelMetrics`` holds the counters, keyed by label set, and renders them in Prometheus's text
format (``exposition``, version 0.0.4, which every Prometheus scraper reads):

    istio_tcp_connections_opened_total   +1 when a connection is opened (``opened``)
    istio_tcp_connections_closed_total   +1 when it ends, whatever the outcome (``closed``)
    istio_tcp_connections_failed_total   +1 when it ends having failed to connect upstream
    istio_tcp_received_bytes_total       bytes of the request direction (client → server)
    istio_tcp_sent_bytes_total           bytes of the response direction (server → client)
    istio_build{component="ztunnel",tag} 1, as every Istio component exports

and, read at each scrape from the discovery client and the pods ztunnel serves (``follow``), the
families of Istio's ztunnel ``src/xds/metrics.rs`` and ``src/inpod/metrics.rs``:

    istio_xds_connection_terminations_total{reason}  discovery streams ended: ConnectionError, Error,
                                                     Reconnect or Complete
    istio_message_types_total{url}                   discovery responses received, by type URL
    istio_total_messages_size_total                  the bytes of the resources in them
    istio_inpod_active_proxy_count                   pods served now (gauge)
    istio_inpod_pending_proxy_count                  pods added whose listeners are being made (gauge)
    istio_inpod_proxies_started_total                pods whose serving started
    istio_inpod_proxies_stopped_total                pods whose serving ended

and, with the DNS proxy (``ztunnel.dns_proxy``), those of ``src/dns/metrics.rs`` without labels:

    istio_dns_requests_total                         queries the pods sent to the proxy
    istio_dns_upstream_requests_total                queries forwarded upstream
    istio_dns_upstream_failures_total                forwarded queries no upstream answered

and one family of our own, which Istio's ztunnel does not have (``ztunnel.limits``):

    ambient_ztunnel_connections_refused_total{listener,reason}  connections closed at once, or CONNECTs
                                                     answered 503, because of a bound: ``reason``
                                                     pod_limit, node_limit, handshake_timeout,
                                                     tls_handshake (a failed TLS handshake on 15008) or
                                                     malformed_connect (a CONNECT answered 400);
                                                     ``listener`` outbound, inbound or hbone

As in Istio's ztunnel, a connection's ``response_flags`` is known only when it ends: it is opened,
and its bytes counted, under ``"-"``, and closed under the flag of its outcome: ``"DENY"`` (denied
by an AuthorizationPolicy), ``"CONNECT"`` (no upstream connection could be made; also counted as
failed) or ``"-"``. A denied connection is therefore counted as opened and as closed.

The byte directions are Istio's definitions ("received during request", "sent during response"),
the same for both reporters. Bytes may be added while the connection runs (``add_bytes``) or at the
end (``closed``); ``opened`` creates the byte series at 0, as Istio's ztunnel does, so a rate over
them exists from the first scrape. The exposition is rendered with ``mesh.prometheus`` (shared
with the waypoint) rather than by ``prometheus_client``: it has exactly Istio's series (no
``*_created`` samples beside each ``*_total``), and that library's import (its HTTP servers, email
and urllib included) was over 2 MiB of every ztunnel's idle memory. The control plane and the CA
still use it. The workload labels come from ``mesh.istio_labels``, which the waypoint uses too.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sized
from typing import Protocol

from mesh import __version__
from mesh.api import workload_pb2 as wpb
from mesh.istio_labels import DEFAULT_CLUSTER, MUTUAL_TLS, UNKNOWN, principal, service_labels, workload_labels
from mesh.prometheus import CONTENT_TYPE, escape as _escape, render_labels

__all__ = ["CONTENT_TYPE", "DEFAULT_CLUSTER", "MUTUAL_TLS", "UNKNOWN", "ZtunnelMetrics", "tcp_labels"]

REPORTER_SOURCE = "source"  # outbound: the ztunnel of the client
REPORTER_DESTINATION = "destination"  # inbound: the ztunnel of the server
NO_TLS = "unknown"  # what Istio's ztunnel reports for plaintext (its Envoy proxies say "none")

# response_flags, as Istio's ztunnel writes them.
FLAG_NONE = "-"
FLAG_DENIED = "DENY"  # denied by an AuthorizationPolicy
FLAG_CONNECT_FAILED = "CONNECT"  # no upstream connection could be made

# Istio's CommonTrafficLabels, in its order, the locality labels last.
LABEL_NAMES: tuple[str, ...] = (
    "reporter",
    "source_workload", "source_canonical_service", "source_canonical_revision", "source_workload_namespace",
    "source_principal", "source_app", "source_version", "source_cluster",
    "destination_service", "destination_service_namespace", "destination_service_name",
    "destination_workload", "destination_canonical_service", "destination_canonical_revision",
    "destination_workload_namespace", "destination_principal", "destination_app", "destination_version",
    "destination_cluster",
    "request_protocol", "response_flags", "connection_security_policy",
    "source_region", "source_zone", "destination_region", "destination_zone",
)
_FLAGS = LABEL_NAMES.index("response_flags")

OPENED = "istio_tcp_connections_opened"
CLOSED = "istio_tcp_connections_closed"
RECEIVED = "istio_tcp_received_bytes"
SENT = "istio_tcp_sent_bytes"
FAILED = "istio_tcp_connections_failed"
_HELP = {
    OPENED: "The total number of TCP connections opened",
    CLOSED: "The total number of TCP connections closed",
    RECEIVED: "The size of total bytes received during request in case of a TCP connection",
    SENT: "The size of total bytes sent during response in case of a TCP connection",
    FAILED: "The total number of TCP connections that failed to establish",
}


REFUSED = "ambient_ztunnel_connections_refused_total"
_REFUSED_HELP = ("Connections ztunnel closed at once, or CONNECTs it answered 503, because a bound was reached "
                 "(ambient-mesh's own: Istio's ztunnel has no such bounds)")


class DiscoveryCounts(Protocol):
    """What the discovery client counts (``mesh.xds.client.DiscoveryClient``)."""

    @property
    def terminations(self) -> Mapping[str, int]: ...

    @property
    def messages(self) -> Mapping[str, int]: ...

    @property
    def received_bytes(self) -> int: ...


class PodCounts(Protocol):
    """What the pod set counts (``ztunnel.pods.PodSet``): ``pods`` served now, ``pending`` ones."""

    @property
    def pods(self) -> Sized: ...

    @property
    def pending(self) -> int: ...

    @property
    def started(self) -> int: ...

    @property
    def stopped(self) -> int: ...


def tcp_labels(*, reporter: str, source: wpb.Workload | None, source_principal: str | None,
               destination: wpb.Workload | None, destination_principal: str | None,
               destination_service: wpb.Service | None, mutual_tls: bool,
               response_flags: str = FLAG_NONE) -> dict[str, str]:
    """The Istio label set of one TCP connection (every name of ``LABEL_NAMES``).

    ``reporter`` is ``"source"`` (outbound, the client's ztunnel) or ``"destination"`` (inbound).
    Principals are full ``spiffe://`` strings: pass the verified peer identity and the expected or
    own one; a missing one is derived from its workload when the connection is mTLS (see
    ``mesh.istio_labels.principal``). Raises ValueError for a reporter that is neither (a bug of the caller)."""
    if reporter not in (REPORTER_SOURCE, REPORTER_DESTINATION):
        raise ValueError(f"reporter must be {REPORTER_SOURCE!r} or {REPORTER_DESTINATION!r}, not {reporter!r}")
    labels = {
        "reporter": reporter,
        **workload_labels("source", source),
        "source_principal": principal(source_principal, source, mutual_tls),
        **service_labels(destination_service),
        **workload_labels("destination", destination),
        "destination_principal": principal(destination_principal, destination, mutual_tls),
        "request_protocol": "tcp",
        "response_flags": response_flags or FLAG_NONE,
        "connection_security_policy": MUTUAL_TLS if mutual_tls else NO_TLS,
    }
    return {name: labels[name] for name in LABEL_NAMES}  # in Istio's order


class DnsCounts(Protocol):
    """What the DNS proxy counts (``ztunnel.dns_proxy.DnsCounts``)."""

    requests: int
    forwarded: int
    upstream_failures: int


class ZtunnelMetrics:
    """The TCP counters, rendered by ``exposition``.

    Every method takes the label set of ``tcp_labels`` as the connection was opened (all of
    ``LABEL_NAMES``, nothing else: anything else is a bug and raises ValueError); ``closed`` takes
    the outcome's ``response_flags`` beside it. Safe to call from any thread."""

    def __init__(self, *, build_tag: str | None = None) -> None:
        self.build_tag = build_tag or __version__
        self._lock = threading.Lock()
        self._values: dict[str, dict[tuple[str, ...], int]] = {
            OPENED: {}, CLOSED: {}, RECEIVED: {}, SENT: {}, FAILED: {}}
        self._rendered_labels: dict[tuple[str, ...], str] = {}  # a label set's `{...}`, made once
        self._refused: dict[tuple[str, str], int] = {}  # (listener, reason) → count
        self._discovery: DiscoveryCounts | None = None
        self._pods: PodCounts | None = None
        self._dns: DnsCounts | None = None

    def follow(self, *, discovery: DiscoveryCounts | None = None, pods: PodCounts | None = None,
               dns: DnsCounts | None = None) -> None:
        """Export the counts of ``discovery``, ``pods`` and ``dns`` too, read at each scrape (a source
        not given: its families are not exported)."""
        self._discovery = discovery
        self._pods = pods
        self._dns = dns

    @staticmethod
    def _key(labels: Mapping[str, str]) -> tuple[str, ...]:
        if len(labels) != len(LABEL_NAMES) or any(name not in labels for name in LABEL_NAMES):
            missing = sorted(set(LABEL_NAMES) - set(labels))
            extra = sorted(set(labels) - set(LABEL_NAMES))
            raise ValueError(f"labels must be those of tcp_labels (missing {missing}, unexpected {extra})")
        return tuple(str(labels[name]) for name in LABEL_NAMES)

    def opened(self, labels: Mapping[str, str]) -> None:
        """One connection opened; its byte series start at 0."""
        key = self._key(labels)
        with self._lock:
            self._values[OPENED][key] = self._values[OPENED].get(key, 0) + 1
            self._values[RECEIVED].setdefault(key, 0)
            self._values[SENT].setdefault(key, 0)

    def add_bytes(self, labels: Mapping[str, str], sent: int, received: int) -> None:
        """Bytes relayed so far: ``received`` from the client, ``sent`` to it."""
        self._add(self._key(labels), sent, received)

    def closed(self, labels: Mapping[str, str], sent: int = 0, received: int = 0, *,
               response_flags: str = FLAG_NONE) -> None:
        """One connection ended; ``sent`` and ``received`` are its bytes not yet added (to the series
        of ``labels``). It is counted closed under ``labels`` with ``response_flags`` (``FLAG_*``),
        and failed too when that is ``FLAG_CONNECT_FAILED``."""
        if response_flags not in (FLAG_NONE, FLAG_DENIED, FLAG_CONNECT_FAILED):
            raise ValueError(f"unknown response_flags {response_flags!r}")
        key = self._key(labels)
        ended = (*key[:_FLAGS], response_flags, *key[_FLAGS + 1:])
        self._add(key, sent, received, ended=ended, failed=response_flags == FLAG_CONNECT_FAILED)

    def refused(self, listener: str, reason: str) -> None:
        """One connection on ``listener`` (outbound, inbound, hbone) refused for ``reason`` (``ztunnel.limits``)."""
        with self._lock:
            self._refused[(listener, reason)] = self._refused.get((listener, reason), 0) + 1

    def _add(self, key: tuple[str, ...], sent: int, received: int, *, ended: tuple[str, ...] | None = None,
             failed: bool = False) -> None:
        if sent < 0 or received < 0:
            raise ValueError(f"byte counts cannot be negative (sent {sent}, received {received})")
        with self._lock:
            self._values[SENT][key] = self._values[SENT].get(key, 0) + sent
            self._values[RECEIVED][key] = self._values[RECEIVED].get(key, 0) + received
            if ended is not None:
                self._values[CLOSED][ended] = self._values[CLOSED].get(ended, 0) + 1
            if failed and ended is not None:
                self._values[FAILED][ended] = self._values[FAILED].get(ended, 0) + 1

    # -- the exposition

    def exposition(self) -> bytes:
        """Every series in Prometheus's text format, families in a fixed order (``CONTENT_TYPE``)."""
        with self._lock:
            snapshot = {name: list(series.items()) for name, series in self._values.items()}
            refused = sorted(self._refused.items())
        lines: list[str] = []
        for name, series in snapshot.items():
            total = f"{name}_total"
            lines += [f"# HELP {total} {_HELP[name]}", f"# TYPE {total} counter"]
            lines += [f"{total}{self._labels(key)} {value}" for key, value in series]
        lines += [f"# HELP {REFUSED} {_REFUSED_HELP}", f"# TYPE {REFUSED} counter"]
        lines += [f'{REFUSED}{{listener="{_escape(listener)}",reason="{_escape(reason)}"}} {count}'
                  for (listener, reason), count in refused]
        if self._discovery is not None:
            lines += self._discovery_lines(self._discovery)
        if self._pods is not None:
            lines += self._pod_lines(self._pods)
        if self._dns is not None:
            lines += self._dns_lines(self._dns)
        lines += ["# HELP istio_build Istio component build info", "# TYPE istio_build gauge",
                  f'istio_build{{component="ztunnel",tag="{_escape(self.build_tag)}"}} 1', ""]
        return "\n".join(lines).encode()

    @staticmethod
    def _discovery_lines(source: DiscoveryCounts) -> list[str]:
        terminations, messages, size = dict(source.terminations), dict(source.messages), source.received_bytes
        name = "istio_xds_connection_terminations_total"
        lines = [f"# HELP {name} The total number of completed connections to xds server (unstable)",
                 f"# TYPE {name} counter"]
        lines += [f'{name}{{reason="{_escape(reason)}"}} {count}' for reason, count in sorted(terminations.items())]
        name = "istio_message_types_total"
        lines += [f"# HELP {name} Total number of messages received (unstable)", f"# TYPE {name} counter"]
        lines += [f'{name}{{url="{_escape(url)}"}} {count}' for url, count in sorted(messages.items())]
        name = "istio_total_messages_size_total"
        return lines + [f"# HELP {name} Total number of bytes received (unstable)", f"# TYPE {name} counter",
                        f"{name} {size}"]

    @staticmethod
    def _pod_lines(pods: PodCounts) -> list[str]:
        values = (("istio_inpod_active_proxy_count", "gauge",
                   "The total number current workloads with active inpod proxies", len(pods.pods)),
                  ("istio_inpod_pending_proxy_count", "gauge",
                   "The total number current workloads with pending inpod proxies", pods.pending),
                  ("istio_inpod_proxies_started_total", "counter", "The total number of inpod proxies started",
                   pods.started),
                  ("istio_inpod_proxies_stopped_total", "counter", "The total number of inpod proxies stopped",
                   pods.stopped))
        lines: list[str] = []
        for name, kind, help_text, value in values:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
        return lines

    @staticmethod
    def _dns_lines(dns: DnsCounts) -> list[str]:
        lines: list[str] = []
        for name, help_text, value in (
                ("istio_dns_requests_total", "Total number of DNS requests", dns.requests),
                ("istio_dns_upstream_requests_total", "Total number of DNS requests forwarded to upstream",
                 dns.forwarded),
                ("istio_dns_upstream_failures_total", "Total number of DNS failures forwarding to upstream",
                 dns.upstream_failures)):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter", f"{name} {value}"]
        return lines

    def _labels(self, key: tuple[str, ...]) -> str:
        rendered = self._rendered_labels.get(key)
        if rendered is None:
            rendered = self._rendered_labels[key] = render_labels(LABEL_NAMES, key)
        return rendered
