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
        # uvloop and httptools ("auto" picks them when installed, as the api extra does); no
        # access log: at "warning" it is never written, but uvicorn would still build its record.
        loop="auto",
        http="auto",
        access_log=False,
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


@key_app.command("list")
def api_key_list(
    keys_path: Annotated[str | None, typer.Option(help="default: ATTRIBUTION_API_KEYS_PATH")] = None,
) -> None:
    """The keys of the key file: id (the start of its hash), name, role, advertiser. The keys
    themselves are not kept, so they cannot be shown."""
    from reporting.auth import key_id, read_keys

    path = settings(api_keys_path=keys_path).api.keys_path
    keys = read_keys(path)
    if not keys:
        console.print(f"no keys in {path} (`attribution api-key create` makes one)")
        return
    table = Table(title=f"{len(keys)} API keys in {path}")
    for col in ("id", "name", "role", "advertiser"):
        table.add_column(col)
    for k in keys:
        table.add_row(key_id(k), k.name, k.role, k.advertiser_id or "-")
    console.print(table)


@key_app.command("revoke")
def api_key_revoke(
    key_id_: Annotated[
        str | None, typer.Option("--id", help="the key's id, as `api-key list` shows it (6+ hex digits)")
    ] = None,
    name: Annotated[str | None, typer.Option(help="the key's name, if no other key has it")] = None,
    keys_path: Annotated[str | None, typer.Option(help="default: ATTRIBUTION_API_KEYS_PATH")] = None,
) -> None:
    """Remove a key from the key file. A running API refuses it within a few seconds (it re-reads
    the file when it changes), without a restart."""
    from reporting.auth import RELOAD_S, key_id, revoke_keys

    path = settings(api_keys_path=keys_path).api.keys_path
    for k in revoke_keys(path, name=name, id_prefix=key_id_):
        console.print(
            f"revoked {key_id(k)} ({k.name}, {k.role}); a running API refuses it within {RELOAD_S:g}s"
        )


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
    config = settings(lake_url=lake_url, store_url=store_url, needs=("lake_url",))
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
            _credit(r["orders"], r["model"]),
            format_minor(round(r["revenue_minor"]), r["currency"]),
            format_minor(int(r["spend_minor"]), r["currency"]),
            "-" if r["roas"] is None else f"{r['roas']:.2f}",
        )
    console.print(table)


def _credit(value: float, model: str) -> str:
    """Whole under the billing model; credit to two decimals under a multi-touch model."""
    from shared_logic.contract import BILLING_MODEL

    return f"{round(value):,}" if model == BILLING_MODEL else f"{value:,.2f}"
