"""What every command shares: the -q/-v options, consoles, progress bars, number formatting."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click

PATH = click.Path(path_type=Path)


def common_options(fn):
    """``-q/--quiet`` (no progress bar) and ``-v/--verbose`` (log progress messages)."""
    fn = click.option("-v", "--verbose", is_flag=True, help="Log progress messages.")(fn)
    return click.option("-q", "--quiet", is_flag=True, help="No progress bar.")(fn)


def setup(verbose: bool) -> None:
    """Log to stderr through rich, unless the embedding program (or pytest) configured logging."""
    root = logging.getLogger()
    if root.handlers:
        return
    from rich.console import Console
    from rich.logging import RichHandler

    handler = RichHandler(console=Console(stderr=True), show_path=False, show_time=False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler], format="%(message)s")


def stdout():
    from rich.console import Console

    return Console()


def stderr():
    from rich.console import Console

    return Console(stderr=True)


@contextmanager
def _bar(description: str, total: int, unit: str) -> Iterator[Callable[[int], None]]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn(unit), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=stderr(), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


@contextmanager
def _none(*_args) -> Iterator[None]:
    yield None


def progress_factory(quiet: bool):
    """``factory(description, total, unit)`` -> a context manager yielding ``advance(n)`` or None.

    Bars go to stderr, only on a terminal, never with ``--quiet``, and not for an empty total.
    """
    enabled = not quiet and sys.stderr.isatty()

    def factory(description: str, total: int, unit: str):
        return _bar(description, total, unit) if enabled and total and total > 0 else _none()

    return factory


def stage_printer(command: str, quiet: bool):
    """``stage(message)``: one bold line on stderr per stage of a long job (silent with ``--quiet``)."""
    err = stderr()

    def stage(message: str) -> None:
        if not quiet:
            err.print(f"[bold]wcscan {command}[/bold] {message}", highlight=False)

    return stage


def warn(message: str) -> None:
    """One line ``wcscan: warning: <message>`` on stderr (never wrapped)."""
    sys.stderr.write("wcscan: warning: " + " ".join(str(message).split()) + "\n")


def fmt(value) -> str:
    """Numbers for tables: 4 significant digits for floats.

    >>> fmt(3.14159), fmt(7)
    ('3.142', '7')
    """
    return f"{value:.4g}" if isinstance(value, float) else str(value)
