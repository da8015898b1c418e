"""Verify a trail's hash chain and name each record that was edited, removed, inserted or moved.

Checks are independent so one tampering yields one finding, not a cascade: each record's own
hash (edited), its `prev` against the hash of the record numbered one less, wherever that sits
(chain break), the set of sequence numbers (removed, duplicated = inserted) and their file order
(reordered). A line that is not a record is malformed; an unterminated last line is torn.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from controller.audit import Line, read_lines
from controller.audit_record import GENESIS, AuditRecord

Kind = Literal["edited", "broken", "removed", "inserted", "reordered", "malformed", "torn"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing wrong with the trail, located by line (1-based) and record number."""

    kind: Kind
    lineno: int
    seq: int | None
    message: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of `verify_trail`: the records read and every finding, in file order."""

    records: int
    last: AuditRecord | None
    findings: tuple[Finding, ...]

    @property
    def intact(self) -> bool:
        """True when nothing at all is wrong."""
        return not self.findings

    @property
    def torn_only(self) -> bool:
        """True when the only finding is an incomplete last line (a crash during an append)."""
        return bool(self.findings) and all(f.kind == "torn" for f in self.findings)


def verify_trail(path: Path) -> Verdict:
    """Read the whole trail and check it; raises OSError only if the file cannot be read."""
    lines = list(read_lines(path))
    records = [ln for ln in lines if ln.record is not None]
    findings = _unreadable(lines) + _edited(records)
    inserted = _duplicates(records, findings)
    kept = [ln for ln in records if ln.lineno not in inserted]
    findings += _breaks(kept) + _gaps(kept, lines) + _order(kept)
    findings.sort(key=lambda f: f.lineno)
    last = kept[-1].record if kept else None
    return Verdict(len(records), last, tuple(findings))


def _rec(line: Line) -> AuditRecord:
    if line.record is None:  # pragma: no cover - callers pass record lines only
        raise TypeError(f"line {line.lineno} holds no record")
    return line.record


def _unreadable(lines: list[Line]) -> list[Finding]:
    out: list[Finding] = []
    before: int | None = None
    for ln in lines:
        if ln.record is not None:
            before = ln.record.seq
            continue
        after = f" after record #{before}" if before is not None else " at the start"
        if ln.torn:
            msg = (
                f"line {ln.lineno}: torn tail{after}: {ln.size} bytes without a newline - an "
                "append cut short by a crash (the next writer moves it into a recovery "
                "record), or the last record was truncated"
            )
            out.append(Finding("torn", ln.lineno, None, msg))
        else:
            msg = f"line {ln.lineno}: not a valid record{after} ({ln.error}): edited or inserted"
            out.append(Finding("malformed", ln.lineno, None, msg))
    return out


def _edited(records: list[Line]) -> list[Finding]:
    return [
        Finding(
            "edited",
            ln.lineno,
            _rec(ln).seq,
            f"line {ln.lineno}: record #{_rec(ln).seq} edited: its content does not match its hash",
        )
        for ln in records
        if not ln.hash_ok
    ]


def _duplicates(records: list[Line], findings: list[Finding]) -> set[int]:
    """Lines whose seq another line also holds: the ones not chaining are inserted."""
    by_seq: dict[int, list[Line]] = defaultdict(list)
    for ln in records:
        by_seq[_rec(ln).seq].append(ln)
    inserted: set[int] = set()
    for seq, group in by_seq.items():
        if len(group) < 2:
            continue
        expected = {GENESIS} if seq == 1 else {_rec(p).hash for p in by_seq.get(seq - 1, [])}
        genuine = [ln for ln in group if _rec(ln).prev in expected and ln.hash_ok][:1]
        for ln in group:
            if ln in genuine:
                continue
            if genuine:
                msg = (
                    f"line {ln.lineno}: inserted record: it claims #{seq}, which line "
                    f"{genuine[0].lineno} holds as the one chaining to record #{seq - 1}"
                )
            else:
                msg = (
                    f"line {ln.lineno}: inserted record: #{seq} appears more than once and "
                    f"no copy chains to record #{seq - 1}"
                )
            findings.append(Finding("inserted", ln.lineno, seq, msg))
            inserted.add(ln.lineno)
    return inserted


def _breaks(kept: list[Line]) -> list[Finding]:
    """`prev` must be the hash of record seq-1 (GENESIS for #1), wherever that line sits."""
    hashes = {_rec(ln).seq: (ln.lineno, _rec(ln).hash) for ln in kept}
    out: list[Finding] = []
    for ln in kept:
        r = _rec(ln)
        if r.seq == 1:
            if r.prev != GENESIS:
                msg = f"line {ln.lineno}: record #1 does not start from the genesis value"
                out.append(Finding("broken", ln.lineno, 1, msg))
            continue
        before = hashes.get(r.seq - 1)
        if before is not None and r.prev != before[1]:
            msg = (
                f"line {ln.lineno}: chain broken between record #{r.seq - 1} (line "
                f"{before[0]}) and record #{r.seq}: #{r.seq - 1} was rewritten with a "
                f"recomputed hash, or #{r.seq} was forged"
            )
            out.append(Finding("broken", ln.lineno, r.seq, msg))
    return out


def _gaps(kept: list[Line], lines: list[Line]) -> list[Finding]:
    """Sequence numbers missing from 1..max, unless an unreadable line explains them."""
    present = sorted((_rec(ln).seq, ln.lineno) for ln in kept)
    out: list[Finding] = []
    prev_seq, prev_line = 0, 0
    for seq, lineno in present:
        if seq > prev_seq + 1 and not _unreadable_between(lines, prev_line, lineno):
            first, last = prev_seq + 1, seq - 1
            span = f"record #{first}" if first == last else f"records #{first}-#{last}"
            where = f"after line {prev_line}" if prev_line else "at the start"
            msg = f"line {lineno}: {span} removed ({where}, before record #{seq})"
            out.append(Finding("removed", lineno, first, msg))
        prev_seq, prev_line = seq, lineno
    return out


def _unreadable_between(lines: list[Line], a: int, b: int) -> bool:
    lo, hi = min(a, b), max(a, b)
    return any(ln.record is None and lo < ln.lineno < hi for ln in lines)


def _order(kept: list[Line]) -> list[Finding]:
    out: list[Finding] = []
    for a, b in itertools.pairwise(kept):
        if _rec(b).seq < _rec(a).seq:
            msg = (
                f"line {b.lineno}: records reordered: #{_rec(b).seq} comes after "
                f"#{_rec(a).seq} (line {a.lineno})"
            )
            out.append(Finding("reordered", b.lineno, _rec(b).seq, msg))
    return out
