"""Training settings saved as JSON and given back to a command (`--settings FILE`), e.g. those tune.py chose.

A settings file is one JSON object of `Config` fields that have a command-line option, e.g.
{"learning_rate": 0.0003, "weight_adv": 0.5}. A command reads it as new defaults: options given on
the command line still win.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from discomkd.config import Config
from discomkd.errors import BadInput, DataError

OPTION = "--settings"


def settable_fields() -> dict[str, dataclasses.Field]:
    """The Config fields a settings file may hold: those with a command-line option."""
    return {f.name: f for f in dataclasses.fields(Config) if f.metadata.get("flag", True)}


def check_settings(settings, source: str) -> dict:
    """`settings` if it is a dict of settable fields with values of their types; else `DataError`."""
    if not isinstance(settings, dict):
        raise DataError(f"{source}: a JSON object of settings is expected")
    fields = settable_fields()
    for name, value in settings.items():
        if name not in fields:
            raise DataError(f"{source}: {name!r} is not a setting; expected some of {', '.join(sorted(fields))}")
        kind = str(fields[name].type)
        ok = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              "bool": lambda v: isinstance(v, bool)}.get(kind, lambda v: isinstance(v, str))
        if not ok(value):
            raise DataError(f"{source}: {name} {value!r}: a {kind.split(' ')[0]} is expected")
    return settings


def read_settings(path: str) -> dict:
    """The settings in the JSON file at `path` (`check_settings`); `DataError` otherwise."""
    try:
        with open(path) as handle:
            settings = json.load(handle)
    except OSError as error:
        raise DataError(f"{OPTION} {path}: {error.strerror or error}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{OPTION} {path}: not JSON ({error})") from None
    return check_settings(settings, f"{OPTION} {path}")


def add_settings_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(OPTION, metavar="FILE", default=None,
                        help="a JSON file of settings (e.g. tune.py's settings.json) used as the defaults; options "
                             "given on the command line win")


def parse_with_settings(parser: argparse.ArgumentParser, argv) -> argparse.Namespace:
    """`parser.parse_args(argv)` with the values of the --settings file, if one is given, as defaults."""
    given, _ = parser.parse_known_args(argv)
    if getattr(given, "settings", None) is not None:
        parser.set_defaults(**read_settings(given.settings))
    return parser.parse_args(argv)


def parse_or_report(parser: argparse.ArgumentParser, argv) -> dict | None:
    """`parse_with_settings` as a dict without its "settings" entry; or None, after printing the bad
    settings file's one `error:` line (the command then exits with EXIT_BAD_INPUT)."""
    try:
        args = vars(parse_with_settings(parser, argv))
    except BadInput as error:
        print(f"error: {error}", file=sys.stderr)
        return None
    args.pop("settings")
    return args


def command_line(settings: dict) -> list[str]:
    """The options that give these settings on a command line, e.g. ['--learning-rate', '0.0003']."""
    arguments = []
    for name, value in sorted(settings.items()):
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            arguments += [flag] if value else []
        else:
            arguments += [flag, str(value)]
    return arguments
