"""ztunnel's connection bounds (ztunnel/limits.py) on their own: the budget, the log of refusals,
the file descriptor limit, and how the bounds reach the config, the metrics and ``/config_dump``.
The executor enforcing them is tests/ztunnel/test_proxy_limits.py."""

from __future__ import annotations

import ast
import inspect
import logging
import resource

import pytest

from tests.ztunnel.test_metrics import samples
from ztunnel import limits
from ztunnel.cli import connection_bounds
from ztunnel.limits import (
    MAX_CONNECTIONS_PER_NODE,
    MAX_CONNECTIONS_PER_POD,
    NODE_LIMIT,
    POD_LIMIT,
    RESERVED_FDS,
    ConnectionBudget,
    RefusalLog,
    node_connection_cap,
    raise_fd_limit,
)
from ztunnel.metrics import ZtunnelMetrics
from ztunnel.proxy import ZtunnelConfig


def test_each_bound_is_positive_and_says_why():
    source = inspect.getsource(limits).splitlines()
    for node in ast.parse(inspect.getsource(limits)).body:
        if isinstance(node, ast.Assign) and node.targets[0].id.isupper():  # type: ignore[attr-defined]
            name = node.targets[0].id  # type: ignore[attr-defined]
            value = getattr(limits, name)
            if isinstance(value, (int, float)):
                assert value > 0, name
                assert source[node.lineno - 2].lstrip().startswith("#"), f"{name} has no comment saying why"
    assert MAX_CONNECTIONS_PER_POD < MAX_CONNECTIONS_PER_NODE  # one pod cannot take the whole node


def test_the_budget_holds_each_pod_to_its_bound_and_all_to_the_nodes():
    budget = ConnectionBudget(per_pod=2, per_node=3)
    assert [budget.acquire("a"), budget.acquire("a"), budget.acquire("a")] == [None, None, POD_LIMIT]
    assert [budget.acquire("b"), budget.acquire("b")] == [None, NODE_LIMIT]
    assert (budget.held("a"), budget.held("b"), budget.held()) == (2, 1, 3)
    budget.release("a")
    assert budget.acquire("b") is None  # a connection given back is available to any pod
    for pod in ("a", "b", "b"):
        budget.release(pod)
    assert budget.held() == 0 and budget.held("b") == 0


@pytest.mark.parametrize(("per_pod", "per_node", "error"), [
    (0, 10, "max_connections_per_pod must be a positive integer, not 0"),
    (5, -1, "max_connections_per_node must be a positive integer, not -1"),
    (10, 10, "max_connections_per_pod (10) must be below max_connections_per_node (10)"),
    (2.5, 10, "max_connections_per_pod must be a positive integer, not 2.5"),
])
def test_bounds_that_cannot_work_are_refused_naming_what_is_wrong(per_pod, per_node, error):
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)")):
        ZtunnelConfig(node="node-a", max_connections_per_pod=per_pod, max_connections_per_node=per_node)


@pytest.mark.parametrize("name", ["hbone_handshake_timeout", "plaintext_idle_timeout"])
def test_timeouts_must_be_positive(name):
    with pytest.raises(ValueError, match=f"{name} must be positive"):
        ZtunnelConfig(node="node-a", **{name: 0})


def test_refusals_are_logged_once_per_interval_per_pod_and_reason_with_the_count(caplog):
    now = [100.0]
    refusals = RefusalLog(lambda: now[0], interval=10.0)
    with caplog.at_level(logging.WARNING, logger="ambient.ztunnel.limits"):
        logged = [refusals.refused("shop/web-0", POD_LIMIT, "inbound") for _ in range(1000)]
        other = refusals.refused("shop/db", POD_LIMIT, "inbound")  # another pod has its own line
        now[0] += 10.0
        again = refusals.refused("shop/web-0", POD_LIMIT, "inbound")
    assert (logged.count(True), logged[0], other, again) == (1, True, True, True)
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 3
    assert messages[2].startswith("pod shop/web-0: 1000 connection(s) refused (pod_limit)")  # 999 held + this one


def test_the_soft_fd_limit_is_raised_to_the_hard_one(caplog):
    set_to: list[tuple[int, int]] = []
    with caplog.at_level(logging.INFO, logger="ambient.ztunnel.limits"):
        limit = raise_fd_limit(lambda _: (1024, 524288), lambda _, value: set_to.append(value))
    assert (limit, set_to) == (524288, [(524288, 524288)])
    assert "file descriptor limit raised from 1024 to 524288" in caplog.text


def test_a_limit_that_cannot_be_raised_is_kept_and_said():
    def refuse(_, __):
        raise ValueError("not allowed")

    assert raise_fd_limit(lambda _: (1024, 4096), refuse) == 1024
    assert raise_fd_limit(lambda _: (4096, 4096), refuse) == 4096  # nothing to raise: not even tried


def test_the_nodes_bound_fits_the_fd_limit():
    assert node_connection_cap(1_048_576) == MAX_CONNECTIONS_PER_NODE
    assert node_connection_cap(resource.RLIM_INFINITY) == MAX_CONNECTIONS_PER_NODE
    assert node_connection_cap(20_000) == (20_000 - RESERVED_FDS) // 2  # the adversarial run's limit
    assert node_connection_cap(10) == 2


def test_the_cli_lowers_the_bounds_to_the_fd_limit_and_keeps_the_pods_below_the_nodes():
    assert connection_bounds(4_000, 20_000, fd_limit=1_048_576) == (4_000, 20_000)
    assert connection_bounds(4_000, 20_000, fd_limit=5_024) == (1_000, 2_000)
    with pytest.raises(ValueError, match="must be below"):
        connection_bounds(30_000, 20_000, fd_limit=1_048_576)


def test_refusals_are_exported_by_listener_and_reason():
    metrics = ZtunnelMetrics(build_tag="test")
    metrics.refused("inbound", POD_LIMIT)
    metrics.refused("inbound", POD_LIMIT)
    metrics.refused("hbone", NODE_LIMIT)
    found = {labels: value for (name, labels), value in samples(metrics).items()
             if name == "ambient_ztunnel_connections_refused_total"}
    assert found == {(("listener", "inbound"), ("reason", "pod_limit")): 2,
                     (("listener", "hbone"), ("reason", "node_limit")): 1}
