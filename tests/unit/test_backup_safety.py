"""Backup and restore against forged manifests, inline secrets, torn histories, wrong sites.

Each test here reproduces a review finding: a manifest path that leads restore out of its
target, a password in a sink URL copied without a warning, a torn `batches.jsonl` line,
a backup of one site restored into another, and a daemon starting in the middle of a restore.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller import backup as backup_mod
from controller.app import Daemon
from controller.audit import AuditTrail, TrailLocked, trail_path
from controller.backup import RestoreRefused, backup, main, restore
from controller.backup_manifest import MANIFEST_NAME, inline_secrets, read_manifest, sha256_file
from controller.batches import HISTORY
from controller.config import SiteConfig
from controller.configload import ENV_OVERRIDES, load_site
from controller.spool import SpoolLocked
from tests.unit.test_backup import Site, checked

PAYLOAD = b"* * * * * root echo pwned\n"
URL_PASSWORD = "Hunter2-broker-pw"  # noqa: S105 - a test value, never a real secret


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ENV_OVERRIDES:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def made(tmp_path: Path) -> Iterator[Site]:
    site = Site(tmp_path)
    backup(site.cfg, site.site, site.backup)
    yield site


def moved(cfg: SiteConfig, state: Path, site_id: str | None = None) -> SiteConfig:
    """`cfg` with another state dir (and site id)."""
    update: dict[str, Any] = {"state": cfg.state.model_copy(update={"dir": state})}
    if site_id is not None:
        update["site"] = cfg.site.model_copy(update={"id": site_id})
    return cfg.model_copy(update=update)


def edit_manifest(backup_dir: Path, change: Any) -> None:
    path = backup_dir / MANIFEST_NAME
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def forge(backup_dir: Path, payload_at: str, paths: list[str]) -> None:
    """Put PAYLOAD at `payload_at` in the backup and list it under each of `paths`."""
    where = backup_dir / payload_at
    where.parent.mkdir(parents=True, exist_ok=True)
    where.write_bytes(PAYLOAD)
    size, digest = sha256_file(where)
    entries = [
        {"path": p, "kind": "file", "source": "x", "size": size, "sha256": digest} for p in paths
    ]
    edit_manifest(backup_dir, lambda data: data["files"].extend(entries))


# --- 1. paths in the manifest -------------------------------------------------------------


def forged_cases(tmp: Path) -> dict[str, tuple[str, list[str], Path]]:
    """name -> (where the payload is in the backup, the paths listed, where it would land)."""
    outside = tmp / "outside" / "PWNED"
    absolute = "state" + str(outside)  # state/<tmp>/outside/PWNED: the file in the backup
    return {
        "absolute": (absolute, ["state/" + str(outside), absolute], outside),
        "dot-dot state": ("PWNED", ["state/../PWNED", "PWNED"], tmp / "PWNED"),
        "dot-dot config": ("PWNED", ["config/../PWNED", "PWNED"], tmp / "PWNED"),
        "lock file": ("state/audit.lock", ["state/audit.lock"], tmp / "fresh" / "audit.lock"),
    }


@pytest.mark.parametrize("case", ["absolute", "dot-dot state", "dot-dot config", "lock file"])
def test_manifest_paths_leaving_the_target_are_refused(
    made: Site, tmp_path: Path, case: str
) -> None:
    """A forged entry fails the check, naming it, and restore writes nothing outside."""
    payload_at, paths, lands = forged_cases(tmp_path)[case]
    forge(made.backup, payload_at, paths)
    ok, text = checked(made.backup)
    assert not ok
    assert f"file {paths[0]!r} " in text, text
    fresh, conf = tmp_path / "fresh", tmp_path / "conf-out"
    out = io.StringIO()
    assert not restore(moved(made.cfg, fresh), made.backup, out, force=False, config_to=conf)
    assert "nothing was written" in out.getvalue()
    assert not lands.exists()
    assert not fresh.exists()
    assert not conf.exists()


def test_a_path_listed_twice_is_refused(made: Site) -> None:
    """A second entry for one file cannot vouch for it: the manifest is refused."""
    edit_manifest(made.backup, lambda data: data["files"].append(data["files"][0]))
    ok, text = checked(made.backup)
    assert not ok
    assert "is listed twice" in text


def test_restore_refuses_a_symlink_out_of_the_target(made: Site, tmp_path: Path) -> None:
    """A link in the config dir that leads out of it is caught before anything is written."""
    outside, conf, fresh = tmp_path / "outside", tmp_path / "conf-out", tmp_path / "fresh"
    outside.mkdir()
    conf.mkdir()
    (conf / "profiles").symlink_to(outside)
    with pytest.raises(RestoreRefused, match=r"config/profiles/inc\.toml: would be written to"):
        restore(moved(made.cfg, fresh), made.backup, io.StringIO(), force=True, config_to=conf)
    assert not any(outside.iterdir())
    assert not fresh.exists()


# --- 2. a password in a sink URL ----------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "url", "warned"),
    [
        ("mqtt", f"mqtts://cellfab:{URL_PASSWORD}@broker:8883", True),
        ("mqtt", f"mqtt://cellfab:{URL_PASSWORD}@[bad:1883", True),
        ("influx", f"https://admin:{URL_PASSWORD}@influx:8086", True),
        ("mqtt", "mqtt://cellfab@broker:1883", False),
        ("influx", "https://influx:8086", False),
    ],
)
def test_password_in_a_sink_url_is_flagged(
    tmp_path: Path, section: str, url: str, warned: bool
) -> None:
    """A `user:password@` URL in the site file is in the backup: say which key, not the value."""
    site = tmp_path / "site.toml"
    site.write_text(f'[site]\nid = "x"\n[{section}]\nurl = "{url}"\n')
    warnings = inline_secrets(site)
    assert [w.split(" ", 1)[0] for w in warnings] == ([f"{section}.url"] if warned else [])
    assert URL_PASSWORD not in "".join(warnings)


def test_backup_warns_of_a_url_password_without_showing_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`cellfab backup` prints the warning and keeps it in the manifest; the password nowhere."""
    site = Site(tmp_path)
    url = f"mqtts://cellfab:{URL_PASSWORD}@broker:8883"
    site.site.write_text(site.site.read_text().replace("[mqtt]\n", f'[mqtt]\nurl = "{url}"\n'))
    assert main(["backup", "-c", str(site.site), "--to", str(site.backup)]) == 0
    printed = capsys.readouterr().out
    assert "WARNING: mqtt.url holds a password" in printed
    assert any(w.startswith("mqtt.url ") for w in read_manifest(site.backup).warnings)
    assert URL_PASSWORD not in printed
    assert URL_PASSWORD not in (site.backup / MANIFEST_NAME).read_text()


