"""A device with no good tag is a gap from its last good reading to its first good one."""

from __future__ import annotations

from controller.device_gaps import DeviceGaps
from controller.spool_budget import Gap
from controller.tagstore import TagStore
from drivers.registermap import RegisterSpec
from drivers.sample import Sample, Scan

TAGS = (
    RegisterSpec(tag="a", unit="u", address=0, type="u16"),
    RegisterSpec(tag="b", unit="u", address=1, type="u16"),
)


def scan(store: TagStore, t: int, good: tuple[bool, bool], device: str = "dev") -> None:
    samples = tuple(
        Sample.good(tag.tag, 1.0, "u", t) if ok else Sample.bad(tag.tag, "u", "timeout", t)
        for tag, ok in zip(TAGS, good, strict=True)
    )
    store.update(Scan(device, t, samples))


def test_gap_spans_last_good_to_first_good_and_half_bad_is_no_gap() -> None:
    store = TagStore([("dev", TAGS), ("other", TAGS)])
    gaps: list[Gap] = []
    watch = DeviceGaps(["dev", "other"], gaps.append)
    assert watch.check(store, 5) == []  # never read yet: not a gap
    scan(store, 10, (True, True))
    watch.check(store, 10)
    scan(store, 20, (True, False))  # one tag bad: data still there
    watch.check(store, 20)
    scan(store, 30, (False, False))
    watch.check(store, 30)
    scan(store, 40, (False, False))
    assert watch.check(store, 40) == []  # still open
    scan(store, 50, (True, True))
    (gap,) = watch.check(store, 50)
    assert gap == Gap(20, 50, "device unreachable: timeout", ("dev",), 0)
    assert gaps == [gap]
    scan(store, 60, (False, False))
    watch.check(store, 60)
    (last,) = watch.close_all(99)
    assert (last.start_ns, last.end_ns) == (50, 99)


def test_a_reload_watches_added_devices_and_ends_the_gap_of_a_removed_one() -> None:
    store = TagStore([("dev", TAGS), ("new", TAGS)])
    gaps: list[Gap] = []
    watch = DeviceGaps(["dev"], gaps.append)
    scan(store, 10, (False, False))
    watch.check(store, 10)  # dev: gap open since it was first seen failing
    scan(store, 15, (False, False), device="new")
    (ended,) = watch.follow(["new"], 20)  # dev left the config, new came in
    assert ended == Gap(10, 20, "device unreachable: timeout", ("dev",), 0)
    watch.check(store, 30)
    (last,) = watch.close_all(40)
    assert (last.devices, last.start_ns, last.end_ns) == (("new",), 30, 40)
    assert gaps == [ended, last]
