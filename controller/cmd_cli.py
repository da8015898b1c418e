"""`cellfab cmd`: sign a command with your key, send it over MQTT, print the daemon's reply.

The broker and topic prefix come from the site file (as the daemon uses them); the key
comes from `--key-file` or, without one, a prompt that does not echo, so it never has to
be on the command line or in the shell history. Exit 0 when the daemon accepted, 1 when
it refused or did not answer, 2 for a bad site file or key.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import socket
import ssl
import sys
from datetime import UTC, datetime
from pathlib import Path

from controller.access_config import KeyFileError, decode_key, read_key
from controller.signing import JsonScalar

EXIT_INVALID = 2


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `cmd` sub-command and its verbs."""
    cmd = sub.add_parser(
        "cmd",
        help="sign and send a command, print the reply",
        description="Sign a command with your key (HMAC-SHA256, docs/commands.md), send it "
        "to the daemon over the site's MQTT broker and print the reply. Exit 0 accepted, "
        "1 refused or no reply, 2 bad site file or key.",
    )
    cmd.add_argument("-c", "--config", type=Path, required=True, metavar="FILE")
    cmd.add_argument("--user", required=True, help="your [[users]] id")
    cmd.add_argument("--key-file", type=Path, help="your key (default: prompt for it)")
    cmd.add_argument("--reason", required=True, help="why, for the audit trail")
    cmd.add_argument("--timeout-s", type=float, default=10.0)
    verbs = cmd.add_subparsers(required=True, dest="verb", metavar="VERB")
    sp = verbs.add_parser("setpoint", help="move a loop's set point")
    sp.add_argument("loop", help="device.loop, e.g. br-1.temp")
    sp.add_argument("value", type=float)
    mode = verbs.add_parser("mode", help="switch a loop to auto, or to manual at an output")
    mode.add_argument("loop")
    mode.add_argument("mode", choices=["auto", "manual"])
    mode.add_argument("manual_output", type=float, nargs="?", help="required with manual")
    write = verbs.add_parser("write", help="write a commandable tag")
    write.add_argument("tag", help="device.tag, a [[command_tags]] entry")
    write.add_argument("value", type=float)
    cmd.set_defaults(handler=run)


def body_of(args: argparse.Namespace) -> dict[str, JsonScalar]:
    """The verb's own fields from the parsed arguments."""
    if args.verb == "setpoint":
        return {"loop": args.loop, "value": args.value}
    if args.verb == "write":
        return {"tag": args.tag, "value": args.value}
    if args.mode == "manual" and args.manual_output is None:
        raise ValueError("mode manual needs a manual_output")
    if args.mode == "auto" and args.manual_output is not None:
        raise ValueError("mode auto takes no manual_output")
    body: dict[str, JsonScalar] = {"loop": args.loop, "mode": args.mode}
    if args.manual_output is not None:
        body["manual_output"] = args.manual_output
    return body


def run(args: argparse.Namespace) -> int:
    """Handler of `cellfab cmd`."""
    import aiomqtt  # noqa: PLC0415 - the MQTT stack only for this sub-command

    from controller.cmd_client import (  # noqa: PLC0415
        new_nonce,
        reply_verified,
        send_to_broker,
        sign_request,
    )
    from controller.configload import ConfigError, load_site  # noqa: PLC0415
    from controller.sinks.mqtt import Endpoint  # noqa: PLC0415

    try:
        cfg = load_site(args.config)
        endpoint = Endpoint.from_config(cfg)
        body = body_of(args)
        key = _key(args.key_file)
    except ConfigError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return EXIT_INVALID
    except (ValueError, KeyFileError) as exc:
        print(f"cellfab cmd: {exc}", file=sys.stderr)
        return EXIT_INVALID
    try:
        request = sign_request(
            args.user,
            key,
            args.verb,
            body,
            site=cfg.site.id,
            reason=args.reason,
            now=datetime.now(UTC),
            nonce=new_nonce(),
            client=f"cellfab-cmd {socket.gethostname()}",
        )
    except ValueError as exc:  # NaN or inf: no JSON form, so nothing to sign
        print(f"cellfab cmd: {exc}", file=sys.stderr)
        return EXIT_INVALID
    tls = None
    if endpoint.tls:
        ca = cfg.mqtt.tls_ca_file
        tls = ssl.create_default_context(cafile=str(ca) if ca else None)
    try:
        reply = asyncio.run(
            send_to_broker(
                endpoint.host,
                endpoint.port,
                cfg.topic_prefix,
                request,
                username=endpoint.username,
                password=endpoint.password,
                tls_context=tls,
                timeout_s=args.timeout_s,
                key=key,
            )
        )
    except (TimeoutError, aiomqtt.MqttError, OSError) as exc:
        print(f"cellfab cmd: no reply from the daemon: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(reply, ensure_ascii=False))
    if not reply_verified(key, reply):  # believable only as a refusal (see send_command)
        print("cellfab cmd: refused before the daemon could check your signature", file=sys.stderr)
    return 0 if reply.get("ok") is True and reply_verified(key, reply) else 1


def _key(path: Path | None) -> bytes:
    if path is not None:
        return read_key(path)
    try:
        text = getpass.getpass("key (hex or base64): ")
    except EOFError:  # no terminal and nothing on stdin
        raise ValueError("no key: give --key-file, or type it at the prompt") from None
    return decode_key(text.strip())
