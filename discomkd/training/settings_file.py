"""Training settings saved as JSON and given back to a command (`--settings FILE`), e.g. those tune.py chose.

A settings file is one JSON object of `Config` fields that have a command-line option, e.g.
{"learning_rate": 0.0003, "weight_adv": 0.5}. A command reads it as options placed before those of its
command line, so that the settings go through the command's own checks (its parser, then the Config
checks) exactly as the same options typed would, and options given on the command line still win.
"""
from __future__ import annotations

import argparse
import dataclasses
import json

from discomkd.training.config import Config
from discomkd.utils.errors import DataError, OptionError

OPTION = "--settings"
NOT_SETTINGS = tuple(f.name for f in dataclasses.fields(Config) if not f.metadata.get("setting", True))
# What a settings file may hold for a field of each type, as an error message says it.
EXPECTED = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def settable_fields() -> dict[str, dataclasses.Field]:
    """The Config fields a settings file may hold: those with a command-line option that describe training, not
    where a run writes or what it may replace (output, overwrite)."""
    return {f.name: f for f in dataclasses.fields(Config) if f.metadata.get("flag", True)
            and f.metadata.get("setting", True)}


def _has_type(value, kind: str) -> bool:
    """Whether a JSON value is one of a field of type `kind` (bool is no number; an int is a float)."""
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, bool if kind == "bool" else str)


def check_settings(settings, source: str) -> dict:
    """`settings` if it is a dict of settable fields with values of their types; else `DataError`."""
    if not isinstance(settings, dict):
        raise DataError(f"{source}: a JSON object of settings is expected")
    fields = settable_fields()
    for name, value in settings.items():
        if name in NOT_SETTINGS:
            raise DataError(f"{source}: {name!r}: a settings file describes training; where a run writes and what "
                            f"it may replace are the command line's (--{name})")
        if name not in fields:
            raise DataError(f"{source}: {name!r} is not a setting; expected some of {', '.join(sorted(fields))}")
        kind = str(fields[name].type).split(" ")[0]  # "str | None": a string (null is no option's value)
        if not _has_type(value, kind):
            raise DataError(f"{source}: {name} {json.dumps(value)[:80]}: {EXPECTED[kind]} is expected")
    return settings


class _RepeatedKey(ValueError):
    pass


def _refuse_repeated_keys(pairs: list) -> dict:
    """json's object_pairs_hook: a key given twice is refused, rather than the last one silently kept."""
    names = [name for name, _ in pairs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise _RepeatedKey(f"{', '.join(map(repr, repeated))} given more than once")
    return dict(pairs)


def read_settings(path: str, option: str = OPTION) -> dict:
    """The settings in the JSON file at `path` (`check_settings`); `DataError` otherwise, its line
    naming the file as `option PATH`."""
    source = f"{option} {path}"
    try:
        with open(path) as handle:
            settings = json.load(handle, object_pairs_hook=_refuse_repeated_keys)
    except OSError as error:
        raise DataError(f"{source}: {error.strerror or error}") from None
    except _RepeatedKey as error:
        raise DataError(f"{source}: {error}") from None
    except RecursionError:
        raise DataError(f"{source}: not a settings file (JSON nested too deeply)") from None
    except (ValueError, UnicodeDecodeError) as error:  # json.JSONDecodeError is a ValueError
        raise DataError(f"{source}: not JSON ({error})") from None
    return check_settings(settings, source)


def add_settings_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(OPTION, metavar="FILE", default=None,
                        help="a JSON file of settings (e.g. tune.py's settings.json) read as options before those "
                             "of the command line, which win")


def settings_options(settings: dict, parsed: argparse.Namespace, source: str) -> list[str]:
    """`settings` as the options they stand for (`command_line(..., joined=True)`), for the command whose
    parser gave `parsed` (its namespace holds every destination of the parser); `OptionError` for a
    setting the command has no option for, as its command line refuses that option. Parsed with the
    command line (before it: the command line wins; after it: the settings win), a settings file goes
    through the command's own checks, its parser's types included."""
    for name in settings:
        if name not in vars(parsed):
            raise OptionError(f"{source}: {name!r} is not an option of this command (its command line refuses "
                              f"--{name.replace('_', '-')} too)")
    return command_line(settings, joined=True)


def parse_with_settings(parser: argparse.ArgumentParser, argv) -> argparse.Namespace:
    """`parser.parse_args(argv)`, the --settings file's values, if one is given, parsed as options
    placed before `argv` (`settings_options`): one set of checks for both."""
    given, _ = parser.parse_known_args(argv)
    path = getattr(given, "settings", None)
    if path is None:
        return parser.parse_args(argv)
    return parser.parse_args([*settings_options(read_settings(path), given, f"{OPTION} {path}"), *argv])


def parse_settings_file(parser: argparse.ArgumentParser, argv, path: str, option: str, label: str) -> dict:
    """The settings of the file at `path` ({name: value}, the names it holds), parsed by `parser` after
    `argv` (so they win over the command line) through the command's own checks; errors name `label`
    (e.g. "--settings-for kd=FILE"), unreadable files `option PATH`."""
    given, _ = parser.parse_known_args(argv)
    values = read_settings(path, option=option)
    parsed = vars(parse_with_settings(parser, [*argv, *settings_options(values, given, label)]))
    return {name: parsed[name] for name in values}


def command_line(settings: dict, joined: bool = False) -> list[str]:
    """The options that give these settings on a command line, e.g. ['--learning-rate', '0.0003'], or
    with `joined` ['--learning-rate=0.0003'], where a value starting with '-' stays a value. A false
    flag gives nothing (its default); a float's str() reads back exactly."""
    arguments = []
    for name, value in sorted(settings.items()):
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            arguments += [flag] if value else []
        else:
            arguments += [f"{flag}={value}"] if joined else [flag, str(value)]
    return arguments
