"""Exit statuses of the ``attribution`` command, mapped in one place from the error tree.

| status | when |
| --- | --- |
| 0 | done |
| 1 | an error of the engine that is none of the below (a failed data-quality check, say) |
| 2 | bad usage, a bad argument, a bad setting or input, something named that does not exist |
| 3 | a server the command needs did not answer (Redis, a broker, a store, a catalog) |
| 4 | an optional dependency group is not installed |
| 130 | interrupted |

Every failure is one line on stderr, never a traceback.
"""

from __future__ import annotations

from typing import Any

from shared_logic.errors import (
    AttributionError,
    Conflict,
    InvalidInput,
    MissingExtra,
    NotFound,
    Unavailable,
    foreign_unavailable,
)

USAGE, UNAVAILABLE, MISSING_EXTRA, INTERRUPTED = 2, 3, 4, 130
_BY_CATEGORY: tuple[tuple[type[BaseException], int], ...] = (
    (InvalidInput, USAGE),
    (NotFound, USAGE),
    (Conflict, USAGE),
    (Unavailable, UNAVAILABLE),
    (MissingExtra, MISSING_EXTRA),
    (AttributionError, 1),
    (ConnectionError, UNAVAILABLE),
    (TimeoutError, UNAVAILABLE),
    (OSError, 1),
)


def is_usage_error(exc: BaseException) -> bool:
    """Click's (and Typer's vendored click's) usage errors: a bad command, option or argument."""
    return hasattr(exc, "format_message") and getattr(exc, "exit_code", None) == USAGE


def describe(exc: BaseException) -> tuple[int, str]:
    """The exit status and the one line to print for a failure."""
    if is_usage_error(exc):
        ctx: Any = getattr(exc, "ctx", None)
        path = ctx.command_path if ctx is not None else "attribution"
        return USAGE, f"{exc.format_message()} (see '{path} --help')"  # type: ignore[attr-defined]
    if foreign_unavailable(exc) is not None:
        return UNAVAILABLE, f"{type(exc).__name__}: {exc}"
    for category, code in _BY_CATEGORY:
        if isinstance(exc, category):
            return code, str(exc)
    raise exc
