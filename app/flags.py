"""Command-line flags derived from the Settings fields: `--grpc-addr` for grpc_addr (TALLY_GRPC_ADDR).

A new setting gets its flag, help (the field's description, its variable, its default) and
metavar by existing; the tests check that every setting but the secrets has one.
"""

from __future__ import annotations

import argparse
import json
from typing import Literal, get_args, get_origin

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from core.settings import Settings, flag


def is_secret(field: FieldInfo) -> bool:
    return SecretStr in (field.annotation, *get_args(field.annotation))


# Flags show up in `ps` for every user of the machine: secrets come from the environment only.
SECRETS = tuple(name for name, field in Settings.model_fields.items() if is_secret(field))


def _default_text(field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict | list):
        return json.dumps(to_jsonable_python(value))
    return str(value)


def _metavar(name: str, field: FieldInfo) -> str:
    kind = get_origin(field.annotation)
    if kind is Literal:
        return "|".join(get_args(field.annotation))
    if kind in (dict, list):
        return "JSON"
    if name.endswith("_addr"):
        return "HOST:PORT"
    if name.endswith("_seconds"):
        return "SECONDS"
    if name.endswith("_url"):
        return "URL"
    if name.endswith("_dir"):
        return "DIR"
    return "N" if field.annotation in (int, float) else "VALUE"


def setting_flags(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
    """A flag for each setting in `names` (every setting but the secrets when None), named after it,
    its help naming the TALLY_ variable and the default, so a new setting gets its flag by existing."""
    group = parser.add_argument_group("settings (each flag overrides its TALLY_ variable)")
    for name, field in Settings.model_fields.items():
        if name in SECRETS or (names is not None and name not in names):
            continue
        help_text = f"{field.description} (TALLY_{name.upper()}; default: {_default_text(field)})"
        help_text = help_text.replace("%", "%%")  # argparse formats help with %
        if field.annotation in (bool, bool | None):
            group.add_argument(
                flag(name), action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            group.add_argument(flag(name), metavar=_metavar(name, field), help=help_text)
