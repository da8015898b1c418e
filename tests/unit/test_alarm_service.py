"""The alarm service on a tag store: cleanroom alarms, UNCERTAIN and stale data, restarts."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from controller.alarm_service import AlarmService, RoomTag, cleanroom_alarms, room_stream
from controller.cleanroom.rooms import CleanroomConfig
from controller.command_actions import AlarmAction, RoomState
from controller.tagstore import TagStore
from drivers.sample import Quality, Sample, Scan

T0 = 1_800_000_000 * 1_000_000_000
MIN = 60 * 1_000_000_000
P05, P50 = "conc_0_5um", "conc_5_0um"


def cleanroom(grade: str = "B") -> CleanroomConfig:
    room = {"id": "r", "grade": grade, "p05_tag": f"pc.{P05}", "p50_tag": f"pc.{P50}"}
    return CleanroomConfig.model_validate({"rooms": [room | {"alert_fraction": 0.7}]})


def service(grade: str = "B", state_path: Path | None = None) -> tuple[AlarmService, TagStore]:
    """One room on one counter, in the config's default state (in operation)."""
    cr = cleanroom(grade)
    tags = [RoomTag(P05, "particles/m3"), RoomTag(P50, "particles/m3")]
    store = TagStore([("pc", tags), (room_stream("r"), [RoomTag()])])
    svc = AlarmService(
        cleanroom_alarms(cr),
        store,
        {room.id: room.state for room in cr.rooms},
        publish_state=lambda *_: None,
        record_event=lambda _: None,
        record_scan=store.update,
        state_path=state_path,
    )
    return svc, store


def feed(store: TagStore, p05: float, p50: float, t_ns: int, q: Quality = Quality.GOOD) -> None:
    """One counter record, received at `t_ns`."""
    samples = (Sample(P05, p05, "particles/m3", q, t_ns), Sample(P50, p50, "particles/m3", q, t_ns))
    store.update(Scan("pc", t_ns, samples))


def states(svc: AlarmService, *alarms: str) -> list[str | None]:
    return [svc.state(f"room.r.{a}") for a in alarms]


def test_a_particle_overflow_raises_the_action_alarms() -> None:
    """A Lighthouse overflow makes the counts UNCERTAIN lower bounds: far above the Grade A
    limits they are certain excursions and must alarm, not freeze the alarms."""
    svc, store = service("A")
    svc.start()
    feed(store, 100.0, 0.0, T0)
    svc.tick(1.0, T0)
    feed(store, 1e7, 5000.0, T0 + MIN, Quality.UNCERTAIN)
    events = svc.tick(2.0, T0 + MIN)
    raised = {e.alarm for e in events if e.to_state == "unacknowledged"}
    assert "room.r.in_operation.p05.action" in raised
    assert "room.r.in_operation.p50.action" in raised  # the critical Grade A 5 µm alarm
    feed(store, 1.0, 0.0, T0 + 2 * MIN, Quality.UNCERTAIN)
    assert svc.tick(3.0, T0 + 2 * MIN) == []  # an uncertain low count returns nothing


def test_every_cleanroom_source_has_a_quality_alarm() -> None:
    """Both particle tags and every ΔP tag are watched for bad or stale data, in every
    room state (not suppressed by the room's state)."""
    cr = CleanroomConfig.model_validate(
        {
            "rooms": [cleanroom().rooms[0].model_dump()],
            "pressure_links": [{"high_room": "r", "low_room": "corridor", "tag": "dp.pa"}],
            "unclassified_areas": ["corridor"],
        }
    )
    quality = {a.id: a for a in cleanroom_alarms(cr) if a.kind == "quality"}
    assert {a.tag for a in quality.values()} == {f"pc.{P05}", f"pc.{P50}", "dp.pa"}
    assert all(a.suppress_when is None for a in quality.values())
    assert quality["room.r.p50.quality"].stale_after_s == 180
    assert quality["dp.r.corridor.quality"].priority == "high"


