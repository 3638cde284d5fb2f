"""Every command's ``--help`` reads well at 80 and 100 columns: no line wider than the terminal, no
option name cut, no ``<bool>`` noise on flags, and the docstring's own line breaks do not show (its
paragraphs are rewrapped: a line ends only where the next word would not fit)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import click
import pytest
import typer

from cli import app

pytestmark = pytest.mark.unit


def _commands(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, cmd
    subcommands = getattr(cmd, "commands", None)  # a group (typer's own click, or click's)
    if subcommands:
        for name, sub in sorted(subcommands.items()):
            yield from _commands(sub, (*path, name))


ROOT = typer.main.get_command(app)
COMMANDS = list(_commands(ROOT))


def _help(path: tuple[str, ...], width: int, monkeypatch: pytest.MonkeyPatch) -> str:
    """``attribution PATH --help`` as a terminal of ``width`` columns (COLUMNS) shows it: the same
    contexts click builds, with the root's settings (click's test runner would force 80 columns)."""
    monkeypatch.setenv("COLUMNS", str(width))
    ctx = click.Context(ROOT, info_name="attribution", **ROOT.context_settings)
    command: Any = ROOT
    for name in path:
        command = command.commands[name]
        ctx = click.Context(command, info_name=name, parent=ctx)
    return str(command.get_help(ctx))


def _description(text: str) -> list[list[str]]:
    """The paragraphs of the text between the usage line and the first section (Options:)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Usage:")) + 1
    end = next(
        (i for i, line in enumerate(lines) if line.endswith(":") and not line.startswith(" ")), len(lines)
    )
    paragraphs: list[list[str]] = [[]]
    for line in lines[start:end]:
        if line.strip():
            paragraphs[-1].append(line)
        elif paragraphs[-1]:
            paragraphs.append([])
    return [p for p in paragraphs if p]


def test_every_command_is_covered() -> None:
    names = {" ".join(path) for path, _ in COMMANDS}
    for expected in ("live", "demo", "batch run", "api-key list", "api-key revoke", "budget show"):
        assert expected in names


@pytest.mark.parametrize("width", [80, 100])
@pytest.mark.parametrize(
    ("path", "command"), COMMANDS, ids=[" ".join(p) or "attribution" for p, _ in COMMANDS]
)
def test_help_reads_well(
    path: tuple[str, ...], command: Any, width: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = _help(path, width, monkeypatch)
    too_wide = [line for line in text.splitlines() if len(line) > width]
    assert too_wide == [], too_wide
    assert "<bool>" not in text
    for param in command.params:
        for name in (*param.opts, *param.secondary_opts):
            if name.startswith("-"):
                assert name in text.split() or f"{name}," in text or f"{name} " in text, (name, text)
    limit = min(width, 120) - 2  # click's formatter: the narrower of the terminal and max_content_width
    for paragraph in _description(text):
        for line, following in itertools.pairwise(paragraph):
            next_word = following.split()[0]
            assert len(line.rstrip()) + 1 + len(next_word) > limit, (
                f"a line break where {next_word!r} would have fit:\n{line}\n{following}"
            )
