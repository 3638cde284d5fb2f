"""The ``attribution`` command: one module per command group, assembled here.

Every command prints tables or one clear line; a failure (bad usage, bad
input, a missing server, a missing extra) is one red line and an exit status
from ``cli.errors``, never a stack trace.
"""

from __future__ import annotations

import logging
import sys

import typer
from rich.text import Text

from cli.batch import batch_app, reconcile
from cli.budget import budget_app
from cli.common import err
from cli.demo import demo
from cli.errors import INTERRUPTED, describe
from cli.generate import generate
from cli.ivt import ivt_app
from cli.lake import lake_app, lake_sink, land
from cli.live import live
from cli.realtime import realtime_app, worker
from cli.serve import api, key_app, report_app

app = typer.Typer(
    help="Attribution engine for ads and promos.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # click's plain help: docstring paragraphs rewrapped to the terminal, no "<bool>" metavars,
    # option names never cut; up to 120 columns wide.
    rich_markup_mode=None,
    context_settings={"max_content_width": 120},
)
app.command()(generate)
app.command()(worker)
app.command()(demo)
app.command()(reconcile)
app.command()(api)
app.command("lake-sink")(lake_sink)
app.command()(land)
app.command()(live)
app.add_typer(realtime_app, name="realtime")
app.add_typer(budget_app, name="budget")
app.add_typer(batch_app, name="batch")
app.add_typer(lake_app, name="lake")
app.add_typer(report_app, name="report")
app.add_typer(key_app, name="api-key")
app.add_typer(ivt_app, name="ivt")
for _group in app.registered_groups:  # the groups' help too
    if _group.typer_instance is not None:
        _group.typer_instance.rich_markup_mode = None


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; turn every failure into one line and an exit status."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = app(args=argv, standalone_mode=False)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(INTERRUPTED)
    except Exception as exc:
        if type(exc).__name__ == "Abort":  # click's (and Typer's vendored click's) Ctrl-C
            err.print("aborted")
            sys.exit(INTERRUPTED)
        if type(exc).__name__ == "NoArgsIsHelpError":  # a group called bare: its help, as click shows it
            err.print(Text(exc.format_message()), highlight=False)  # type: ignore[attr-defined]
            sys.exit(2)
        code, message = describe(exc)
        err.print(Text.assemble(("error:", "red"), " ", message), highlight=False, soft_wrap=True)
        sys.exit(code)
    sys.exit(result if isinstance(result, int) else 0)
