"""Errors every component's command line shares.

``UsageError`` is bad command-line input: the ``ambient`` entry point prints its message in one
line and exits 1, with no traceback.
"""

from __future__ import annotations


class UsageError(Exception):
    """Bad command-line input; the message names the flag."""


def describe(exc: BaseException) -> str:
    """What went wrong, in one line, for a log or an answer: the exception's message, the messages
    inside an exception group, else its cause's, else its type's name."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(inner) for inner in exc.exceptions)
    if str(exc):
        return str(exc)
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause):
        return f"{type(exc).__name__}: {type(cause).__name__}: {cause}"
    return type(exc).__name__
