"""Metrics and shared state: ids, kinds, CAS tokens and every bound answering a status."""

from __future__ import annotations

from waypoint.wasm.abi import MetricType, Status
from waypoint.wasm.state import PluginMetrics, SharedState


def test_metrics_define_once_by_name_and_bound() -> None:
    metrics = PluginMetrics(limit=2)
    status, first = metrics.define(MetricType.COUNTER, "a")
    assert status == Status.OK and metrics.define(MetricType.COUNTER, "a") == (Status.OK, first)
    assert metrics.define(MetricType.GAUGE, "a") == (Status.BAD_ARGUMENT, 0)
    assert metrics.define(MetricType.GAUGE, "b")[0] == Status.OK
    assert metrics.define(MetricType.GAUGE, "c") == (Status.INTERNAL_FAILURE, 0)
    assert metrics.increment(99, 1) == Status.NOT_FOUND
    assert metrics.record(first, 41) == Status.OK and metrics.increment(first, 1) == Status.OK
    assert metrics.get(first) == (Status.OK, 42)


def test_shared_data_bounds_and_cas() -> None:
    shared = SharedState(entries=2, data_bytes=10)
    assert shared.set("vm", b"a", b"1234", 0) == Status.OK
    assert shared.get("other-vm", b"a")[0] == Status.NOT_FOUND      # scoped by vm_id
    assert shared.set("vm", b"b", b"12345", 0) == Status.INTERNAL_FAILURE   # 5 + 5 + 1 + 1 > 10 bytes
    assert shared.set("vm", b"b", b"1", 0) == Status.OK
    assert shared.set("vm", b"c", b"", 0) == Status.INTERNAL_FAILURE        # entries
    status, value, cas = shared.get("vm", b"a")
    assert (status, value) == (Status.OK, b"1234") and cas != 0
    assert shared.set("vm", b"a", b"x", cas) == Status.OK
    assert shared.set("vm", b"a", b"y", cas) == Status.CAS_MISMATCH
    assert shared.set("vm", b"zz", b"y", 7) == Status.CAS_MISMATCH           # CAS on a missing key


def test_queues_bound_depth_and_wake_the_registrant() -> None:
    shared = SharedState(queues=1, depth=1)
    woken: list[int] = []
    status, queue = shared.register_queue("vm", "q", woken.append)
    assert status == Status.OK and shared.register_queue("vm", "q", woken.append) == (Status.OK, queue)
    assert shared.register_queue("vm", "r", None) == (Status.INTERNAL_FAILURE, 0)
    assert shared.enqueue(queue, b"1") == Status.OK and woken == [queue]
    assert shared.enqueue(queue, b"2") == Status.INTERNAL_FAILURE
    assert shared.dequeue(queue) == (Status.OK, b"1")
    assert shared.dequeue(queue) == (Status.EMPTY, b"")
    shared.forget_listener(woken.append)
    assert shared.enqueue(queue, b"3") == Status.OK and woken == [queue]
