"""The demo's live terminal view: every tag with value, unit, quality and age, in place.

On a terminal it redraws in place (rich's Live); piped into a file or a test it prints a
plain snapshot now and then, so the output stays readable there too.
"""

from __future__ import annotations

import asyncio
import contextlib

from rich.console import Console
from rich.live import Live
from rich.table import Table

from controller.tagstore import TagStore
from drivers.sample import Quality, utc_now_ns

STYLE = {Quality.GOOD: "green", Quality.UNCERTAIN: "yellow", Quality.BAD: "red"}


def render(store: TagStore, title: str) -> Table:
    """A table of every tag's latest state."""
    table = Table(title=title, expand=False)
    for col, justify in (
        ("device", "left"),
        ("tag", "left"),
        ("value", "right"),
        ("unit", "left"),
        ("quality", "left"),
        ("age s", "right"),
        ("reason", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    now = utc_now_ns()
    for row in store.rows():
        value = "—" if row.value is None else f"{row.value:.4g}"
        age = "—" if row.t_receive_ns == 0 else f"{(now - row.t_receive_ns) / 1e9:.1f}"
        quality = f"[{STYLE[row.quality]}]{row.quality.name.lower()}[/]"
        table.add_row(row.device, row.tag, value, row.unit, quality, age, row.reason or "")
    return table


async def run_view(
    store: TagStore, stop: asyncio.Event, title: str, console: Console | None = None
) -> None:
    """Refresh the view until `stop` is set; a final snapshot is printed at the end."""
    console = console or Console()
    if not console.is_terminal:
        await _plain(store, stop, title, console)
        return
    with Live(render(store, title), console=console, refresh_per_second=4) as live:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await stop.wait()
            live.update(render(store, title))


async def _plain(store: TagStore, stop: asyncio.Event, title: str, console: Console) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await stop.wait()
        console.print(render(store, title))
