"""What the commands print: the library's log lines on stdout, warnings on stderr, progress bars on a terminal only."""
import importlib
import io
import logging
import sys

import pytest
from command_table import COMMAND_MODULES

from discomkd.commands import entry as command_entry
from discomkd.utils import console


def test_information_goes_to_stdout_and_warnings_to_stderr_in_one_line(capsys):
    console.configure_output()
    logging.getLogger("discomkd.some_module").info("epoch 1/2")
    logging.getLogger("discomkd.other").warning("the folder has 3 classes")
    captured = capsys.readouterr()
    assert captured.out == "epoch 1/2\n"
    assert captured.err == "warning: the folder has 3 classes\n"


def test_quiet_output_keeps_the_warnings_only(capsys):
    try:
        console.configure_output(quiet=True)
        logging.getLogger("discomkd.x").info("hidden")
        logging.getLogger("discomkd.x").warning("shown")
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err == "warning: shown\n"
    finally:
        console.configure_output()


def test_only_warnings_silences_one_module_within_the_block(capsys):
    with console.only_warnings("discomkd.training"):
        logging.getLogger("discomkd.training").info("an epoch line")
        logging.getLogger("discomkd.comparison").info("a comparison line")
    logging.getLogger("discomkd.training").info("after")
    assert capsys.readouterr().out == "a comparison line\nafter\n"


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_shown_on_a_terminal_and_removed_at_the_end(monkeypatch):
    pytest.importorskip("tqdm", reason="tqdm (optional) is not installed")
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = console.progress(4, "epoch 3/30")
    for _ in range(4):
        bar.update()
    bar.close()
    written = terminal.getvalue()
    assert written.startswith("\repoch 3/30") and "0/4" in written  # redrawn in place (tqdm limits the rate)
    assert written.endswith("\r") and "\n" not in written  # and erased at the end: the next line starts clean


def test_progress_shows_nothing_when_stderr_is_not_a_terminal(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    bar = console.progress(4, "checking files")
    bar.update()
    bar.close()
    assert stream.getvalue() == ""


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_every_command_makes_stdout_line_buffered(module, monkeypatch):
    """Every command goes through the one entry (`run_command`), which sets up the console before parsing."""
    calls = []
    monkeypatch.setattr(command_entry, "configure_output", lambda: calls.append(1))
    with pytest.raises(SystemExit):
        importlib.import_module(module).main(["--help"])
    assert calls == [1]


def test_line_buffered_stdout(monkeypatch):
    stream = io.TextIOWrapper(io.BytesIO())
    monkeypatch.setattr(sys, "stdout", stream)
    console.line_buffered_stdout()
    assert stream.line_buffering
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # a test's capture: nothing to reconfigure
    console.line_buffered_stdout()
