"""What plugins keep outside their VMs: their metrics (per plugin) and shared data and queues (per process).

Both outlive a VM: a trapped VM is rebuilt and finds its counters, its shared keys and its queues as
they were, as in Envoy. Every store is bounded by the constants of ``waypoint.limits`` and answers a
Proxy-Wasm ``Status``, so the host functions only translate guest memory to these calls.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from waypoint.limits import (
    WASM_METRICS_PER_PLUGIN,
    WASM_QUEUE_DEPTH,
    WASM_SHARED_DATA_BYTES,
    WASM_SHARED_DATA_ENTRIES,
    WASM_SHARED_QUEUES,
)
from waypoint.wasm.abi import MetricType, Status

_KINDS = {MetricType.COUNTER: "counter", MetricType.GAUGE: "gauge", MetricType.HISTOGRAM: "histogram"}
_I64 = 1 << 63


@dataclass
class _Metric:
    name: str
    kind: MetricType
    value: int = 0          # counter and gauge
    count: int = 0          # histogram: samples recorded
    total: int = 0          # histogram: their sum


class PluginMetrics:
    """One plugin's metrics, by id; ``samples()`` is what an exporter reads."""

    def __init__(self, limit: int = WASM_METRICS_PER_PLUGIN) -> None:
        self._limit = limit
        self._by_id: dict[int, _Metric] = {}
        self._by_name: dict[str, int] = {}

    def define(self, kind: int, name: str) -> tuple[Status, int]:
        if kind not in _KINDS:
            return Status.BAD_ARGUMENT, 0
        known = self._by_name.get(name)
        if known is not None:
            # Defining again (each rebuilt VM does) finds the same metric; another kind is an error.
            return (Status.OK, known) if self._by_id[known].kind == kind else (Status.BAD_ARGUMENT, 0)
        if len(self._by_id) >= self._limit:
            return Status.INTERNAL_FAILURE, 0
        metric_id = len(self._by_id) + 1
        self._by_id[metric_id] = _Metric(name, MetricType(kind))
        self._by_name[name] = metric_id
        return Status.OK, metric_id

    def increment(self, metric_id: int, offset: int) -> Status:
        metric = self._by_id.get(metric_id)
        if metric is None:
            return Status.NOT_FOUND
        if metric.kind is MetricType.HISTOGRAM or (metric.kind is MetricType.COUNTER and offset < 0):
            return Status.BAD_ARGUMENT
        metric.value = max(-_I64, min(_I64 - 1, metric.value + offset))
        return Status.OK

    def record(self, metric_id: int, value: int) -> Status:
        metric = self._by_id.get(metric_id)
        if metric is None:
            return Status.NOT_FOUND
        if metric.kind is MetricType.HISTOGRAM:
            metric.count += 1
            metric.total += value
        else:
            metric.value = value
        return Status.OK

    def get(self, metric_id: int) -> tuple[Status, int]:
        metric = self._by_id.get(metric_id)
        if metric is None:
            return Status.NOT_FOUND, 0
        if metric.kind is MetricType.HISTOGRAM:
            return Status.BAD_ARGUMENT, 0
        return Status.OK, metric.value

    def samples(self) -> Iterator[tuple[str, str, int | tuple[int, int]]]:
        """(name, "counter" | "gauge" | "histogram", value); a histogram's value is (count, sum)."""
        for metric in self._by_id.values():
            if metric.kind is MetricType.HISTOGRAM:
                yield metric.name, "histogram", (metric.count, metric.total)
            else:
                yield metric.name, _KINDS[metric.kind], metric.value


@dataclass
class _Queue:
    vm_id: str
    name: str
    items: deque[bytes] = field(default_factory=deque)
    on_ready: Callable[[int], None] | None = None    # the registering plugin's wake-up


class SharedState:
    """Shared data (key → value with a CAS token) and shared queues, scoped by vm_id as in Envoy."""

    def __init__(self, *, entries: int = WASM_SHARED_DATA_ENTRIES, data_bytes: int = WASM_SHARED_DATA_BYTES,
                 queues: int = WASM_SHARED_QUEUES, depth: int = WASM_QUEUE_DEPTH) -> None:
        self._entries, self._bytes_limit, self._queue_limit, self._depth = entries, data_bytes, queues, depth
        self._data: dict[tuple[str, bytes], tuple[bytes, int]] = {}
        self._bytes = 0
        self._cas = 0
        self._queues: dict[int, _Queue] = {}
        self._queue_ids: dict[tuple[str, str], int] = {}

    def get(self, vm_id: str, key: bytes) -> tuple[Status, bytes, int]:
        entry = self._data.get((vm_id, key))
        if entry is None:
            return Status.NOT_FOUND, b"", 0
        return Status.OK, entry[0], entry[1]

    def set(self, vm_id: str, key: bytes, value: bytes, cas: int) -> Status:
        old = self._data.get((vm_id, key))
        if cas and (old is None or old[1] != cas):
            return Status.CAS_MISMATCH
        grown = len(value) - (len(old[0]) if old else -len(key))
        if old is None and len(self._data) >= self._entries:
            return Status.INTERNAL_FAILURE
        if self._bytes + grown > self._bytes_limit:
            return Status.INTERNAL_FAILURE
        self._cas = self._cas % 0xFFFFFFFF + 1     # a u32 token, never 0 (0 means "no CAS")
        self._data[(vm_id, key)] = (value, self._cas)
        self._bytes += grown
        return Status.OK

    def register_queue(self, vm_id: str, name: str, on_ready: Callable[[int], None] | None) -> tuple[Status, int]:
        known = self._queue_ids.get((vm_id, name))
        if known is not None:
            self._queues[known].on_ready = on_ready
            return Status.OK, known
        if len(self._queues) >= self._queue_limit:
            return Status.INTERNAL_FAILURE, 0
        queue_id = len(self._queues) + 1
        self._queues[queue_id] = _Queue(vm_id, name, on_ready=on_ready)
        self._queue_ids[(vm_id, name)] = queue_id
        return Status.OK, queue_id

    def resolve_queue(self, vm_id: str, name: str) -> tuple[Status, int]:
        known = self._queue_ids.get((vm_id, name))
        return (Status.NOT_FOUND, 0) if known is None else (Status.OK, known)

    def enqueue(self, queue_id: int, item: bytes) -> Status:
        queue = self._queues.get(queue_id)
        if queue is None:
            return Status.NOT_FOUND
        if len(queue.items) >= self._depth:
            return Status.INTERNAL_FAILURE
        queue.items.append(item)
        if queue.on_ready is not None:
            queue.on_ready(queue_id)
        return Status.OK

    def dequeue(self, queue_id: int) -> tuple[Status, bytes]:
        queue = self._queues.get(queue_id)
        if queue is None:
            return Status.NOT_FOUND, b""
        if not queue.items:
            return Status.EMPTY, b""
        return Status.OK, queue.items.popleft()

    def forget_listener(self, on_ready: Callable[[int], None]) -> None:
        """A plugin closed: its queues stay (others may hold their ids) but no longer wake it."""
        for queue in self._queues.values():
            if queue.on_ready == on_ready:
                queue.on_ready = None


SHARED = SharedState()   # the process's one store: plugins with the same vm_id share it, as in Envoy