def test_url_password_in_the_file_is_warned_under_an_env_override(tmp_path: Path) -> None:
    """The file's URL is copied even when CELLFAB_MQTT_URL overrides it: still warned."""
    site = Site(tmp_path)
    text = site.site.read_text()
    site.site.write_text(text.replace("[mqtt]\n", f'[mqtt]\nurl = "mqtt://u:{URL_PASSWORD}@b"\n'))
    env = {"CELLFAB_MQTT_URL": "mqtt://broker:1883"}
    cfg = load_site(site.site, env, read_secrets=False)
    manifest = backup(cfg, site.site, site.backup, env=env)
    assert any(w.startswith("mqtt.url holds a password") for w in manifest.warnings)


# --- 3. a torn line in batches.jsonl -------------------------------------------------------


def test_torn_last_line_of_the_batch_history_is_left_out(tmp_path: Path) -> None:
    """batches.jsonl is copied up to its last newline, as the audit trail, and restores readable."""
    site = Site(tmp_path)
    start = {"event": "start", "device": "inc-1", "batch": "LOT-1", "product": "p"}
    start |= {"phase": "x", "started": "2026-11-22T08:00:00.000Z", "started_by": "alice"}
    end = start | {"event": "end", "ended": "2026-11-22T09:00:00.000Z", "ended_by": "alice"}
    lines = b"".join(json.dumps(e).encode() + b"\n" for e in (start, end))
    torn = b'{"event":"start","bat'
    (site.state / HISTORY).write_bytes(lines + torn)
    manifest = backup(site.cfg, site.site, site.backup)
    assert (site.backup / "state" / HISTORY).read_bytes() == lines
    entry = next(e for e in manifest.files if e.path == f"state/{HISTORY}")
    assert entry.kind == "jsonl"
    assert entry.jsonl is not None
    assert (entry.jsonl.lines, entry.jsonl.torn_bytes_excluded) == (2, len(torn))
    assert checked(site.backup)[0]
    fresh = tmp_path / "fresh"
    out = io.StringIO()
    assert restore(moved(site.cfg, fresh), site.backup, out, force=False, config_to=None)
    assert (fresh / HISTORY).read_bytes() == lines


