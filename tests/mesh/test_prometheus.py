"""The text exposition helpers both proxies render their metrics with (``mesh.prometheus``)."""

from __future__ import annotations

import pytest

from mesh.prometheus import ENVOY_DEFAULT_BUCKETS, Histogram, escape, format_bound, render_labels


def test_label_values_are_escaped():
    assert escape('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    assert render_labels(("x", "y"), ("1", 'q"')) == '{x="1",y="q\\""}'
    assert render_labels((), ()) == ""


def test_bounds_are_written_as_the_go_client_does():
    assert [format_bound(b) for b in (0.5, 1, 25, 3600000)] == ["0.5", "1", "25", "3.6e+06"]


def test_histogram_buckets_are_cumulative_and_le_is_inclusive():
    histogram = Histogram((1, 10))
    for value in (0.2, 1, 5, 10, 11):
        histogram.observe(("a",), value)
    assert list(histogram.lines("h", ("k",))) == [
        'h_bucket{k="a",le="1"} 2', 'h_bucket{k="a",le="10"} 4', 'h_bucket{k="a",le="+Inf"} 5',
        'h_sum{k="a"} 27.2', 'h_count{k="a"} 5']
    assert histogram.count(("a",)) == 5 and histogram.count(("b",)) == 0


def test_histogram_without_labels():
    histogram = Histogram((1,))
    histogram.observe((), 3)
    assert list(histogram.lines("h", ())) == ['h_bucket{le="1"} 0', 'h_bucket{le="+Inf"} 1', "h_sum 3", "h_count 1"]


def test_envoys_default_buckets_and_bad_bounds():
    assert ENVOY_DEFAULT_BUCKETS[0] == 0.5 and ENVOY_DEFAULT_BUCKETS[-1] == 3600000
    with pytest.raises(ValueError):
        Histogram((5, 1))
