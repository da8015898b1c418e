"""The ISA-18.2 / IEC 62682 alarm states and their transitions, as tables (domain.md §4.1).

A process transition (`ALARM`, `RETURN`) or an operator action (`ACK`, `RESET`) looks its
(state, cause) pair up in a table; a pair that is not in the table changes nothing (process)
or is refused (operator). Shelving, suppression by design and out-of-service are masks laid
over the process state: while any is set the alarm shows the strongest of them, and when the
last one is lifted the state is re-evaluated (`settle`): active → unacknowledged, else the
state under the mask after a return, so that what still needs an ack or a reset keeps
needing it (a mask hides an alarm; it never acknowledges or resets one).
"""

from __future__ import annotations

import enum


class State(enum.StrEnum):
    """The letters are ISA-18.2's (domain.md §4.1); the values go into MQTT and InfluxDB."""

    NORMAL = "normal"  # A
    UNACK = "unacknowledged"  # B
    ACKED = "acknowledged"  # C
    RTN_UNACK = "rtn_unacknowledged"  # D
    LATCHED_UNACK = "latched_unacknowledged"  # E
    LATCHED_ACKED = "latched_acknowledged"  # F
    SHELVED = "shelved"  # G
    SUPPRESSED = "suppressed"  # H
    OUT_OF_SERVICE = "out_of_service"  # I


class Cause(enum.StrEnum):
    """Why a transition happened; recorded in every event."""

    ALARM = "alarm"  # the condition became active (after its on-delay)
    RETURN = "return"  # the condition returned to normal (deadband, off-delay)
    ACK = "ack"
    RESET = "reset"  # a latched, acknowledged alarm released by the operator
    SHELVE = "shelve"
    UNSHELVE = "unshelve"
    SHELVE_EXPIRED = "shelve_expired"
    SUPPRESS = "suppress"
    UNSUPPRESS = "unsuppress"
    OUT_OF_SERVICE = "out_of_service"
    IN_SERVICE = "in_service"


S, C = State, Cause

PROCESS: dict[tuple[State, Cause], State] = {
    (S.NORMAL, C.ALARM): S.UNACK,  # A → B
    (S.UNACK, C.RETURN): S.RTN_UNACK,  # B → D
    (S.ACKED, C.RETURN): S.NORMAL,  # C → A
    (S.RTN_UNACK, C.ALARM): S.UNACK,  # D → B (re-alarm before the ack)
    (S.LATCHED_UNACK, C.ALARM): S.UNACK,  # E → B
    (S.LATCHED_ACKED, C.ALARM): S.UNACK,  # F → B
}

LATCHING: dict[tuple[State, Cause], State] = PROCESS | {
    (S.UNACK, C.RETURN): S.LATCHED_UNACK,  # B → E: needs ack and reset
    (S.ACKED, C.RETURN): S.LATCHED_ACKED,  # C → F: needs reset
}

OPERATOR: dict[tuple[State, Cause], State] = {
    (S.UNACK, C.ACK): S.ACKED,  # B → C
    (S.RTN_UNACK, C.ACK): S.NORMAL,  # D → A
    (S.LATCHED_UNACK, C.ACK): S.LATCHED_ACKED,  # E → F
    (S.LATCHED_ACKED, C.RESET): S.NORMAL,  # F → A
}

MASKS = (S.OUT_OF_SERVICE, S.SHELVED, S.SUPPRESSED)  # strongest first
ANNUNCIATED = frozenset({S.UNACK, S.ACKED, S.RTN_UNACK, S.LATCHED_UNACK, S.LATCHED_ACKED})
UNACKED = frozenset({S.UNACK, S.RTN_UNACK, S.LATCHED_UNACK})


def process(state: State, cause: Cause, latch: bool) -> State:
    """The state after a process transition; unchanged where the table has no entry."""
    return (LATCHING if latch else PROCESS).get((state, cause), state)


def operator(state: State, cause: Cause) -> State | None:
    """The state after an operator's ack or reset, or None if it does not apply here."""
    return OPERATOR.get((state, cause))


def settle(  # noqa: PLR0917 - the masks, the condition, the state under them
    out_of_service: bool,
    shelved: bool,
    suppressed: bool,
    active: bool,
    under: State = S.NORMAL,
    latch: bool = False,
) -> State:
    """The state of an alarm whose masks changed: the strongest mask, else re-evaluated.

    `under` is the process state the alarm had when the first mask was laid on. Active now:
    a new occurrence (B). Returned: `under` after a return (B → D or E, C → A or F; D, E,
    F stay), so a latched or unacknowledged alarm still needs its ack or reset.
    """
    if out_of_service:
        return S.OUT_OF_SERVICE
    if shelved:
        return S.SHELVED
    if suppressed:
        return S.SUPPRESSED
    return S.UNACK if active else process(under, C.RETURN, latch)
