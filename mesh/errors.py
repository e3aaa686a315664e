"""Errors every component's command line shares.

``UsageError`` is bad command-line input: the ``ambient`` entry point prints its message in one
line and exits 1, with no traceback.
"""

from __future__ import annotations


class UsageError(Exception):
    """Bad command-line input; the message names the flag."""