# --- 4. the site a backup came from -------------------------------------------------------


def test_restore_into_another_site_is_refused_without_other_site(
    made: Site, tmp_path: Path
) -> None:
    """Site `test`'s backup into site `site-b`: refused naming both, unless --other-site."""
    fresh = tmp_path / "fresh"
    cfg = moved(made.cfg, fresh, site_id="site-b")
    with pytest.raises(RestoreRefused, match=r"site 'test', the site file is of site 'site-b'"):
        restore(cfg, made.backup, io.StringIO(), force=False, config_to=None)
    assert not fresh.exists()
    out = io.StringIO()
    assert restore(cfg, made.backup, out, force=False, config_to=None, other_site=True)
    assert "backup of site test into site site-b (--other-site)" in out.getvalue()
    assert read_manifest(made.backup).site_id == "test"


def test_cli_other_site_flag(
    made: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cellfab restore` exits 1 on another site's backup; `--other-site` restores it."""
    other = made.site.with_name("site-b.toml")
    other.write_text(made.site.read_text().replace('id = "test"', 'id = "site-b"'))
    monkeypatch.setenv("CELLFAB_STATE_DIR", str(tmp_path / "fresh"))
    argv = ["restore", "-c", str(other), "--from", str(made.backup)]
    assert main(argv) == 1
    assert "'test'" in capsys.readouterr().err
    assert main([*argv, "--other-site"]) == 0


def test_an_old_backup_without_site_id_says_the_site_is_unchecked(
    made: Site, tmp_path: Path
) -> None:
    """A manifest made before site ids were recorded still restores, saying it is unchecked."""
    edit_manifest(made.backup, lambda data: data.pop("site_id", None))
    out = io.StringIO()
    cfg = moved(made.cfg, tmp_path / "fresh", site_id="site-b")
    assert restore(cfg, made.backup, out, force=False, config_to=None), out.getvalue()
    assert "does not record its site id" in out.getvalue()
    assert "cannot be checked" in out.getvalue()


# --- 5. a daemon starting mid-restore ----------------------------------------------------


def test_a_daemon_starting_mid_restore_fails_to_start(
    made: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a new state dir, restore holds the spool's and the trail's locks before it writes."""
    fresh = tmp_path / "fresh"
    cfg = moved(made.cfg, fresh)
    outcome: list[str] = []
    place = backup_mod._place

    def daemon_starts_now(*args: Any, **kwargs: Any) -> Any:
        if not outcome:
            before = sorted(p.name for p in fresh.iterdir())
            try:
                Daemon(cfg)  # the daemon's first act: the spool, and its lock
            except SpoolLocked:
                outcome.append("spool locked")
            try:
                AuditTrail.open(trail_path(fresh)).close()
            except TrailLocked:
                outcome.append("trail locked")
            assert sorted(p.name for p in fresh.iterdir()) == before  # it opened nothing
        return place(*args, **kwargs)

    monkeypatch.setattr(backup_mod, "_place", daemon_starts_now)
    out = io.StringIO()
    assert restore(cfg, made.backup, out, force=False, config_to=None), out.getvalue()
    assert outcome == ["spool locked", "trail locked"]
    assert sorted(p.name for p in fresh.iterdir()) == [
        "audit.jsonl",
        "audit.lock",
        "spool.sqlite.lock",
        "spool.sqlite3",
    ]
