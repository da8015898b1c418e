"""InfluxDB sink: batches of line protocol POSTed to /api/v2/write, acked per batch.

influxdb-client's batching writer drops a batch once its retries run out, and the async
writer neither batches nor retries (shared/libraries.md §4), so batching, retry and the
decision to give up on bad data are ours. A batch is retried until the server takes it;
only lines the server calls malformed (400/422) are given up, one by one, after bisecting
the batch so the good lines around a bad one still land (docs/influx.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TypeVar

import aiohttp
from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.client.write_api_async import WriteApiAsync
from influxdb_client.domain.write_precision import WritePrecision

from controller.cancel import wait_at_most
from controller.config import SiteConfig
from controller.lineproto import LineFormatter, event_line, gap_lines
from controller.redact import redact
from controller.sinks.drain import DrainDeadline
from controller.sinks.outage import Outage, OutageMemory
from controller.spool_budget import Gap, one_line
from controller.stream import StreamCursor as Cursor
from controller.watchdog import Heart, Liveness
from drivers.backoff import Backoff
from drivers.sample import Scan
from drivers.transitions import TransitionLog

log = logging.getLogger(__name__)

BAD_DATA = frozenset({400, 422})  # the server read the lines and refused them
TOO_LARGE = 413
MESSAGE_MAX = 300  # characters of a server's message kept for logs, health and gap causes
_HTML_TITLE = re.compile(r"<title>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_HTML_TAG = re.compile(r"<[^>]*>")
_T = TypeVar("_T")


@dataclass
class InfluxStats:
    """Counters for health reporting; `lag` lives on the sink (it is the cursor's)."""

    lines_written: int = 0
    live_lines_written: int = 0  # written ahead of a backlog, written again in order later
    batches_written: int = 0
    failures: int = 0
    rejected_batches: int = 0
    rejected_lines: int = 0
    rejected_gaps: int = 0  # gap records given up (refused or unformattable), logged at ERROR
    rejected_events: int = 0  # events given up likewise
    last_error: str | None = None


class InfluxSink:
    """Writes every journal scan as one line; keeps failed batches behind the cursor."""

    def __init__(
        self,
        cfg: SiteConfig,
        cursor: Cursor,
        *,
        drain_timeout_s: float = 10.0,
        rng: random.Random | None = None,
        liveness: Liveness | None = None,
        on_outage: Callable[[Gap], None] | None = None,
        outages: OutageMemory | None = None,
    ) -> None:
        self._heart = Heart(liveness, "sink:influx")
        self._live_seq = 0  # newest scan written ahead of the backlog (not acked)
        self._outage = Outage(
            "InfluxDB", tuple(cfg.streams()), on_outage, memory=outages, key="influx"
        )
        if cfg.influx.url is None:
            raise ValueError("influx.url is not set: the InfluxDB sink is off")
        self._cfg = cfg.influx
        self._site = cfg.site.id
        self._url = cfg.influx.url
        self._where = redact(self._url)  # for the log: a URL may carry a password
        self._cursor = cursor
        self._formatter = LineFormatter(cfg)
        self._ceiling = cfg.influx.batch_max_lines  # lowered for good by a 413
        self._limit = self._ceiling  # lowered while bisecting a rejected batch
        self._backoff = Backoff(cfg.influx.retry_min_s, cfg.influx.retry_max_s, rng)
        self._link = TransitionLog(log, "InfluxDB")
        self._drain = DrainDeadline(cursor, drain_timeout_s)
        self.stats = InfluxStats()

    @property
    def lag(self) -> int:
        """Scans not yet accepted (or rejected) by the server."""
        return self._cursor.lag

    def health(self) -> dict[str, object]:
        """Counters and lag as one flat mapping."""
        return {**asdict(self.stats), "lag": self.lag}

    def add_streams(self, cfg: SiteConfig) -> None:
        """Format the devices and loops of a reloaded config too."""
        self._formatter.add_streams(cfg)
        self._outage.follow(tuple(cfg.streams()))

    async def run(self) -> None:
        """Write until the journal is closed and drained (or the drain deadline passes)."""
        token = self._cfg.token.get_secret_value() if self._cfg.token else ""  # "": no header
        timeout_ms = int(self._cfg.timeout_s * 1000)
        async with InfluxDBClientAsync(
            url=self._url, token=token, org=self._cfg.org, timeout=timeout_ms
        ) as client:
            api = client.write_api()
            while True:
                self._heart.idle()  # waiting for scans is not hanging
                if not await self._cursor.wait():
                    break
                if self._drain.expired():  # gaps or events alone can keep us here as well
                    self._give_up()
                    return
                self._heart.busy(self._cfg.flush_interval_s + self._cfg.timeout_s * 2 + 30.0)
                await self._coalesce()
                if self._cursor.gap_lag:
                    await self._deliver_gaps(api)
                if self._cursor.event_lag:
                    await self._deliver_events(api)
                if not self._cursor.lag:  # woken for gaps or events only
                    continue
                backlog = self._cursor.lag > self._cfg.batch_max_lines  # more than a batch
                if backlog:  # after an outage: the newest scans first, then the next old batch
                    await self._deliver_live(api)
                if self._drain.expired() or not await self._deliver(api):
                    self._give_up()
                    return
                if backlog:  # drain at a bounded rate: live data keep their place
                    await self._drain.pause(self._limit / self._cfg.backlog_max_lines_per_s)

    def _give_up(self) -> None:
        log.error(
            "InfluxDB: giving up at shutdown: %d scans, %d gaps and %d events not written to %s",
            self.lag,
            self._cursor.gap_lag,
            self._cursor.event_lag,
            self._where,
        )

    async def _deliver_live(self, api: WriteApiAsync) -> None:
        """During a backlog, write the scans newer than any written so far, without acking.

        They are written again, in order, when the backlog reaches them: InfluxDB keys a
        point by series and timestamp, so the second write overwrites the first (no
        duplicate). A failure is left to the backlog path's retry and backoff.
        """
        head = self._cursor.acked + self._cursor.lag
        start = max(self._live_seq, head - self._limit)
        live = self._cursor.peek_after(start, self._limit)
        if not live:
            return
        lines = self._scan_lines(live, live=True)
        try:
            if lines:
                await self._post(api, "\n".join(lines))
        except (InfluxDBError, aiohttp.ClientError, OSError, TimeoutError):
            return
        self._live_seq = live[-1][0]
        self.stats.live_lines_written += len(lines)

    async def _deliver_events(self, api: WriteApiAsync) -> None:
        """Events (alarm transitions, audit records) as lines; see `_deliver_records`."""
        events = self._cursor.peek_events(100)
        records = self._format("event", events, lambda ev: [event_line(self._site, ev)])
        await self._deliver_records(api, "event", records, self._cursor.ack_event)

    async def _deliver_gaps(self, api: WriteApiAsync) -> None:
        """Recorded gaps as `gap` lines; see `_deliver_records`."""
        gaps = self._cursor.peek_gaps(100)
        records = self._format("gap", gaps, lambda gap: gap_lines(self._site, gap))
        await self._deliver_records(api, "gap", records, self._cursor.ack_gap)

    def _format(
        self, what: str, items: list[tuple[int, _T]], lines: Callable[[_T], list[str]]
    ) -> list[tuple[int, list[str]]]:
        """Each record's lines; one that cannot be formatted is set aside (logged, counted)
        with no lines, so it is acked in its turn: a formatting error never stops the sink."""
        out = []
        for key, item in items:
            try:
                out.append((key, lines(item)))
            except Exception as exc:  # any: one record must not stop the sink for good
                self._set_aside(what, key, f"cannot be formatted ({exc})", repr(item))
                out.append((key, []))
        return out

    async def _deliver_records(
        self,
        api: WriteApiAsync,
        what: str,
        records: list[tuple[int, list[str]]],
        ack: Callable[[int], None],
    ) -> None:
        """Write gaps or events as scans are written: acked as they land, retried after a
        transient failure (next round), and bisected when the server refuses them (400/422,
        413) until the refused record stands alone and is set aside. A refusal is bad data,
        not an outage: retrying it would loop for ever and record a false outage each time.
        """
        if not records:  # pending, but the spool could not read them (it says why)
            await self._nothing_read()
            return
        todo = [records]
        while todo:
            chunk = todo.pop()
            lines = [line for _, record in chunk for line in record]
            try:
                if lines:
                    await self._post(api, "\n".join(lines))
            except InfluxDBError as exc:
                status = int(getattr(exc, "status", 0) or 0)
                reason = f"HTTP {status}: {_message(exc)}"
                if status not in BAD_DATA and status != TOO_LARGE:
                    await self._retry_later(f"{what}s: {reason}", status, exc.retry_after)
                    return
                if len(chunk) > 1:
                    half = len(chunk) // 2
                    todo += [chunk[half:], chunk[:half]]  # the older half first
                    continue
                self._set_aside(what, chunk[0][0], f"refused ({reason})", "\n".join(lines))
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                await self._retry_later(f"{what}s: {_error(exc)}", 0, None)
                return
            ack(chunk[-1][0])

    def _set_aside(self, what: str, key: int, why: str, text: str) -> None:
        """Give up one record for good: logged at ERROR with its text, and counted."""
        log.error("InfluxDB: %s %d given up, %s: %.2000s", what, key, why, text)
        self.stats.last_error = one_line(f"{what} {key} given up, {why}")
        if what == "gap":
            self.stats.rejected_gaps += 1
        elif what == "event":
            self.stats.rejected_events += 1
        else:
            self.stats.rejected_lines += 1

    async def _retry_later(self, reason: str, status: int, retry_after: str | None) -> None:
        wait = self._failed(reason, status, retry_after)
        self._heart.busy(wait + self._cfg.timeout_s * 2 + 30.0)
        await self._drain.pause(wait)

    async def _nothing_read(self) -> bool:
        """Something is pending but the spool gave nothing (it could not read its file, and
        logs why): wait as after a failure, then retry. False once the drain deadline passed."""
        wait = self._backoff.failed()
        self._heart.busy(wait + 30.0)
        return await self._drain.pause(wait)

    def _scan_lines(self, batch: list[tuple[int, Scan]], *, live: bool = False) -> list[str]:
        """The lines of `batch`; a scan that cannot be formatted is set aside (logged and
        counted once, by the backlog pass, not `live`) instead of stopping the sink."""
        out = []
        for seq, scan in batch:
            try:
                line = self._formatter.line(scan)
            except Exception as exc:  # any: one scan must not stop the sink for good
                if not live:
                    self._set_aside("scan", seq, f"cannot be formatted ({exc})", repr(scan))
                continue
            if line is not None:
                out.append(line)
        return out

    async def _coalesce(self) -> None:
        """Let a batch fill for up to `flush_interval_s`, unless it is full or we are closing."""
        end = time.monotonic() + self._cfg.flush_interval_s
        while self._cursor.lag < self._limit and not self._cursor.closed:
            left = end - time.monotonic()
            if left <= 0:
                return
            await wait_at_most(self._cursor.changed(), left)

    async def _deliver(self, api: WriteApiAsync) -> bool:
        """Write the pending batch until accepted or refused; False at the drain deadline."""
        batch = self._cursor.peek(self._limit)
        if not batch:  # pending, but the spool could not read it (it says why)
            return await self._nothing_read()
        lines = self._scan_lines(batch)
        while True:
            try:
                if lines:
                    await self._post(api, "\n".join(lines))
            except InfluxDBError as exc:
                status = int(getattr(exc, "status", 0) or 0)
                if status in BAD_DATA or status == TOO_LARGE:
                    self._refused(batch, lines, status, _message(exc))
                    return True
                wait = self._failed(f"HTTP {status}: {_message(exc)}", status, exc.retry_after)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                wait = self._failed(_error(exc), 0, None)
            else:
                self._written(batch, len(lines))
                return True
            self._heart.busy(wait + self._cfg.timeout_s * 2 + 30.0)
            if not await self._drain.pause(wait):
                return False

    async def _post(self, api: WriteApiAsync, text: str) -> None:
        async with asyncio.timeout(self._cfg.timeout_s):
            await api.write(
                bucket=self._cfg.bucket,
                org=self._cfg.org,
                record=text,
                # the library annotates its own str constant as the class
                write_precision=WritePrecision.NS,  # type: ignore[arg-type]
            )

    def _written(self, batch: list[tuple[int, Scan]], n_lines: int) -> None:
        self._outage.delivered()
        self._cursor.ack(batch[-1][0])
        self.stats.lines_written += n_lines
        self.stats.batches_written += 1
        self._backoff.succeeded()
        self._link.ok(self._where)

    def _failed(self, reason: str, status: int, retry_after: str | None) -> float:
        """Count a retryable failure, log it on transition; returns the wait before retrying."""
        reason = one_line(reason)
        self.stats.failures += 1
        self.stats.last_error = reason
        self._outage.failed(reason)
        if 400 <= status < 500 and status != 429 and not self._link.failing(self._where):
            log.error(
                "InfluxDB refuses writes (%s): check influx.url/token/org/bucket; "
                "the data is kept and retried",
                reason,
            )
        self._link.fail(self._where, reason)
        wait = self._backoff.failed()
        with contextlib.suppress(TypeError, ValueError):
            wait = max(wait, min(float(retry_after or 0), self._cfg.retry_max_s))
        return wait

    def _refused(
        self, batch: list[tuple[int, Scan]], lines: list[str], status: int, msg: str
    ) -> None:
        """Bisect a refused batch; a single refused scan is logged, counted and skipped."""
        if len(batch) > 1:
            if self._limit == self._ceiling:
                log.warning(
                    "InfluxDB refused a batch of %d lines (HTTP %d: %s); bisecting it",
                    len(lines),
                    status,
                    msg,
                )
            self._limit = max(1, len(batch) // 2)
            if status == TOO_LARGE:
                self._ceiling = self._limit
            return
        log.error(
            "InfluxDB refused a batch of %d line(s) for good (HTTP %d: %s): %.300s",
            len(lines),
            status,
            msg,
            lines[0] if lines else "",
        )
        self._cursor.ack(batch[-1][0])
        self.stats.rejected_batches += 1
        self.stats.rejected_lines += len(lines)
        self.stats.last_error = f"HTTP {status}: {msg}"
        self._limit = self._ceiling


def _message(exc: InfluxDBError) -> str:
    """The server's own words on one bounded line: the JSON `message`, else the body (an
    HTML error page, e.g. a proxy's 502, by its title), else the HTTP reason. It goes into
    logs, health and gap causes, where a line break cannot be written."""
    msg: object = exc.message
    if isinstance(msg, bytes):
        msg = msg.decode("utf-8", errors="replace")
    text = str(msg)
    title = _HTML_TITLE.search(text)
    if title is not None:
        text = title.group(1)
    elif text.lstrip().startswith("<"):
        text = _HTML_TAG.sub(" ", text)
    return one_line(text, MESSAGE_MAX)


def _error(exc: BaseException) -> str:
    """A connection error's text on one bounded line (its class when it has none)."""
    return one_line(str(exc) or type(exc).__name__, MESSAGE_MAX)
