"""Says which Hypothesis profile the fuzz targets run under (see tests/fuzz/__init__.py)."""

from __future__ import annotations

from tests.fuzz import FUZZ_SCALE, profile_name


def pytest_report_header() -> str:
    name = profile_name()  # an unknown HYPOTHESIS_PROFILE fails here, before any test runs
    scale = f", {FUZZ_SCALE}x the examples of make test" if name == "fuzz" else ""
    return f"fuzz targets: Hypothesis profile {name!r}{scale}"
