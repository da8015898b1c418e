"""`cellfab audit show` and `cellfab audit verify` as plain functions returning exit codes.

Exit codes: 0 intact (verify) / every line shown is a record matching its hash (show), 1 the
file cannot be read, 3 tampered (verify) / some line shown is unreadable or does not match its
hash (show), 4 only a torn last line (a crash during an append). Text from the trail is
printed with control characters escaped, so a record cannot rewrite the reviewer's terminal.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TextIO

from controller.audit import Line, read_lines
from controller.audit_chain import verify_trail
from controller.audit_record import AuditValue, format_time

EXIT_OK = 0
EXIT_UNREADABLE = 1
EXIT_TAMPERED = 3
EXIT_TORN = 4


def show(path: Path, out: TextIO, since: datetime | None = None, limit: int | None = None) -> int:
    """Print the records at or after `since` (aware), the last `limit` of them if given.

    Show reads, it does not verify the chain: run `verify` for that.
    """
    if since is not None:
        format_time(since)  # refuses a naive datetime
    try:
        lines = [ln for ln in read_lines(path) if _selected(ln, since)]
    except OSError as exc:
        print(f"cannot read audit trail {path}: {exc}", file=out)
        return EXIT_UNREADABLE
    if limit is not None:
        lines = lines[-limit:] if limit > 0 else []
    for ln in lines:
        print(_show_line(ln), file=out)
    if any(not ln.torn and not ln.hash_ok for ln in lines):
        return EXIT_TAMPERED
    return EXIT_TORN if any(ln.torn for ln in lines) else EXIT_OK


def verify(path: Path, out: TextIO) -> int:
    """Check the chain and print one line per finding, naming the line and record number."""
    try:
        verdict = verify_trail(path)
    except OSError as exc:
        print(f"cannot read audit trail {path}: {exc}", file=out)
        return EXIT_UNREADABLE
    head = verdict.last
    where = f"last #{head.seq} sha256 {head.hash}" if head else "no records"
    print(f"audit trail {path}: {verdict.records} records, {where}", file=out)
    for finding in verdict.findings:
        print(f"  {finding.kind.upper()}: {finding.message}", file=out)
    if verdict.intact:
        print("INTACT: every record matches its hash and chains to the one before", file=out)
        return EXIT_OK
    if verdict.torn_only:
        print("TORN TAIL ONLY: the records before it are intact", file=out)
        return EXIT_TORN
    print(f"TAMPERED: {len(verdict.findings)} finding(s)", file=out)
    return EXIT_TAMPERED


def _selected(ln: Line, since: datetime | None) -> bool:
    return since is None or ln.record is None or ln.record.time >= since


def _show_line(ln: Line) -> str:
    r = ln.record
    if r is None:
        return f"!! line {ln.lineno}: unreadable: {ln.error}"
    mark = "" if ln.hash_ok else "  !! does not match its hash"
    return (
        f"#{r.seq} {format_time(r.time)} {_text(r.user)} ({_text(r.role)}) via "
        f"{_text(r.client)}: {_text(r.action)} {_text(r.obj)} {_value(r.old)} -> "
        f"{_value(r.new)} [{_text(r.result)}] reason: {_value(r.reason)}{mark}"
    )


def _text(s: str) -> str:
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in s) or '""'


def _value(v: AuditValue) -> str:
    return _text(json.dumps(v, ensure_ascii=False))
