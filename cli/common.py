"""What the command groups share: consoles, the settings tree, common options and formats."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import IO, Annotated, Any

import typer
from rich.console import Console

from shared_logic import Catalog
from shared_logic.money import format_minor
from shared_logic.settings import PREFIX, Settings, load_settings

console = Console()
if not console.is_terminal:  # piped or captured: wide enough for the tables
    console.width = max(console.width, 140)
err = Console(stderr=True, width=200)

CatalogOpt = Annotated[
    str | None,
    typer.Option(
        "--catalog",
        help="campaign catalog: a YAML/JSON file or cassandra://hosts:port/keyspace "
        "(default: ATTRIBUTION_CATALOG_URL)",
    ),
]


#: Settings a command can need that silently point at something else when left out: what they are
#: called, and the option that gives them.
NOTED = {
    "redis_url": ("Redis", "--redis-url"),
    "catalog_url": ("catalog", "--catalog"),
    "lake_url": ("lake", "--lake-url"),
}


def settings(*, needs: tuple[str, ...] = (), **changes: Any) -> Settings:
    """The settings tree from the environment, with the command's options on top.

    ``needs`` names the settings of :data:`NOTED` the command uses: those given neither as an
    option nor in the environment are said, in one line on stderr, with the defaults they take."""
    config = load_settings(**changes)
    defaulted = [n for n in needs if changes.get(n) is None and f"{PREFIX}{n.upper()}" not in os.environ]
    if defaulted:
        err.print(defaults_line(config, defaulted), highlight=False, soft_wrap=True)
    return config


def defaults_line(config: Settings, names: list[str]) -> str:
    """``note: no Redis given (--redis-url or ATTRIBUTION_REDIS_URL): using redis://...; ...``"""
    values = {"redis_url": config.redis.url, "catalog_url": config.catalog.url, "lake_url": config.lake.url}
    said = "; ".join(
        f"{NOTED[n][0]} {values[n]} (default; {NOTED[n][1]} or {PREFIX}{n.upper()} sets it)" for n in names
    )
    live_env = Path("var/live/live.env")
    hint = f" For make live's: set -a; . {live_env}; set +a" if live_env.exists() else ""
    return f"note: using defaults: {said}.{hint}"


def catalog_of(config: Settings) -> Catalog:
    from storage.catalog import open_catalog

    return open_catalog(config.catalog.url)


def dates(start: str, end: str | None) -> tuple[date, date]:
    try:
        first = date.fromisoformat(start)
        last = date.fromisoformat(end) if end else first
    except ValueError as exc:
        raise typer.BadParameter(f"{exc}: dates are YYYY-MM-DD") from None
    if last < first:
        raise typer.BadParameter(f"end = {last} is before start = {first}")
    return first, last


def money(value: int | None, currency: str) -> str:
    return "-" if value is None else format_minor(value, currency)


def exe_path() -> str:
    """The ``attribution`` command as a user can type it from here: bare when it is on ``PATH``,
    ``.venv/bin/attribution`` when it lies under the current folder, else its absolute path."""
    exe = Path(sys.executable).with_name("attribution")
    found = shutil.which("attribution")
    if found and Path(found).resolve() == exe.resolve():
        return "attribution"
    try:
        return str(exe.relative_to(Path.cwd()))
    except ValueError:
        return str(exe)


class SafeStream:
    """A text stream that outlives its reader: writes go to ``target`` until it breaks (a closed
    pipe, a killed ``tee``, a terminal gone: ``BrokenPipeError``, ``EIO``), then to ``fallback``
    (a log file opened on first need), so a long command finishes what it started whatever happens
    to its output. ``broken`` says whether it switched."""

    def __init__(self, target: IO[str], fallback: Path) -> None:
        self.target = target
        self.fallback = fallback
        self.broken = False
        self._tty = _isatty(target)
        self._out: IO[str] | None = None

    def _switch(self) -> IO[str]:
        if self._out is None:
            self.broken = True
            self.fallback.parent.mkdir(parents=True, exist_ok=True)
            self._out = self.fallback.open("a", encoding="utf-8")
            # Python flushes sys.stdout/sys.stderr at exit: point the broken descriptor at /dev/null
            # so that flush neither fails nor prints "Exception ignored ... BrokenPipeError".
            try:
                fd = self.target.fileno()
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, fd)
                os.close(null)
            except (OSError, ValueError, AttributeError):
                pass
        return self._out

    def write(self, text: str) -> int:
        if self._out is None:
            try:
                written = self.target.write(text)
                self.target.flush()
                return written
            except (OSError, ValueError):
                pass
        out = self._switch()
        out.write(text)
        out.flush()
        return len(text)

    def flush(self) -> None:
        if self._out is None:
            try:
                self.target.flush()
            except (OSError, ValueError):
                self._switch()

    def isatty(self) -> bool:
        return self._tty and self._out is None

    def fileno(self) -> int:
        return self.target.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self.target, "encoding", None) or "utf-8"


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (OSError, ValueError, AttributeError):
        return False


#: Where the JVM's own output (Spark's warnings, log4j's console lines) goes, not the terminal.
JVM_LOG = Path("var/logs/spark.log")


@contextlib.contextmanager
def jvm_output_to_log(path: Path = JVM_LOG) -> Iterator[Path]:
    """While Spark's JVM starts, point file descriptors 1 and 2 at ``path``: the JVM inherits them
    and keeps writing its warnings there; this process gets its own back on the way out."""
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with path.open("ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        yield path
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
