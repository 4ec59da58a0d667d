"""How every command runs, so that a line typed in a shell and a test's `main([...])` take one path.

A command module has `build_parser()` and `main(argv=None) -> exit status`, whose body is
`return run_command(build_parser(), argv, action)`. `run_command` reads the arguments (the process's own,
`sys.argv[1:]`, when `argv` is None), parses them with the parser's `--settings FILE` if it has that option
(the file's values read as options placed before the typed ones, through the same checks), sends the library's
messages to the console, and runs `action(CommandLine)` with SIGTERM stopping it as Ctrl-C does. Every command
then ends the same way: 0; `EXIT_BAD_INPUT` (2) after one `error:` line for input it refuses, nothing written;
`EXIT_TRAINING_FAILED` (3) when training cannot go on, the last good outputs kept; `EXIT_INTERRUPTED` (130)
after a signal, with what was saved and how to go on.
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Callable

from discomkd.training.settings_file import parse_with_settings
from discomkd.utils.console import configure_output
from discomkd.utils.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_TRAINING_FAILED,
    BadInput,
    Interrupted,
    TrainingError,
)


@dataclass(frozen=True)
class CommandLine:
    """What a command was given: its parser, the arguments as typed, and the options parsed from them (a
    --settings file's included; a dict from destination to value, which the action may pop from)."""

    parser: argparse.ArgumentParser
    argv: list[str]
    options: dict


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None, action: Callable[[CommandLine], int | None],
                bad_input: tuple[type[BaseException], ...] = (BadInput,)) -> int:
    """Parses `argv` (None: `sys.argv[1:]`) and runs `action`; returns the command's exit status (see the module's
    docstring). `action` returns None for success or an exit status of its own; `bad_input`: the errors that
    mean the user's input was refused (some commands add OSError: an unreadable input file)."""
    configure_output()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        options = vars(parse_with_settings(parser, argv))
    except BadInput as error:  # the --settings file itself: unreadable, not JSON, a setting this command lacks
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    options.pop("settings", None)
    with sigterm_as_interrupt():
        return command_status(lambda: action(CommandLine(parser, argv, options)), bad_input)


def command_status(action: Callable[[], int | None], bad_input: tuple[type[BaseException], ...] = (BadInput,)) -> int:
    """Runs `action()` and returns its exit status: its own, or 0; for a `bad_input` error, a `TrainingError`,
    an `Interrupted` or a KeyboardInterrupt, one line on stderr and EXIT_BAD_INPUT, EXIT_TRAINING_FAILED or
    EXIT_INTERRUPTED."""
    try:
        status = action()
    except bad_input as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_TRAINING_FAILED
    except Interrupted as error:
        print(str(error), file=sys.stderr)  # says "interrupted" and how to resume
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:  # outside a training, which saves its state and raises Interrupted instead
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0 if status is None else status


def _raise_keyboard_interrupt(number, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within the block, SIGTERM (what `kill`, `timeout` and batch schedulers send) raises KeyboardInterrupt,
    as Ctrl-C does, so that every command stops the same way whichever it receives. A training in progress
    takes both signals itself (`loop.StopRequest`) and saves its state first. Signals reach the main thread
    only: elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
