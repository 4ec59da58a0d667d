import os

# Set before torch loads OpenMP: on a small shared machine, threads that busy-wait between
# operations slow tiny models 10-50x whenever another process holds a core; passive waiting
# changes nothing else (same thread count, same results).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def console_output():
    """The library's messages go where a command sends them (info to stdout, warnings to stderr), so
    tests read them with capsys as a user reads them."""
    from discomkd.utils.console import configure_output

    configure_output()


@pytest.fixture(scope="session")
def cli_main():
    """`main(argv) -> exit status` of discomkd-train, which main_DisCoM-KD.py runs."""
    from discomkd.commands.train import main

    return main


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests: the test machine's cores are shared, and oversubscribed
    threads make torch slow (use with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory):
    """One finished 2-epoch DisCoM-KD run on the toy folder, shared by the tests that read a run
    (predict, inspect, bad options, option fuzzing): (data folder, run folder). Label values 3, 7, 11:
    labels need not be 0..K-1; the paper's learning rate. Tests that write into the run folder work on a copy."""
    from toy import PREFIXES, TOY_RUN_LABELS, TOY_SETTINGS, write_toy_folder

    from discomkd.training.config import Config
    from discomkd.training.run import run

    folder = write_toy_folder(tmp_path_factory.mktemp("toy-run") / "data", PREFIXES, label_values=TOY_RUN_LABELS)
    output = os.path.join(folder, "run")
    run(Config(**{**TOY_SETTINGS, "learning_rate": Config.learning_rate}, verbose=0, output=output), folder, *PREFIXES)
    return folder, output


def pytest_terminal_summary(terminalreporter):
    """After the tests: how many documented command lines ran and how many were skipped, by reason."""
    import sys

    module = sys.modules.get("test_documented_lines")
    if module is not None:
        terminalreporter.write_line(module.summary())
