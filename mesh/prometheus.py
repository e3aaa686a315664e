"""Prometheus's text exposition format (version 0.0.4), written by hand for the proxies.

Both proxies render their metrics themselves rather than through ``prometheus_client``: they emit
exactly Istio's series (no ``*_created`` sample beside each counter), and that library's import was
over 2 MiB of a proxy's idle memory. What the format needs is small and lives here once: label
values escaped (``escape``), a label set rendered in a fixed order (``render_labels``), a family's
``# HELP`` and ``# TYPE`` header (``family_header``), and a histogram's cumulative buckets
(``Histogram``: one per label set, ``le`` bounds in the text the Prometheus Go client writes, then
``+Inf``, ``_sum`` and ``_count``). Counters and gauges are one line per series and need no type.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Envoy's default histogram buckets, which Istio's proxies use for istio_request_duration_milliseconds,
# istio_request_bytes and istio_response_bytes (Envoy: stats_config histogram_bucket_settings, when no
# bucket setting matches; Istio changes them only through sidecar.istio.io/statsHistogramBuckets).
ENVOY_DEFAULT_BUCKETS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000)


def escape(value: str) -> str:
    """A label value in the text format: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_labels(names: Sequence[str], values: Sequence[str]) -> str:
    """``{name="value",...}`` in the order of ``names``; ``""`` for no labels."""
    if not names:
        return ""
    return "{" + ",".join(f'{name}="{escape(value)}"' for name, value in zip(names, values, strict=True)) + "}"


def family_header(name: str, kind: str, help_text: str) -> list[str]:
    """The two comment lines before a family's samples; ``kind`` is counter, gauge or histogram."""
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]


def format_bound(bound: float) -> str:
    """A bucket bound as the Go client writes it: ``0.5``, ``1``, ``3.6e+06``."""
    if bound == int(bound) and abs(bound) < 1e6:
        return str(int(bound))
    return f"{bound:g}"


def format_number(value: float) -> str:
    """A sample value: whole numbers without a fraction, others as Python's shortest repr."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Histogram:
    """The buckets of one histogram family, one series per label set (a tuple of values).

    Not thread-safe by itself: its owner holds the lock (the metrics classes already have one)."""

    def __init__(self, bounds: Sequence[float] = ENVOY_DEFAULT_BUCKETS) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError(f"bucket bounds must be increasing and distinct: {list(bounds)}")
        self.bounds = tuple(float(b) for b in bounds)
        self._le = [format_bound(b) for b in self.bounds] + ["+Inf"]
        self._series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}  # → (per-bucket counts, [sum])

    def observe(self, key: tuple[str, ...], value: float) -> None:
        """One observation under the label set ``key``; it counts in the first bucket whose bound is
        not below it (``le`` is inclusive), and in +Inf beyond the last."""
        counts, total = self.series(key)
        counts[bisect_left(self.bounds, value)] += 1
        total[0] += value

    def series(self, key: tuple[str, ...]) -> tuple[list[int], list[float]]:
        """``key``'s series (made empty if new): its per-bucket counts and ``[sum]``, which ``observe``
        adds to. An owner that observes the same label sets often may keep them, and add to them as
        ``observe`` does, rather than find them again by their key (a hash of every label value)."""
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = ([0] * (len(self.bounds) + 1), [0.0])
        return series

    def count(self, key: tuple[str, ...]) -> int:
        series = self._series.get(key)
        return sum(series[0]) if series else 0

    def __len__(self) -> int:
        return len(self._series)

    def lines(self, name: str, label_names: Sequence[str]) -> Iterable[str]:
        """The samples of every series: cumulative ``_bucket`` lines with ``le``, then ``_sum`` and ``_count``."""
        for key, (counts, total) in self._series.items():
            labels = render_labels(label_names, key)
            prefix = labels[:-1] + "," if labels else "{"
            cumulative = 0
            for le, count in zip(self._le, counts, strict=True):
                cumulative += count
                yield f'{name}_bucket{prefix}le="{le}"}} {cumulative}'
            yield f"{name}_sum{labels} {format_number(total[0])}"
            yield f"{name}_count{labels} {cumulative}"
