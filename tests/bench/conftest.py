"""bench/ is not a package: its `datapath` package is imported with bench/ on sys.path, as
bench/datapath_bench.py does."""

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
