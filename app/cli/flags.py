"""The settings' command-line flags, made from `Settings` itself rather than kept by hand beside it:
one flag per field, named after it (`max_top_k` -> `--max-top-k`), its help the field's description,
its type and choices read from the field's annotation.

Naming: a list field takes one value per flag, repeated, under the singular name (`teacher_urls` ->
`--teacher-url A --teacher-url B`); a yes/no field is a switch that turns its default over
(`trust_remote_code` -> `--trust-remote-code`, `noise_floor` -> `--no-noise-floor`).
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from pathlib import Path
from typing import Any

from pydantic_settings import NoDecode
from vrollout.config import Settings

# The running server's own settings (binding, connections, login, streams, pages, retention): flags
# of `vrollout serve` only. The file commands (analyze, localize, pedagogical) take every other one.
SERVER_ONLY = frozenset(
    {
        "host",
        "port",
        "api_token",
        "allowed_hosts",
        "login_max_failures",
        "login_window_s",
        "session_max_age_s",
        "forwarded_allow_ips",
        "max_request_bytes",
        "max_queued_requests",
        "header_timeout_s",
        "body_timeout_s",
        "keep_alive_s",
        "max_connections",
        "max_header_bytes",
        "backlog",
        "max_streams",
        "max_streams_per_job",
        "stream_idle_timeout_s",
        "stream_keepalive_s",
        "stream_send_timeout_s",
        "retention_days",
    }
)
GIVEN = "settings_flags"  # the namespace attribute listing the fields a parser has flags for


def _strip_optional(annotation: Any) -> Any:
    """The annotation without `None`."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = kinds[0] if len(kinds) == 1 else typing.Union[tuple(kinds)]  # noqa: UP007
    return annotation


def _is_list(name: str) -> bool:
    return typing.get_origin(_strip_optional(Settings.model_fields[name].annotation)) is list


def flag_name(name: str) -> str:
    """The flag of the setting `name`."""
    field = Settings.model_fields[name]
    kebab = name.replace("_", "-")
    if field.annotation is bool:
        return f"--no-{kebab}" if field.default else f"--{kebab}"
    if _is_list(name):
        return "--" + kebab.removesuffix("s")
    return "--" + kebab


def json_object(text: str) -> dict[str, Any]:
    """A flag's JSON object, e.g. '{"enable_thinking": false}'."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("a JSON object is needed, e.g. '{\"enable_thinking\": false}'")
    return value


def _argument(name: str) -> dict[str, Any]:
    """add_argument's keywords for the setting `name`."""
    field = Settings.model_fields[name]
    help_text = f"{field.description} (VROLLOUT_{name.upper()})".replace("%", "%%")
    options: dict[str, Any] = {"dest": name, "help": help_text}
    annotation = _strip_optional(field.annotation)
    origin = typing.get_origin(annotation)
    # A `NoDecode` field reads its raw text itself (pydantic keeps `Annotated` extras as metadata).
    raw = any(m is NoDecode or isinstance(m, NoDecode) for m in field.metadata)
    if annotation is bool:
        return {**options, "action": "store_const", "const": not field.default}
    if origin is list:
        return {**options, "action": "append"}
    if raw:  # a device map or memory map: text that the setting's own validator reads
        return options
    if origin is typing.Literal:
        return {**options, "choices": typing.get_args(annotation)}
    if origin is dict:
        return {**options, "type": json_object}
    if annotation in (int, float, Path):
        return {**options, "type": annotation}
    return options


def add_settings_flags(parser: argparse.ArgumentParser, names: typing.Iterable[str]) -> tuple[str, ...]:
    """A flag for each setting in `names`, in a group of the parser's help, except where the command
    already has an option of that name (its own meaning wins there, e.g. `pedagogical
    --max-new-tokens` is the rollouts' length, not the limit; the variable still sets the limit).
    Returns the fields given flags, also kept on the parsed namespace for `overrides`."""
    group = parser.add_argument_group("settings", "each also an environment variable VROLLOUT_<NAME>")
    taken = set(parser._option_string_actions)
    added = []
    for name in names:
        if flag_name(name) not in taken:
            group.add_argument(flag_name(name), **_argument(name))
            added.append(name)
    parser.set_defaults(**{GIVEN: tuple(added)})
    return tuple(added)


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line (over the environment's)."""
    given = {name: getattr(args, name, None) for name in getattr(args, GIVEN, ())}
    return {name: value for name, value in given.items() if value is not None}


def flags_of(args: argparse.Namespace) -> dict[str, str]:
    """field name -> flag, for the settings this command's parser has flags for."""
    return {name: flag_name(name) for name in getattr(args, GIVEN, ())}
