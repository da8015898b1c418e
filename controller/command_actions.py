"""What a command asks for, verb by verb: the typed actions and their fields.

`controller/commands.py` checks a payload's envelope (ids, signature fields, time); this
module turns the verb's own fields into an action. Objects are named as everywhere else:
loops and tags `device.name`, alarms by their id, devices and rooms by their id.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from controller.signing import JsonScalar

MAX_TEXT = 500
OBJECT = re.compile(r"^(?=.{3,128}$)[A-Za-z0-9][A-Za-z0-9_-]*\.[A-Za-z0-9_][A-Za-z0-9_.-]*$")
ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")  # a device or a room
BATCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{2,63}$")  # a lot id, never a name
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.,:/()+-]{0,63}$")

ALARM_VERBS = ("ack", "reset", "shelve", "unshelve", "out_of_service", "in_service")
VERB_FIELDS: dict[str, tuple[str, ...]] = {
    "setpoint": ("loop", "value"),
    "mode": ("loop", "mode"),  # + manual_output when mode is manual
    "write": ("tag", "value"),
    "batch/start": ("device", "batch", "product", "phase"),
    "batch/end": ("device", "batch"),
    **dict.fromkeys(ALARM_VERBS, ("alarm",)),
    "room_state": ("room", "state"),
}
VERB_FIELDS["shelve"] = ("alarm", "duration_s")


class Refusal(Exception):
    """A request that is not carried out: a machine `code` and a `message` for a human.

    Messages never contain the signature, a key or arbitrary payload text.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Setpoint:
    """Move a loop's set-point to `value` (engineering units of its PV)."""

    loop: str
    value: float

    @property
    def object(self) -> str:
        return self.loop


@dataclass(frozen=True)
class Mode:
    """Switch a loop to auto, or to manual with a fixed `manual_output`."""

    loop: str
    mode: Literal["auto", "manual"]
    manual_output: float | None

    @property
    def object(self) -> str:
        return self.loop


@dataclass(frozen=True)
class Write:
    """Write `value` to a writable tag `device.tag` outside any loop."""

    tag: str
    value: float

    @property
    def object(self) -> str:
        return self.tag


@dataclass(frozen=True)
class BatchStart:
    """Device `device` starts running batch `batch` (a pseudonymous lot id)."""

    device: str
    batch: str
    product: str
    phase: str

    @property
    def object(self) -> str:
        return self.device


@dataclass(frozen=True)
class BatchEnd:
    """Device `device` stops running batch `batch`."""

    device: str
    batch: str

    @property
    def object(self) -> str:
        return self.device


@dataclass(frozen=True)
class AlarmAction:
    """An operator action on one alarm (ISA-18.2): ack, shelve, unshelve, out/in service."""

    verb: str
    alarm: str
    duration_s: float | None = None

    @property
    def object(self) -> str:
        return self.alarm


@dataclass(frozen=True)
class RoomState:
    """A room's operational state, which selects its particle limits."""

    room: str
    state: Literal["at_rest", "in_operation"]

    @property
    def object(self) -> str:
        return self.room


Action = Setpoint | Mode | Write | BatchStart | BatchEnd | AlarmAction | RoomState


def parse_action(verb: str, fields: dict[str, JsonScalar]) -> Action:  # noqa: PLR0911 - a case a verb
    """The verb's fields as an action; raises Refusal naming the bad field."""
    if verb == "setpoint":
        return Setpoint(_match(fields, "loop", OBJECT), number(fields, "value"))
    if verb == "write":
        return Write(_match(fields, "tag", OBJECT), number(fields, "value"))
    if verb == "mode":
        return _mode(fields)
    if verb == "batch/start":
        return BatchStart(
            _match(fields, "device", ID),
            _match(fields, "batch", BATCH),
            _match(fields, "product", LABEL),
            _match(fields, "phase", LABEL),
        )
    if verb == "batch/end":
        return BatchEnd(_match(fields, "device", ID), _match(fields, "batch", BATCH))
    if verb == "room_state":
        room, state = _match(fields, "room", ID), fields["state"]
        if state == "at_rest":
            return RoomState(room, "at_rest")
        if state == "in_operation":
            return RoomState(room, "in_operation")
        raise Refusal("bad_field", "state must be 'at_rest' or 'in_operation'")
    duration = number(fields, "duration_s") if verb == "shelve" else None
    if duration is not None and duration <= 0:
        raise Refusal("bad_field", "duration_s must be above 0")
    return AlarmAction(verb, _match(fields, "alarm", OBJECT), duration)


def new_value(action: Action) -> float | str | None:  # noqa: PLR0911 - a case a verb
    """What the action sets, for the audit trail's `new` field."""
    match action:
        case Setpoint() | Write():
            return action.value
        case Mode(mode=mode, manual_output=None):
            return mode
        case Mode(manual_output=out):
            return f"manual (output {out:g})"
        case BatchStart():
            return f"{action.batch} ({action.product}, {action.phase})"
        case BatchEnd():
            return f"ended {action.batch}"
        case AlarmAction(verb="shelve", duration_s=d):
            return f"shelved for {d:g} s"
        case AlarmAction(verb=verb):
            return verb
        case RoomState(state=state):
            return state


def text(
    fields: dict[str, JsonScalar], key: str, pattern: re.Pattern[str] | None, rule: str
) -> str:
    """A string field, matched against `pattern` or (None) any non-blank text."""
    value = fields[key]
    if not isinstance(value, str):
        raise Refusal("bad_field", f"{key} must be a string, not {kind(value)}")
    if pattern is not None and not pattern.fullmatch(value):
        raise Refusal("bad_field", f"{key} must be {rule}")
    if pattern is None and not (0 < len(value.strip()) <= MAX_TEXT):
        raise Refusal("bad_field", f"{key} must be non-empty text of at most {MAX_TEXT} characters")
    return value


def number(fields: dict[str, JsonScalar], key: str) -> float:
    """A finite number field (booleans are not numbers)."""
    value = fields[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Refusal("bad_field", f"{key} must be a number, not {kind(value)}")
    try:
        result = float(value)
    except OverflowError:
        result = math.inf
    if not math.isfinite(result):
        raise Refusal("bad_field", f"{key} is too large for a double")
    return result


def kind(value: object) -> str:
    """The JSON type name of a value, for messages."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


_RULES = {
    OBJECT.pattern: "'device.name' (letters, digits, '-', '_', '.'; ≤ 128)",
    ID.pattern: "an id: lower-case letters, digits, '-' or '_'",
    BATCH.pattern: "a lot id: 3-64 letters, digits, '.', '-' or '_' (never a patient's name)",
    LABEL.pattern: "1-64 plain characters",
}


def _match(fields: dict[str, JsonScalar], key: str, pattern: re.Pattern[str]) -> str:
    return text(fields, key, pattern, _RULES[pattern.pattern])


def _mode(fields: dict[str, JsonScalar]) -> Mode:
    mode = fields["mode"]
    loop = _match(fields, "loop", OBJECT)
    if mode == "auto":
        if "manual_output" in fields:
            raise Refusal("extra_field", "manual_output is only allowed with mode manual")
        return Mode(loop, "auto", None)
    if mode == "manual":
        return Mode(loop, "manual", number(fields, "manual_output"))
    raise Refusal("bad_field", "mode must be 'auto' or 'manual'")
