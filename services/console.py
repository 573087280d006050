"""What every ``dimsebus`` sub-command shares: its consoles, and one way to stop on bad input."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dimsebus.services.errors import DimsebusError

if TYPE_CHECKING:  # pydantic-settings and the bus topology: for the commands that read settings
    import asyncio

    from dimsebus.services.settings import ServiceSettings

console = Console()
err = Console(stderr=True)
S = TypeVar("S", bound="ServiceSettings")

ConfigOption = Annotated[Path | None, typer.Option("--config", help="TOML settings file")]
DbOption = Annotated[str | None, typer.Option("--db", help="SQLite file or postgresql:// URL")]
HttpPortOption = Annotated[
    int | None, typer.Option("--http-port", help="serve /metrics and /healthz on this port")
]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one clear line naming the problem, and exit 2 (bad input) or ``code``."""
    say_error(message)
    raise typer.Exit(code)


def say_error(message: str) -> None:
    """``error: message`` on stderr, on one line however long, as plain text (no markup)."""
    line = " ".join(message.split())
    err.print(f"[red]error:[/red] {escape(line)}", highlight=False, soft_wrap=True)


def settings_or_exit(cls: type[S], config: Path | None, **flags: Any) -> S:
    """Settings from file, environment and flags; a bad value is one line and exit 2."""
    from dimsebus.services.settings import load_settings

    try:
        return load_settings(cls, config, **flags)
    except DimsebusError as exc:
        fail(str(exc))


def parse_labels(pairs: Sequence[str]) -> dict[str, str]:
    """``--label k=v`` options as a map, or a DimsebusError naming the one that is not k=v."""
    labels = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            raise DimsebusError(f"--label: {pair!r} is not k=v")
        labels[key] = value
    return labels


def run_service(service: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run a long-running service until SIGINT or SIGTERM sets its stop event.

    A ``DimsebusError`` that ends it (bad topology, bad settings) is one line, exit 2.
    """
    import asyncio
    import signal

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await service(stop)

    try:
        asyncio.run(main())
    except DimsebusError as exc:
        fail(str(exc))


@contextlib.contextmanager
def until_interrupted() -> Iterator[threading.Event]:
    """An event that Ctrl-C (SIGINT) or SIGTERM sets, for a command that loops until then.

    A KeyboardInterrupt is raised wherever the main thread happens to be, inside rich's
    rendering (beside rich.live's refresh thread) or a store's read; a flag ends the loop at
    the one place that looks at it.
    """
    stop = threading.Event()
    previous = {
        signum: signal.signal(signum, lambda *_: stop.set())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def show_rows(
    views: list[dict[str, Any]],
    *,
    as_json: bool,
    title: str,
    columns: Sequence[str],
    row: Callable[[dict[str, Any]], Sequence[str]],
) -> None:
    """A listing: the views as one JSON array, or a table with one ``row(view)`` each."""
    if as_json:
        print(json.dumps(views, indent=2))
        return
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for view in views:
        table.add_row(*row(view))
    console.print(table)
