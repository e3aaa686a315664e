"""The idle memory breakdown: /proc/<pid>/smaps summed by mapping, and its lines in the report."""

from __future__ import annotations

from datapath import report
from datapath.lab import rss_by_mapping

SMAPS = """\
55d4c0000000-55d4c0021000 rw-p 00000000 00:00 0                          [heap]
Size:                132 KiB
Rss:                9040 kB
Pss:                9040 kB
7f2a10000000-7f2a10c00000 r-xp 00000000 08:01 1234    /venv/grpc/_cython/cygrpc.cpython-311-x86_64-linux-gnu.so
Size:              12288 kB
Rss:               11872 kB
7f2a10c00000-7f2a10c80000 rw-p 00c00000 08:01 1234    /venv/grpc/_cython/cygrpc.cpython-311-x86_64-linux-gnu.so
Rss:                 460 kB
7f2a20000000-7f2a20500000 rw-p 00000000 00:00 0
Rss:                5036 kB
7f2a30000000-7f2a30020000 r-xp 00000000 08:01 99      /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                1528 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Rss:                 132 kB
"""


def test_rss_is_summed_by_file_and_anonymous():
    assert rss_by_mapping(SMAPS) == {
        "anonymous": 9040 + 5036 + 132,
        "cygrpc.cpython-311-x86_64-linux-gnu.so": 11872 + 460,
        "libc.so.6": 1528,
    }


def test_memory_lines_name_the_largest_files_and_the_rest():
    mappings = rss_by_mapping(SMAPS) | {f"lib{i}.so": 1024 for i in range(7)}
    [heading, _, line, _] = report.memory_lines({"ztunnel-node-0": mappings})
    assert heading.startswith("## ztunnel idle memory")
    total = sum(mappings.values()) / 1024
    assert line.startswith(f"- ztunnel-node-0: {total:.1f} MiB = anonymous 13.9 + files ")
    assert "`cygrpc.cpython-311-x86_64-linux-gnu.so` 12.0, `libc.so.6` 1.5, `lib" in line
    assert line.endswith("other 3.0)")  # 6 named, cygrpc and libc first: 3 of the seven 1 MiB libraries are the rest
