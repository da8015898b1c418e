"""`cellfab` command line: run, check, simulate, demo, audit, cmd, backup, restore, report.

Exit codes: 0 ok, 2 invalid configuration (every error listed as `FILE: path.to.key: msg`),
1 anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import math
import signal
import sqlite3
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from controller import backup, cmd_cli, eventloop, report_cli
from controller.configload import ConfigError, load_site
from controller.errors import RefusedToStart
from controller.logsetup import setup_logging

EXIT_INVALID = 2


EXIT_FAILED = 1  # could not do it: the message says what and where
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `cellfab` console script.

    What the state or the machine refuses (a corrupt or locked state file, a path that is a
    file where a folder is needed, a port in use) ends in one line naming it, never a
    traceback; Ctrl-C ends quietly with 130. Anything else is a bug and keeps its traceback.
    """
    args = _parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (OSError, sqlite3.Error, RefusedToStart) as exc:
        print(f"cellfab {args.command}: {_describe(exc)}", file=sys.stderr)
        return EXIT_FAILED


def _positive_seconds(text: str) -> float:
    """An argparse type: a finite number of seconds above 0 (NaN, inf, -1 are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds above 0: {text}")
    return value


def _describe(exc: BaseException) -> str:
    """One line: an OSError names its file; an sqlite3 error is given its type."""
    if isinstance(exc, sqlite3.Error):
        return f"database error: {exc}"
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cellfab",
        description="Control and telemetry daemon for GMP cell-therapy cleanrooms.",
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND", dest="command")

    run = sub.add_parser(
        "run",
        help="run the daemon",
        description="Poll every device of "
        "the site file and forward readings to MQTT and InfluxDB until "
        "SIGTERM/SIGINT; in-flight data is flushed on the way out.",
    )
    _config_arg(run)
    _log_arg(run)
    run.set_defaults(handler=_cmd_run)

    check = sub.add_parser(
        "check",
        help="validate a site file and exit",
        description="Validate a site file (with CELLFAB_* overrides and "
        "device profiles). Exit 0 if valid, 2 if not, listing every error.",
    )
    _config_arg(check)
    check.set_defaults(handler=_cmd_check)

    simulate = sub.add_parser(
        "simulate",
        help="serve a simulator for every device",
        description="Serve the simulator of every device that has a "
        "[devices.simulator] table, at the endpoint the file gives it.",
    )
    _config_arg(simulate)
    _log_arg(simulate)
    simulate.set_defaults(handler=_cmd_simulate)

    audit = sub.add_parser(
        "audit",
        help="show or verify the audit trail",
        description="The hash-chained audit trail in the site's state dir (docs/audit.md).",
    )
    audit_sub = audit.add_subparsers(required=True, metavar="ACTION")
    show = audit_sub.add_parser(
        "show",
        help="print the records",
        description="Print the audit records (newest last); does not verify the chain.",
    )
    _config_arg(show)
    show.add_argument(
        "--since",
        type=_aware_time,
        default=None,
        metavar="ISO",
        help="only records at or after this UTC time (ISO 8601 with offset)",
    )
    show.add_argument("--limit", type=int, default=None, metavar="N", help="only the last N")
    show.set_defaults(handler=_cmd_audit_show)
    verify = audit_sub.add_parser(
        "verify",
        help="check the hash chain",
        description="Verify the hash chain: exit 0 intact, 3 tampered (which record, how), "
        "4 only a torn last line from a crash, 1 unreadable.",
    )
    _config_arg(verify)
    verify.set_defaults(handler=_cmd_audit_verify)

    cmd_cli.add_parser(sub)
    backup.add_parsers(sub)
    report_cli.add_parser(sub)

    demo = sub.add_parser(
        "demo",
        help="simulated floor + daemon with a live view",
        description="Run the simulated suite and the daemon in one "
        "process on the embedded defaults (config/demo.toml), with a live "
        "view of every tag. No external service is needed; set "
        "CELLFAB_MQTT_URL / CELLFAB_INFLUX_URL to also forward there.",
    )
    demo.add_argument(
        "--duration-s",
        type=_positive_seconds,
        default=None,
        help="stop after this many seconds (default: until Ctrl-C)",
    )
    demo.add_argument("--no-view", action="store_true", help="log only, no live table")
    _log_arg(demo, default="WARNING")
    demo.set_defaults(handler=_cmd_demo)
    return parser


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c", "--config", type=Path, required=True, metavar="FILE", help="site file (TOML)"
    )


def _log_arg(parser: argparse.ArgumentParser, default: str = "INFO") -> None:
    parser.add_argument(
        "--log-level",
        default=default,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log threshold",
    )


def _load_or_report(path: Path, *, read_secrets: bool = True) -> Any:
    try:
        return load_site(path, read_secrets=read_secrets)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return None


def _cmd_check(args: argparse.Namespace) -> int:
    cfg = _load_or_report(args.config, read_secrets=False)
    if cfg is None:
        return EXIT_INVALID
    loops = f", {len(cfg.loops)} loops" if cfg.loops else ""
    print(f"{args.config}: ok ({len(cfg.devices)} devices{loops})")
    return 0


def _aware_time(text: str) -> datetime:
    stamp = datetime.fromisoformat(text)
    if stamp.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset (e.g. +00:00 or Z)")
    return stamp


def _cmd_audit_show(args: argparse.Namespace) -> int:
    from controller import audit, audit_cli  # noqa: PLC0415

    cfg = _load_or_report(args.config, read_secrets=False)
    if cfg is None:
        return EXIT_INVALID
    return audit_cli.show(audit.trail_path(cfg.state.dir), sys.stdout, args.since, args.limit)


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    from controller import audit, audit_cli  # noqa: PLC0415

    cfg = _load_or_report(args.config, read_secrets=False)
    if cfg is None:
        return EXIT_INVALID
    return audit_cli.verify(audit.trail_path(cfg.state.dir), sys.stdout)


def _cmd_run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    cfg = _load_or_report(args.config)
    if cfg is None:
        return EXIT_INVALID
    from controller.access_config import KeyFileError, load_keys  # noqa: PLC0415
    from controller.app import Daemon  # noqa: PLC0415 — keeps `check` light
    from controller.daemon_parts import ConfigSource  # noqa: PLC0415

    try:
        keys = load_keys(cfg.users, args.config.parent)
    except KeyFileError as exc:
        for line in exc.errors:
            print(f"{args.config}: {line}", file=sys.stderr)
        return EXIT_INVALID
    digest = hashlib.sha256(args.config.read_bytes()).hexdigest()
    source = ConfigSource(str(args.config.resolve()), digest)

    async def daemon(stop: asyncio.Event) -> None:
        instance = Daemon(cfg, keys, source)
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, instance.request_reload)
        await instance.run(stop)

    return _run_until_signal(daemon)


def _cmd_simulate(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    cfg = _load_or_report(args.config)
    if cfg is None:
        return EXIT_INVALID
    from simulators.runner import serve_until  # noqa: PLC0415

    if not any(getattr(dev, "simulator", None) for dev in cfg.devices):
        print(f"{args.config}: no device has a [devices.simulator] table", file=sys.stderr)
        return EXIT_INVALID

    async def simulate(stop: asyncio.Event) -> None:
        await serve_until(cfg.devices, stop, cfg.buses)

    return _run_until_signal(simulate)


def _cmd_demo(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    from controller.demo import run_demo  # noqa: PLC0415

    async def demo(stop: asyncio.Event) -> None:
        await run_demo(stop, view=not args.no_view, duration_s=args.duration_s)

    return _run_until_signal(demo)


def _run_until_signal(main_coro: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> int:
    """Run `main_coro(stop)`; SIGTERM/SIGINT set `stop` so it can shut down cleanly."""
    try:
        loop_name = eventloop.chosen()
    except eventloop.EventLoopChoiceError as exc:
        print(f"cellfab: {exc}", file=sys.stderr)
        return EXIT_INVALID

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        logging.getLogger(__name__).info("event loop: %s", type(loop).__module__.split(".")[0])
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main_coro(stop)

    eventloop.run(runner(), loop_name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
