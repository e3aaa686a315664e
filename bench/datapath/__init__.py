"""The data-path benchmark (issue #7): direct TCP, stunnel, haproxy and the ambient path side by side.

`lab` (the lab's layout, driving it, the kernel's CPU and memory accounting), `paths` (one
`DataPath` per row: its pods, config files, endpoints and accounted proxies), `loads` (wrk and
iperf3 command lines and parsers, pure), `measure` (one run of one figure on one path), `profile`
(py-spy flame graphs of the ztunnels), `report` (medians, ratios, bars, markdown, charts).
`bench/datapath_bench.py` runs it all (`make bench`).
"""

from .lab import BenchFailure, Lab, LabLayout
from .loads import LoadError, parse_iperf, parse_stub_status, parse_wrk
from .measure import FIGURES, Runner, Settings, round_order
from .paths import BASELINE, PATHS, DataPath, planned_ips
from .report import ROWS, check_bars, markdown, ratios, summarize

__all__ = [
    "BASELINE",
    "BenchFailure",
    "DataPath",
    "FIGURES",
    "Lab",
    "LabLayout",
    "LoadError",
    "PATHS",
    "ROWS",
    "Runner",
    "Settings",
    "check_bars",
    "markdown",
    "parse_iperf",
    "parse_stub_status",
    "parse_wrk",
    "planned_ips",
    "ratios",
    "round_order",
    "summarize",
]
