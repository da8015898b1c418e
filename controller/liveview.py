"""The demo's live terminal view: every tag with value, unit, quality and age, in place.

One small table per device, flowed side by side so a whole suite fits on one screen; a tag
that is not good shows its reason in place of nothing. On a terminal it redraws in place
(rich's Live); piped into a file or a test it prints a plain snapshot now and then.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable

from rich.columns import Columns
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from controller.tagstore import TagRow, TagStore
from drivers.sample import Quality, utc_now_ns

STYLE = {Quality.GOOD: "green", Quality.UNCERTAIN: "yellow", Quality.BAD: "red"}


AlarmRows = Callable[[], list[tuple[str, str, str, str]]]
PRIORITY_STYLE = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "cyan"}


def render(store: TagStore, title: str, alarms: AlarmRows | None = None) -> RenderableType:
    """Alarms that need attention first, then every tag's latest state, a table per device."""
    now = utc_now_ns()
    tables = [
        _device_table(device, list(rows), now)
        for device, rows in itertools.groupby(store.rows(), key=lambda r: r.device)
    ]
    parts: list[RenderableType] = [Text(title, style="bold")]
    rows = alarms() if alarms is not None else []
    if rows:
        table = Table(title="alarms", title_justify="left", show_edge=False, pad_edge=False)
        for col in ("alarm", "state", "priority", "message"):
            table.add_column(col)
        for alarm, state, priority, message in rows:
            style = PRIORITY_STYLE.get(priority, "")
            table.add_row(alarm, state, f"[{style}]{priority}[/]", message[:70])
        parts.append(table)
    return Group(*parts, Columns(tables, padding=(0, 1)))


def _device_table(device: str, rows: list[TagRow], now_ns: int) -> Table:
    table = Table(title=device, title_justify="left", show_edge=False, pad_edge=False)
    for col, justify in (("tag", "left"), ("value", "right"), ("unit", "left"), ("q", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    table.add_column("age s", justify="right")
    for row in rows:
        style = STYLE[row.quality]
        if row.value is not None:
            value = f"{row.value:.4g}"
        else:
            value = f"[{style}]{(row.reason or '—')[:28]}[/]"
        age = "—" if row.t_receive_ns == 0 else f"{(now_ns - row.t_receive_ns) / 1e9:.1f}"
        quality = f"[{style}]{row.quality.name[0]}[/]"
        table.add_row(row.tag, value, row.unit, quality, age)
    return table


async def run_view(
    store: TagStore,
    stop: asyncio.Event,
    title: str,
    console: Console | None = None,
    alarms: AlarmRows | None = None,
) -> None:
    """Refresh the view until `stop` is set; a final snapshot is printed at the end."""
    console = console or Console()
    if not console.is_terminal:
        await _plain(store, stop, title, console, alarms)
        return
    with Live(render(store, title, alarms), console=console, refresh_per_second=4) as live:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await stop.wait()
            live.update(render(store, title, alarms))


async def _plain(
    store: TagStore, stop: asyncio.Event, title: str, console: Console, alarms: AlarmRows | None
) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await stop.wait()
        console.print(render(store, title, alarms))