def test_a_counter_that_stops_sending_new_records_alarms() -> None:
    """The driver re-publishes its last record as GOOD with the same receive time: after
    stale_after_s (180 s) without a new record the source's quality alarm is raised."""
    svc, store = service()
    svc.start()
    feed(store, 100.0, 0.0, T0)
    for now in range(0, 182):  # one tick a second, the same record over and over
        feed(store, 100.0, 0.0, T0)
        events = svc.tick(float(now), T0 + now * 1_000_000_000)
        if now < 181:
            assert not [e for e in events if e.alarm.endswith(".quality")], now
    assert states(svc, "p05.quality", "p50.quality") == ["unacknowledged"] * 2


def test_the_room_state_survives_a_restart(tmp_path: Path) -> None:
    """A room switched to at_rest stays at rest after a restart (its 100x stricter limits),
    whatever the config's first default says."""
    path = tmp_path / "alarms.json"
    svc, store = service(state_path=path)
    svc.start()
    assert json.loads((tmp_path / "rooms.json").read_text())["r"]["state"] == "in_operation"
    svc.set_room_state(RoomState("r", "at_rest"), "qa")
    svc, store = service(state_path=path)  # the restart: the config still says in_operation
    svc.start()
    assert svc.room_state("r") == "at_rest"
    feed(store, 50_000.0, 0.0, T0)  # above the Grade B at-rest 3 520, within 352 000
    svc.tick(1.0, T0)
    assert states(svc, "at_rest.p05.action", "in_operation.p05.action") == [
        "unacknowledged",
        "suppressed",
    ]


def test_health_is_right_after_a_restart(tmp_path: Path) -> None:
    """Restored states come back without events: the health report must still list them."""
    path = tmp_path / "alarms.json"
    svc, store = service("A", path)
    svc.start()
    feed(store, 5000.0, 0.0, T0)
    svc.tick(1.0, T0)
    svc.operate(AlarmAction("out_of_service", "room.r.in_operation.p50.action"), "tech", "swap")
    svc.operate(AlarmAction("shelve", "room.r.in_operation.p50.alert", 3600.0), "op", "known")
    before = svc.health_doc(T0 + 1)
    svc, store = service("A", path)
    svc.start()
    after = svc.health_doc(T0 + 2)
    for key in ("unacknowledged", "out_of_service", "shelved"):
        assert after[key] == before[key], key
    assert after["unacknowledged"] == 2
    feed(store, 5000.0, 0.0, T0 + 3)
    svc.tick(2.0, T0 + 3)  # suppression by design is derived again at the first tick
    assert svc.health_doc(T0 + 4)["suppressed"] == before["suppressed"]


@pytest.mark.parametrize(
    "text",
    [
        '{"room.r.in_operation.p05.action": {"state": "latched"}}',
        '{"room.r.in_operation.p05.action": {}}',
        "null",
        "[]",
        '{"x"',
        "",
    ],
)
def test_a_wrong_alarms_file_does_not_stop_the_start(
    tmp_path: Path, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A well-formed but wrong (or damaged) alarms.json is logged naming the file, kept
    aside as alarms.json.bad-<UTC>; the alarms start from normal and the good ones are
    restored."""
    path = tmp_path / "alarms.json"
    svc, store = service("A", path)
    svc.start()
    feed(store, 5000.0, 0.0, T0)
    svc.tick(1.0, T0)  # p05 action and alert: unacknowledged, saved
    saved = json.loads(path.read_text())
    wrong = json.loads(text) if text.startswith('{"room') else None
    path.write_text(json.dumps(saved | wrong) if wrong is not None else text)
    svc, _ = service("A", path)
    with caplog.at_level(logging.ERROR):
        svc.start()
    assert str(path) in caplog.text
    (aside,) = tmp_path.glob("alarms.json.bad-*")
    assert aside.read_text() == (json.dumps(saved | wrong) if wrong is not None else text)
    assert svc.state("room.r.in_operation.p05.action") == "normal"
    restored = wrong is not None  # the other, good entry came back
    assert (svc.state("room.r.in_operation.p05.alert") == "unacknowledged") == restored
    assert persist_ok(path)


def persist_ok(path: Path) -> bool:
    """alarms.json is readable again (or absent) after the start."""
    return not path.exists() or isinstance(json.loads(path.read_text()), dict)
