"""Site files: shipped files validate, every error is named with file and key, env wins."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.cli import main
from controller.config import SiteConfig
from controller.configload import ConfigError, load_site

REPO = Path(__file__).resolve().parents[2]

VALID_DEVICE = """
[[devices]]
id = "{id}"
device_class = "co2_incubator"
area = "room-1"
driver = "modbus_tcp"
host = "127.0.0.1"
port = 15021
profile = "co2-incubator"
"""


def write(tmp_path: Path, text: str, name: str = "site.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["demo.toml", "example.toml"])
def test_shipped_files_pass_check(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """config/demo.toml and config/example.toml are valid: `cellfab check` exits 0."""
    assert main(["check", "-c", str(REPO / "config" / name)]) == 0
    assert "ok" in capsys.readouterr().out


def test_four_kinds_of_error_are_all_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Unknown key, wrong type, duplicate id and missing key: exit 2, each named by key path."""
    text = '[site]\nid = "lab"\n' + VALID_DEVICE.format(id="inc-1")
    text += VALID_DEVICE.format(id="inc-1")  # duplicate id
    text += VALID_DEVICE.format(id="inc-3").replace("port = 15021", 'port = "five"')
    text += VALID_DEVICE.format(id="inc-4").replace('area = "room-1"\n', 'colour = "red"\n')
    path = write(tmp_path, text)
    assert main(["check", "-c", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert f"{path}: devices.1.id: duplicate device id 'inc-1' (devices.0.id)" in err
    assert any(line.startswith(f"{path}: devices.2.port: ") for line in err)
    assert f"{path}: devices.3.colour: unknown key" in err
    assert f"{path}: devices.3.area: required key is missing" in err
    assert len(err) == 4


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    """A broken TOML file is one clear error, not a traceback."""
    path = write(tmp_path, "[site\nid=1")
    with pytest.raises(ConfigError) as exc:
        load_site(path)
    assert exc.value.errors[0].startswith(f"{path}: toml: ")


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    """A site file that does not exist is reported, with its path."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_site(tmp_path / "nope.toml")


def test_environment_overrides_endpoints_and_secrets(tmp_path: Path) -> None:
    """CELLFAB_* variables set broker, TSDB, token and state dir without touching the file."""
    path = write(tmp_path, '[site]\nid = "lab"\n' + VALID_DEVICE.format(id="inc-1"))
    env = {
        "CELLFAB_MQTT_URL": "mqtts://user:secret@broker:8883",
        "CELLFAB_INFLUX_URL": "http://tsdb:8086",
        "CELLFAB_INFLUX_TOKEN": "t0k3n",
        "CELLFAB_INFLUX_ORG": "org1",
        "CELLFAB_INFLUX_BUCKET": "b1",
        "CELLFAB_STATE_DIR": str(tmp_path / "state"),
    }
    cfg = load_site(path, env)
    assert cfg.mqtt.url == "mqtts://user:secret@broker:8883"
    assert cfg.influx.url == "http://tsdb:8086"
    assert cfg.influx.token is not None and cfg.influx.token.get_secret_value() == "t0k3n"
    assert (cfg.influx.org, cfg.influx.bucket) == ("org1", "b1")
    assert cfg.state.dir == tmp_path / "state"
    assert "t0k3n" not in repr(cfg)


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    """An invalid CELLFAB_MQTT_URL is reported against the variable it came from."""
    path = write(tmp_path, '[site]\nid = "lab"\n' + VALID_DEVICE.format(id="inc-1"))
    with pytest.raises(ConfigError) as exc:
        load_site(path, {"CELLFAB_MQTT_URL": "http://broker"})
    assert exc.value.errors == [
        f"{path}: mqtt.url (from $CELLFAB_MQTT_URL): must start with mqtt:// or mqtts://"
    ]


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("mqtt://user:hunter2@broker:notaport", "port is not a number from 0 to 65535"),
        ("mqtt://user:hunter2@:1883", "names no host"),
        ("ftp://user:hunter2@broker", "must start with mqtt:// or mqtts://"),
    ],
)
def test_a_broker_url_without_host_or_port_fails_check_and_never_shows_its_password(
    tmp_path: Path, url: str, why: str
) -> None:
    """Caught by `cellfab check`, not when the sink starts; the password is never echoed."""
    text = f'[site]\nid = "lab"\n[mqtt]\nurl = "{url}"\n' + VALID_DEVICE.format(id="inc-1")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_site(path)
    (error,) = exc.value.errors
    assert error.startswith(f"{path}: mqtt.url: {why}")
    assert "hunter2" not in error
    assert "user:***@" in error  # the value is shown, its password is not
    with pytest.raises(ConfigError) as from_env:
        load_site(write(tmp_path, '[site]\nid = "lab"\n'), {"CELLFAB_MQTT_URL": url})
    assert "hunter2" not in "".join(from_env.value.errors)


def test_a_file_that_is_not_utf8_is_a_config_error_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_bytes(b'[site]\nid = "lab \xe9"\n')
    with pytest.raises(ConfigError) as exc:
        load_site(path)
    assert exc.value.errors == [f"{path}: not UTF-8 text (byte 17)"]
    profile = tmp_path / "latin1.toml"
    profile.write_bytes(b'name = "m\xe9"\n')
    dev = VALID_DEVICE.format(id="inc-1").replace('"co2-incubator"', f'"{profile}"')
    with pytest.raises(ConfigError) as exc:
        load_site(write(tmp_path, '[site]\nid = "lab"\n' + dev))
    assert exc.value.errors == [
        f"{tmp_path / 'site.toml'}: devices.0.profile: profile {profile}: not UTF-8 text (byte 9)"
    ]


def test_secret_from_file(tmp_path: Path) -> None:
    """A token can come from a file (systemd LoadCredential=); a missing file is an error."""
    (tmp_path / "token").write_text("abc\n")
    base = '[site]\nid = "lab"\n[influx]\nurl = "http://x:1"\ntoken_file = "{f}"\n'
    path = write(tmp_path, base.format(f="token") + VALID_DEVICE.format(id="inc-1"))
    cfg = load_site(path, {})
    assert cfg.influx.token is not None and cfg.influx.token.get_secret_value() == "abc"
    path = write(tmp_path, base.format(f="missing") + VALID_DEVICE.format(id="i"), "b.toml")
    with pytest.raises(ConfigError, match=r"influx\.token_file: cannot read missing"):
        load_site(path, {})
    assert load_site(path, {}, read_secrets=False).influx.token is None


def test_unknown_profile_lists_the_known_ones(tmp_path: Path) -> None:
    """A misspelt profile name says which profiles exist."""
    text = '[site]\nid = "lab"\n' + VALID_DEVICE.format(id="i").replace(
        '"co2-incubator"', '"co2-incubatr"'
    )
    with pytest.raises(ConfigError) as exc:
        load_site(write(tmp_path, text), {})
    assert "devices.0.profile: no built-in profile 'co2-incubatr'" in exc.value.errors[0]
    assert "co2-incubator" in exc.value.errors[0]


def test_profile_errors_name_the_profile_file(tmp_path: Path) -> None:
    """An overlapping register in a site's own profile names that file and the problem."""
    (tmp_path / "mine.toml").write_text(
        'name = "mine"\n'
        '[[registers]]\ntag = "a"\naddress = 0\ntype = "float32"\n'
        '[[registers]]\ntag = "b"\naddress = 1\ntype = "u16"\n'
    )
    text = '[site]\nid = "lab"\n' + VALID_DEVICE.format(id="i").replace(
        '"co2-incubator"', '"mine.toml"'
    )
    with pytest.raises(ConfigError) as exc:
        load_site(write(tmp_path, text), {})
    (line,) = exc.value.errors
    assert "devices.0.profile: " in line and "mine.toml" in line
    assert "registers of 'a' and 'b' overlap at address 1" in line


slugs = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True)


@given(site=slugs, ids=st.lists(slugs, min_size=1, max_size=5, unique=True))
def test_config_round_trips_through_its_own_dump(site: str, ids: list[str]) -> None:
    """Any valid config dumps to data that validates back to an equal config."""
    raw = {
        "site": {"id": site},
        "devices": [
            {
                "id": dev,
                "device_class": "co2_incubator",
                "area": "a",
                "driver": "modbus_tcp",
                "host": "h",
                "register_map": {
                    "name": "m",
                    "registers": [{"tag": "t", "address": 0, "type": "u16"}],
                },
            }
            for dev in ids
        ],
    }
    cfg = SiteConfig.model_validate(raw)
    assert SiteConfig.model_validate(cfg.model_dump()) == cfg


def test_unknown_or_missing_driver_is_named_with_the_known_ones(tmp_path: Path) -> None:
    """A misspelt or missing `driver` says so at `devices.N.driver`, listing the drivers."""
    text = '[site]\nid = "lab"\n' + VALID_DEVICE.format(id="a").replace(
        'driver = "modbus_tcp"', 'driver = "modbus_tpc"'
    )
    text += VALID_DEVICE.format(id="b").replace('driver = "modbus_tcp"\n', "")
    with pytest.raises(ConfigError) as exc:
        load_site(write(tmp_path, text), {})
    first, second = exc.value.errors
    assert "devices.0.driver: unknown driver 'modbus_tpc' (known: modbus_tcp," in first
    assert "devices.1.driver: required key is missing (one of: modbus_tcp," in second


RTU_DEVICE = """
[[devices]]
id = "{id}"
device_class = "room_dp"
area = "room-1"
driver = "modbus_rtu"
bus = "{bus}"
unit_id = {unit}
profile = "huba-699m"
"""


def test_rtu_slaves_need_an_existing_bus_and_a_free_unit_id(tmp_path: Path) -> None:
    """A slave on an unknown bus, or two slaves on one address, are refused by name."""
    head = '[site]\nid = "lab"\n[[buses]]\nid = "rs485-1"\nport = "/dev/ttyUSB0"\n'
    unknown = head + RTU_DEVICE.format(id="a", bus="rs485-9", unit=41)
    with pytest.raises(ConfigError, match="bus 'rs485-9' is not a \\[\\[buses\\]\\] id"):
        load_site(write(tmp_path, unknown), {})
    clash = head + RTU_DEVICE.format(id="a", bus="rs485-1", unit=41)
    clash += RTU_DEVICE.format(id="b", bus="rs485-1", unit=41)
    with pytest.raises(ConfigError, match="'a' and 'b' share unit id 41 on rs485-1"):
        load_site(write(tmp_path, clash, "clash.toml"), {})
    ok = head + RTU_DEVICE.format(id="a", bus="rs485-1", unit=41)
    ok += RTU_DEVICE.format(id="b", bus="rs485-1", unit=42)
    assert len(load_site(write(tmp_path, ok, "ok.toml"), {}).devices) == 2


def test_gmp_streams_may_be_devices_loops_or_rooms() -> None:
    """spool.gmp_devices takes any stream the site produces: a device (its loops are GMP
    with it, controller/spool_budget.is_gmp), a loop, or a room's `room.<id>`."""
    regmap = {"name": "m", "registers": [{"tag": "t", "address": 0, "type": "u16"}]}
    dev = {"driver": "modbus_tcp", "host": "127.0.0.1", "register_map": regmap}
    room = {"id": "fill-1", "grade": "A", "p05_tag": "br-1.t", "p50_tag": "br-1.t"}
    room |= {"alert_fraction": "0.5"}  # the room's alert level (required, any will do)

    def site(gmp: list[str]) -> SiteConfig:
        return SiteConfig.model_validate(
            {
                "site": {"id": "s"},
                "devices": [{"id": "br-1", "device_class": "bioreactor", "area": "a", **dev}],
                "cleanroom": {"rooms": [room]},
                "spool": {"gmp_devices": gmp},
            }
        )

    assert site(["br-1", "room.fill-1"]).spool.gmp_devices == ("br-1", "room.fill-1")
    with pytest.raises(ValueError, match=r"no device or stream 'room\.fill-2'"):
        site(["room.fill-2"])
