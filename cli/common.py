"""What the command groups share: consoles, the settings tree, common options and formats."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

import typer
from rich.console import Console

from shared_logic import Catalog
from shared_logic.money import format_minor
from shared_logic.settings import Settings, load_settings

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


def settings(**changes: Any) -> Settings:
    """The settings tree from the environment, with the command's options on top."""
    return load_settings(**changes)


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
