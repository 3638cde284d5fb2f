"""``attribution api``, ``attribution api-key create`` and ``attribution report roas``: serving."""

from __future__ import annotations

from typing import Annotated, Literal, cast

import typer
from rich.table import Table

from cli.common import CatalogOpt, catalog_of, console, dates, settings
from shared_logic.money import format_minor

key_app = typer.Typer(help="API keys (stored hashed).", no_args_is_help=True)
report_app = typer.Typer(help="Reports from the analytics store.", no_args_is_help=True)


def api(
    host: Annotated[str | None, typer.Option(help="default: ATTRIBUTION_API_HOST")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="default: ATTRIBUTION_API_PORT")] = None,
    workers: Annotated[int, typer.Option(min=1)] = 1,
) -> None:
    """Serve the HTTP API (settings from ATTRIBUTION_*)."""
    import uvicorn

    config = settings(api_host=host, api_port=port)
    uvicorn.run(
        "reporting.api:app_from_env",
        factory=True,
        host=config.api.host,
        port=config.api.port,
        workers=workers,
        log_level="warning",
    )


@key_app.command("create")
def api_key_create(
    name: Annotated[str, typer.Option(help="who the key is for")],
    role: Annotated[str, typer.Option(help="admin, advertiser or ad_server")],
    advertiser_id: Annotated[str | None, typer.Option(help="for an advertiser key")] = None,
    keys_path: Annotated[str | None, typer.Option(help="default: ATTRIBUTION_API_KEYS_PATH")] = None,
    catalog: CatalogOpt = None,
    allow_unknown_advertiser: Annotated[
        bool,
        typer.Option(help="create an advertiser key even if no campaign of the catalog has that advertiser"),
    ] = False,
) -> None:
    """Create a key: its hash goes to the key file, the key is printed once."""
    from reporting.auth import add_key
    from shared_logic.errors import InvalidInput

    if role not in ("admin", "advertiser", "ad_server"):
        raise typer.BadParameter(f"role = {role!r}: must be admin, advertiser or ad_server")
    config = settings(api_keys_path=keys_path, catalog_url=catalog)
    unknown = (
        role == "advertiser"
        and advertiser_id is not None
        and not allow_unknown_advertiser
        and not catalog_of(config).advertiser_campaigns(advertiser_id)
    )
    if unknown:
        raise InvalidInput(
            "advertiser_id",
            advertiser_id,
            f"has no campaign in the catalog {config.catalog.url} "
            "(a typo? --allow-unknown-advertiser creates the key anyway)",
        )
    role_ = cast(Literal["admin", "advertiser", "ad_server"], role)
    console.print(add_key(config.api.keys_path, name, role_, advertiser_id))


@report_app.command("roas")
def report_roas(
    start: Annotated[str, typer.Option(help="first day, YYYY-MM-DD")],
    end: Annotated[str | None, typer.Option(help="last day (inclusive)")] = None,
    advertiser_id: Annotated[str | None, typer.Option()] = None,
    model: Annotated[list[str] | None, typer.Option()] = None,
    lake_url: Annotated[str | None, typer.Option(help="default: ATTRIBUTION_LAKE_URL")] = None,
    store_url: Annotated[str | None, typer.Option(help="default: ATTRIBUTION_STORE_URL")] = None,
) -> None:
    """ROAS per day, campaign and model from the analytics store (batch view)."""
    from reporting.stores import RoasQuery, open_store
    from storage import open_lake

    first, last = dates(start, end)
    config = settings(lake_url=lake_url, store_url=store_url)
    lake = open_lake(config.lake.url, config.s3)
    store = open_store(config.store.url, lake)
    try:
        rows = store.roas(
            RoasQuery(
                first,
                last,
                (advertiser_id,) if advertiser_id else None,
                None,
                tuple(model) if model else None,
            )
        )
    finally:
        store.close()
    table = Table(title=f"ROAS {first}..{last}")
    for col in ("day", "campaign", "model", "orders", "revenue", "spend", "ROAS"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r["dt"]),
            r["campaign_id"],
            r["model"],
            f"{r['orders']:.1f}",
            format_minor(int(r["revenue_minor"]), r["currency"]),
            format_minor(int(r["spend_minor"]), r["currency"]),
            "-" if r["roas"] is None else f"{r['roas']:.2f}",
        )
    console.print(table)
