"""How every listing of the ``ambient`` command prints: one formatter, kubectl's ``-o`` habits.

A listing is a list of rows (dicts, as a status or a config dump holds them) and its ``Column``s, each
a heading and how to compute the cell. ``-o table`` (the default) prints the columns that are not
``wide``, left-aligned (``format_table``); ``-o wide`` adds the wide ones, as ``kubectl get -o wide``
adds columns; ``-o json`` and ``-o yaml`` print the same rows as data (``format_data``), the rows the
table shows, filters applied, never a table's truncated cells. ``human_age`` is kubectl's AGE column
(apimachinery's ``duration.HumanDuration``). ``namespace_filter`` is kubectl's ``-n``/``-A``. No I/O.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

TABLE, WIDE, JSON, YAML = "table", "wide", "json", "yaml"
OUTPUT_FORMATS = (TABLE, WIDE, JSON, YAML)
OUTPUT_HELP = "table (the default), wide (more columns, as kubectl's), or the same rows as json or yaml"
UNKNOWN_AGE = "<unknown>"  # kubectl's AGE of an object without a creation timestamp
INVALID_AGE = "<invalid>"  # kubectl's AGE of a timestamp more than a second in the future (a skewed clock)


def add_output_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", choices=OUTPUT_FORMATS, default=TABLE, help=OUTPUT_HELP)


def add_namespace_flags(parser: argparse.ArgumentParser, what: str) -> None:
    """kubectl's ``-n NAMESPACE`` and ``-A``. Here both default to every namespace (a lab is small and
    its listings an overview, as istioctl's ``zc`` lists every namespace), so ``-A`` only says it
    out loud, and refuses a ``-n`` beside it as kubectl ignores one silently."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-n", "--namespace", help=f"only {what} of this namespace")
    group.add_argument("-A", "--all-namespaces", action="store_true", help=f"{what} of every namespace (the default)")


def namespace_filter(rows: Iterable[Mapping], namespace: str | None,
                     of: Callable[[Mapping], object] = lambda row: row.get("namespace")) -> list:
    """The rows of ``namespace`` (each row's namespace as ``of`` reads it); all of them for None."""
    return [row for row in rows if namespace is None or of(row) == namespace]


@dataclass(frozen=True)
class Column:
    head: str
    cell: Callable[[Any], str]
    wide: bool = False  # shown with -o wide only


def table_rows(items: Iterable[Any], columns: Sequence[Column], output: str = TABLE) -> list[list[str]]:
    """The heading row and one row per item, of the columns ``output`` shows."""
    shown = [c for c in columns if output == WIDE or not c.wide]
    return [[c.head for c in shown], *([c.cell(item) for c in shown] for item in items)]


def format_table(rows: list[list[str]], gap: int = 2) -> str:
    """Left-aligned columns, ``gap`` spaces apart (istioctl's tabwriter has 5: ``waypoint list``)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ((" " * gap).join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)


def format_listing(items: Sequence[Any], columns: Sequence[Column], output: str, gap: int = 2) -> str:
    """``items`` as ``output`` asks: a table of ``columns``, or the items themselves as data."""
    if output in (JSON, YAML):
        return format_data(list(items), output)
    return format_table(table_rows(items, columns, output), gap)


def format_data(value: object, output: str) -> str:
    """``value`` as JSON (indented, as ``kubectl -o json``) or YAML (block style, keys in their order)."""
    if output == JSON:
        return json.dumps(value, indent=2)
    import yaml  # only for -o yaml

    return yaml.safe_dump(value, sort_keys=False, default_flow_style=False).rstrip("\n")


def human_age(since: dt.datetime | None, now: dt.datetime) -> str:
    """kubectl's AGE: apimachinery's ``duration.HumanDuration`` of ``now - since``: whole seconds under
    2 minutes, then minutes (with seconds under 10 minutes), hours (with minutes under 8 hours), days
    (with hours under 8 days), years (with days under 8 years)."""
    if since is None:
        return UNKNOWN_AGE
    seconds = int((now - since).total_seconds())  # toward zero, as Go's int(d.Seconds())
    if seconds < -1:
        return INVALID_AGE
    if seconds < 0:
        return "0s"
    if seconds < 60 * 2:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return _two(minutes, "m", seconds % 60, "s")
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return _two(hours, "h", minutes % 60, "m")
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        return _two(days, "d", hours % 24, "h")
    if hours < 24 * 365 * 2:
        return f"{days}d"
    years = days // 365
    if hours < 24 * 365 * 8:
        return _two(years, "y", days % 365, "d")
    return f"{years}y"


def _two(big: int, big_unit: str, small: int, small_unit: str) -> str:
    return f"{big}{big_unit}" if small == 0 else f"{big}{big_unit}{small}{small_unit}"


def parse_timestamp(value: object) -> dt.datetime | None:
    """An RFC 3339 timestamp as the lab writes them (``2026-12-07T03:24:34Z``; naive means UTC), or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)
