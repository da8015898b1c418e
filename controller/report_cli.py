"""`cellfab report`: write one batch's record from the state dir (docs/batch-record.md)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

EXIT_INVALID = 2


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `report` sub-command."""
    p = sub.add_parser(
        "report",
        help="write a batch's record (HTML, CSV, SHA256SUMS)",
        description="Write the record of one batch from local data (batch archive, batch "
        "history, audit trail) as report.html, report.csv and SHA256SUMS (docs/"
        "batch-record.md). Exit 0 written, 1 written but the batch is unknown, a line of the "
        "batch history is unreadable or the audit chain is broken (the finding is at the "
        "top), 2 bad site file.",
    )
    p.add_argument("-c", "--config", type=Path, required=True, metavar="FILE")
    p.add_argument("--batch", required=True, metavar="ID", help="the batch (lot) id")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="output folder (default: ./batch-<ID>)")  # fmt: skip
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of `cellfab report`."""
    # imported here: numpy and the report stack load only for this sub-command
    from controller.batch_archive import BatchArchive, archive_path  # noqa: PLC0415
    from controller.batch_report import build_report  # noqa: PLC0415
    from controller.batch_report_html import write_report  # noqa: PLC0415
    from controller.configload import ConfigError, load_site  # noqa: PLC0415

    try:
        cfg = load_site(args.config, read_secrets=False)
    except ConfigError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return EXIT_INVALID
    state = cfg.state.dir
    path = archive_path(state)
    archive = BatchArchive(path, readonly=True) if path.exists() else None
    try:
        with archive.snapshot() if archive is not None else contextlib.nullcontext():
            report = build_report(archive, state, cfg, args.batch)
    finally:
        if archive is not None:
            archive.close()
    out: Path = args.out or Path(f"batch-{args.batch}")
    digest = write_report(report, out)
    for line in report.failures:
        print(f"cellfab report: {line}", file=sys.stderr)
    print(f"{digest}  {out / 'report.html'}")
    return 0 if report.ok else 1
