"""Every option of every command, fuzzed (tests/test_fuzz_data_folder.py fuzzes the data folder).

Each option of each command has three pools of values, on top of a cheap base argument list (one
epoch on 30 rows):
- VALID values: given alone, the command runs (exit 0) and writes what it writes; the first of each
  pool (the most telling) is run alone, the others only in combinations (a training costs 0.1-1 s);
- INVALID values (negative, zero, huge, nan, inf, empty, unknown, paths where nothing can be written):
  given alone, each is refused with exit 2, exactly one `error:` line naming the option or the value
  (argparse's: its usage and one `prog: error:` line), nothing on stdout and nothing written;
- DIVERGING values (a huge learning rate or loss weight): they train, and may end with exit 3, the
  "training failed" status, with one `error:` line naming the loss.
A value is a string, a tuple of strings (nargs, or an option that makes it apply, such as
`--executor ray`), None (a flag) or `known_bug(reason, value)`: its test is an expected failure (strict,
so that a fix is noticed). A derandomized hypothesis property then draws random combinations of
options and values from all three pools: whatever is drawn, no traceback and exit 0, 2 or 3.

tune.py needs Ray for its search, and a search costs half a minute: it runs here with Ray hidden (as
where Ray is not installed), so that a valid value must reach the one line saying Ray is missing (every
check before Ray passed) and an invalid one be refused before it. The few values only Ray's side can
check are `with_ray(value)`: run with Ray, skipped where it is not installed (they never start it).

Settings files (`--settings FILE`) get every settable field's pool values as JSON, values of the wrong
JSON type, unknown keys and files that are no settings object: a setting is checked as its option is.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import importlib.util
import io
import json
import os
import shutil
import sys

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis (a test-only dependency) is not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from toy import PREFIXES, TOY_SETTINGS, PlaceholderFolder, folder_snapshot, toy_options, write_toy_folder  # noqa: E402

import discomkd.comparison  # noqa: E402
from discomkd.commands import (  # noqa: E402
    benchmark,
    compare,
    inspect_run,
    make_example,
    make_splits,
    predict,
    train,
    tune,
)
from discomkd.training import settings_file  # noqa: E402
from discomkd.training.config import Config  # noqa: E402
from discomkd.training.run import run  # noqa: E402
from discomkd.utils.errors import BadInput, Interrupted  # noqa: E402

ROWS = 30
VALID_ALONE = 1  # valid values run alone per option, the first of its pool: a training costs 0.1-1 s
POSITIONAL = "(positional)"
MAIN = "main_DisCoM-KD.py"


@dataclasses.dataclass(frozen=True)
class KnownBug:
    """A pool value (the arguments after its option) that the command mishandles today, and how."""
    value: tuple
    reason: str


def known_bug(reason: str, item) -> KnownBug:
    """A pool value whose test fails today for `reason` (a bug to fix): marked xfail(strict=True)."""
    return KnownBug(item if isinstance(item, WithRay) else as_value(item), reason)


@dataclasses.dataclass(frozen=True)
class WithRay:
    """A pool value (the arguments after its option) checked only once Ray is imported: run with Ray,
    skipped where Ray is not installed. It is refused before a Ray cluster starts."""
    value: tuple


def with_ray(item) -> WithRay:
    return WithRay(as_value(item))


RAY_INSTALLED = importlib.util.find_spec("ray") is not None
RAY_MISSING = "Ray is not installed"  # the line of make_executor where `import ray` fails


def as_value(item) -> tuple:
    """A pool item as the arguments after its option: a string is one value, a tuple several, None none."""
    return () if item is None else (item,) if isinstance(item, str) else tuple(item)


@dataclasses.dataclass(frozen=True)
class Pool:
    """One option's values, each a tuple of arguments or a KnownBug."""
    valid: tuple = ()
    invalid: tuple = ()
    diverges: tuple = ()


def pool(valid=(), invalid=(), diverges=()) -> Pool:
    """One option's values (see the module's docstring); a single string stands for a one-value tuple."""
    def values(items):
        items = (items,) if isinstance(items, str) else items
        return tuple(item if isinstance(item, (KnownBug, WithRay)) else as_value(item) for item in items)
    return Pool(values(valid), values(invalid), values(diverges))


FLAG = pool(valid=[None])
# argparse refuses what int() or float() cannot read ("-inf" reads as an option); nan and inf reach the checks
NOT_INT = ("", "x", "1.5", "-inf")
NOT_FLOAT = ("nan", "inf", "1e309", "-inf", "x")
NON_NEGATIVE = pool(valid=["0", "0.5", "1e-3", "1"], invalid=["-1", *NOT_FLOAT], diverges="1e300")
POSITIVE = pool(valid=["1e-3", "0.5", "1"], invalid=["0", "-1", *NOT_FLOAT], diverges="1e300")
DEVICES = pool(valid=["cpu:0", "auto", "cpu"], invalid=["meta", "mps", "xla", "cuda:x", "cuda:-1", "", "CPU", "gpu"])
BATCH_SIZES = pool(valid=["2", "99999999999999999999", "8", "512"], invalid=["1", "0", "-1", *NOT_INT])
PRECISIONS = pool(valid=["bf16", "fp32", "auto"], invalid=["fp16", "bf17", ""])
COMPILE = pool(valid=["no", "auto"], invalid=["", "maybe", "1"])  # "yes" compiles for minutes on a CPU: test_fast_path
DATA_ON_DEVICE = pool(valid=["yes", "no", "auto"], invalid=["", "maybe"])
OUTPUT_FOLDERS = pool(valid=["{tmp}/a/b/c", "{tmp}/out"],
                      invalid=["{file}", "{file}/sub", "{full}", "/proc/fuzz-out", "/sys/fuzz-out",
                               "{tmp}/" + "n" * 300, ""])
OTHER_WEIGHTS_ZERO = ("--weight-cl", "0", "--weight-aux", "0", "--weight-mod", "0", "--weight-adv", "0")
CONFIG_OPTIONS = {
    "--epochs": pool(valid=["1", "2"], invalid=["0", "-1", *NOT_INT]),
    "--batch-size": BATCH_SIZES,
    "--eval-batch-size": pool(valid=["1", "99999999999999999999", "512"], invalid=["0", "-1", *NOT_INT]),
    "--save-every": pool(valid=["0", "1", "99999999999999999999"], invalid=["-1", *NOT_INT]),
    "--learning-rate": dataclasses.replace(POSITIVE, invalid=(*POSITIVE.invalid, ("1e300",)), diverges=()),
    "--weight-decay": dataclasses.replace(NON_NEGATIVE, invalid=(*NON_NEGATIVE.invalid, ("1e300",)), diverges=()),
    "--grl-coefficient": pool(valid=["-1", "0", "0.5"], invalid=NOT_FLOAT, diverges="1e300"),  # any finite number
    "--weight-cl": NON_NEGATIVE, "--weight-aux": NON_NEGATIVE, "--weight-mod": NON_NEGATIVE,
    "--weight-adv": NON_NEGATIVE,
    # one positive weight is enough; all five at 0 train nothing
    "--weight-perp": dataclasses.replace(NON_NEGATIVE, valid=(*NON_NEGATIVE.valid, ("0.5", *OTHER_WEIGHTS_ZERO)),
                                         invalid=(*NON_NEGATIVE.invalid, ("0", *OTHER_WEIGHTS_ZERO))),
    "--seed": pool(valid=["4294967295", "0"], invalid=["4294967296", "-1", "99999999999", "", "x", "1.5"]),
    "--device": DEVICES,
    "--encoder-first": pool(valid=["mlp", "auto", "resnet18", "lenet"], invalid=["resnet1d", "", "LeNet", "vgg"]),
    "--encoder-second": pool(valid=["mlp", "auto"], invalid=["lenet", "resnet18", "", "x"]),
    "--augment-first": pool(valid=["flip+rot90", "none", "flip", "auto"], invalid=["shift", "", "rot"]),
    "--augment-second": pool(valid=["none", "auto"], invalid=["flip", "shift", ""]),
    "--data-on-device": DATA_ON_DEVICE,
    "--compile": COMPILE,
    "--precision": PRECISIONS,
    "--overwrite": FLAG,
    "--test-every-epoch": FLAG,
    "--save-every-seconds": pool(valid=["0", "1e300", "0.5"], invalid=["-1", *NOT_FLOAT]),
    "--grl-schedule": pool(valid=["dann", "linear", "constant"], invalid=["", "x", "DANN"]),
    "--grl-warmup": pool(valid=["1e-3", "1", "0.5"], invalid=["0", "-1", "1.5", "1e300", *NOT_FLOAT]),
    "--discriminator": pool(valid=["mlp", "linear"], invalid=["", "x"]),
    "--discriminator-lr-scale": dataclasses.replace(POSITIVE, invalid=(*POSITIVE.invalid, ("1e300",)), diverges=()),
    "--align": pool(valid=["mmd", "coral", "none"], invalid=["", "x", "MMD"]),
    # the alignment term is one of DisCoM-KD's terms: with it, the five weights at 0 still train something
    "--align-weight": dataclasses.replace(NON_NEGATIVE, valid=(*NON_NEGATIVE.valid, (
        "1", "--align", "mmd", "--weight-perp", "0", *OTHER_WEIGHTS_ZERO))),
    "--align-per-class": pool(valid=[("--align", "coral")]),
    "--settings": pool(valid="{settings}", invalid=["{file}", "{tmp}/nowhere.json", "", "{data}",
                                                    "{unknown_setting}", "{mistyped_setting}"]),
}


# the distillation baselines' settings: options of compare.py and tune.py, not of main_DisCoM-KD.py
TEMPERATURE = pool(valid=["4", "0.5", "1e-3"], invalid=["0", "-1", *NOT_FLOAT])
BASELINE_OPTIONS = {"--kd-temperature": TEMPERATURE, "--kd-weight": NON_NEGATIVE, "--dkd-alpha": NON_NEGATIVE,
                    "--dkd-beta": NON_NEGATIVE, "--dkd-temperature": TEMPERATURE, "--dml-temperature": TEMPERATURE,
                    "--dml-weight": NON_NEGATIVE}


@dataclasses.dataclass
class Command:
    name: str
    main: object  # main(argv) -> exit status; None for main_DisCoM-KD.py (conftest's cli_main)
    options: dict  # option (or POSITIONAL) -> Pool
    argv: object  # argv(example, positional or None, arguments) -> the full argument list
    writes: tuple  # file-name patterns a successful run writes (or rewrites)
    examples: int  # random combinations drawn by the property
    not_alone: frozenset = frozenset()  # options whose values are drawn in combinations only
    hide_ray: bool = False  # run with Ray hidden (tune.py): a valid value reaches the line saying Ray is missing


class Example(PlaceholderFolder):
    """One example's temporary folder. A placeholder in a value ({data}, {run}, ...) names a file or
    folder made in it on first use; `request` gives the shared runs copied from."""

    def __init__(self, request):
        super().__init__("fuzz-options-")
        self.request = request

    def write_text(self, name: str, text: str) -> str:
        with open(self.here(name), "w") as handle:
            handle.write(text)
        return self.here(name)

    def make_data(self):  # a toy data folder with its split files
        return write_toy_folder(self.here("data"), PREFIXES, n=ROWS)

    def make_unsplit(self):  # one without split files (make_splits.py writes them)
        folder = write_toy_folder(self.here("unsplit"), PREFIXES, n=ROWS)
        for split in ("train", "valid", "test"):
            os.remove(os.path.join(folder, f"{split}_idx.npy"))
        return folder

    def make_file(self):  # a user's regular file
        return self.write_text("file.txt", "a user's file")

    def make_full(self):  # a folder holding a user's file
        os.makedirs(self.here("full"))
        self.write_text("full/notes.txt", "a user's file")
        return self.here("full")

    def make_settings(self):
        return self.write_text("settings.json", json.dumps({"learning_rate": 0.002, "weight_adv": 0.5}))

    def make_unknown_setting(self):
        return self.write_text("unknown.json", json.dumps({"lr": 0.002}))

    def make_mistyped_setting(self):
        return self.write_text("mistyped.json", json.dumps({"epochs": "two"}))

    def make_legacy_setting(self):  # a setting compare.py has no option for (its discomkd-legacy row)
        return self.write_text("legacy.json", json.dumps({"legacy_modality_targets": True}))

    def make_huge_setting(self):  # an integer beyond float's range, for a float setting: read as inf when typed
        return self.write_text("huge.json", '{"weight_decay": 1' + "0" * 400 + "}")

    def make_rundata(self):  # a copy of conftest's toy run's data folder, its run folder inside
        folder, _ = self.request.getfixturevalue("toy_run")
        return shutil.copytree(folder, self.here("rundata"))

    def make_run(self):
        folder, output = self.request.getfixturevalue("toy_run")
        return os.path.join(self.path("rundata"), os.path.relpath(output, folder))

    def make_checkpoint(self):
        return os.path.join(self.path("run"), "best_VEC.pt")

    def make_resumable(self):  # a copy of an interrupted run: --resume continues it
        return shutil.copytree(self.request.getfixturevalue("interrupted_run"), self.here("resumable"))

    def make_compared(self):  # a finished comparison of COMPARE_BASE's settings: --resume continues it
        output = self.here("compared")
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert compare.main([self.path("data"), *PREFIXES, *toy_options(epochs=1), "--methods", "logreg",
                                 "--output", output]) == 0
        return output

    def make_old_prediction(self):  # the prefix of an earlier prediction's files
        np.save(self.here("old_classes.npy"), np.zeros(3, dtype=np.int64))
        return self.here("old")

    def make_far_rows(self):  # row numbers past the end of the input
        np.save(self.here("far_rows.npy"), np.array([0, 10 ** 6]))
        return self.here("far_rows.npy")


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """A one-epoch toy run stopped at its first step, its state.pt saved: a run folder --resume continues."""
    folder = write_toy_folder(tmp_path_factory.mktemp("interrupted") / "data", PREFIXES, n=ROWS)
    output = os.path.join(folder, "run")
    config = Config(**{**TOY_SETTINGS, "epochs": 1}, verbose=0, output=output)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            pytest.raises(Interrupted):
        run(config, folder, *PREFIXES, should_stop=lambda: True)
    assert os.path.exists(os.path.join(output, "state.pt"))
    return output


# ----------------------------------------------------------------------------- main_DisCoM-KD.py
MAIN_BASE = toy_options(epochs=1)


def main_argv(example, positional, arguments):
    if "--resume" in arguments:  # --resume RUN_FOLDER is given alone
        return arguments
    return [*(positional if positional is not None else (example.path("data"), *PREFIXES)), *MAIN_BASE, *arguments]


MAIN_OPTIONS = {
    **CONFIG_OPTIONS,
    "--output": OUTPUT_FOLDERS,
    "--resume": pool(valid="{resumable}", invalid=["{run}", "{data}", "{tmp}/nowhere", "{file}", "", "{full}",
                                                   ("{resumable}", "--epochs", "2")]),  # finished; not runs; not alone
    "--legacy-modality-targets": FLAG, "--quiet": FLAG, "--no-fast": FLAG,
    "--verbose": pool(valid=[None], invalid=[("--quiet",)]),
    POSITIONAL: pool(valid=[("{data}", "IMG", "VEC")],
                     invalid=[("{data}", "IMG", "IMG"), ("{data}", "IMG", ""), ("{data}", "../IMG", "VEC"),
                              ("{tmp}/nowhere", "IMG", "VEC"), ("{file}", "IMG", "VEC"), ("", "IMG", "VEC"),
                              ("{data}", "IMG"), ("{data}", "img", "VEC"), ("{data}", "IMG ", "VEC"), ()]),
}

# ----------------------------------------------------------------------------- compare.py
COMPARE_BASE = [*toy_options(epochs=1), "--methods", "logreg", "--output", "{tmp}/cmp"]


def compare_argv(example, positional, arguments):
    base = [example.fill(a) for a in COMPARE_BASE]
    return [*(positional if positional is not None else (example.path("data"), *PREFIXES)), *base, *arguments]


# The Ray options apply with --executor ray only (the local executor ignores them): their invalid values
# are given with it, and are refused before Ray starts. Valid ones with Ray: tests/test_ray.py.
RAY = ("--executor", "ray")
COMPARE_OPTIONS = {
    **CONFIG_OPTIONS,
    **BASELINE_OPTIONS,
    "--epochs": pool(valid="1", invalid=["0", "-1", "x"]),  # compare trains every method: one epoch at most here
    "--runs": pool(valid=["2", "1"], invalid=["0", "-1", "1001", "1000000000", "", "x",
                                             ("2", "--seed", "4294967295")]),  # the last run's seed past 2**32-1
    "--methods": pool(valid=["svm,logreg", "mono", "discomkd", "logreg,logreg", "logreg"],
                      invalid=["", ",", "x", "LOGREG", "logreg,x"]),
    "--resplit": FLAG, "--verbose": FLAG, "--ablation": FLAG,
    # a new output folder holds no comparison to continue; a finished one of the same settings is continued
    "--resume": pool(valid=[("--output", "{compared}")], invalid=[None, ("--output", "{compared}", "--epochs", "2")]),
    "--executor": pool(valid="local", invalid=["", "x", "RAY"]),  # "ray" starts a cluster: tests/test_ray.py
    "--ray-address": pool(valid=["auto", "", "127.0.0.1:1"]),  # any text; reaching it: tests/test_ray.py
    "--gpus-per-task": pool(valid=["0.5", "0", "1"],
                            invalid=[("-1", *RAY), ("nan", *RAY), ("1.5", *RAY), "", "x",
                                     ("inf", *RAY),
                                     ("1e309", *RAY)]),
    "--cpus-per-task": pool(valid=["0.5", "1"], invalid=[("0", *RAY), ("-1", *RAY), ("nan", *RAY), "", "x"]),
    "--max-retries": pool(valid=["0", "3"], invalid=[("-1", *RAY), "", "x", "1.5"]),
    # the fair table: Ray Tune searches, then the comparison (tests/test_fair_table.py); its checks come before Ray
    "--tune": pool(valid=[with_ray(("1", "--methods", "mono"))],
                   invalid=["0", "-1", "", "x", "1.5", ("1", "--resplit"), ("1", "--runs", "1001")]),
    "--grace-epochs": pool(valid=[with_ray(("1", "--tune", "1", "--methods", "mono"))],
                           invalid=["2", ("0", "--tune", "1"), "", "x"]),  # only with --tune
    "--settings": dataclasses.replace(CONFIG_OPTIONS["--settings"], invalid=(
        *CONFIG_OPTIONS["--settings"].invalid, ("{legacy_setting}",))),
    "--settings-for": pool(valid=[("discomkd={settings}", "--methods", "discomkd")],
                           invalid=["x", "discomkd=", "={settings}", "bogus={settings}", "logreg={settings}",
                                    "discomkd={tmp}/nowhere.json", "discomkd={unknown_setting}",
                                    "discomkd={mistyped_setting}", "discomkd={legacy_setting}",
                                    "discomkd={settings}",  # the base compares logreg alone: no discomkd to set
                                    "discomkd={huge_setting}"]),
    "--output": OUTPUT_FOLDERS,
    POSITIONAL: pool(valid=[("{data}", "IMG", "VEC")],
                     invalid=[("{data}", "VEC", "VEC"), ("{tmp}/nowhere", "IMG", "VEC"), ("{file}", "IMG", "VEC"),
                              ("{data}", "IMG", "X"), ("{data}", "IMG")]),
}

# ----------------------------------------------------------------------------- predict.py
PREDICT_OPTIONS = {
    "--rows": pool(valid=["{data}/test_idx.npy", "{data}/labels.npy"],
                   invalid=["{data}", "{tmp}/nowhere.npy", "{file}", "", "{data}/VEC_data_normalized.npy",
                            "{far_rows}"]),
    "--labels": pool(valid="{data}/labels.npy",
                     invalid=["{data}/test_idx.npy", "{data}/VEC_data_normalized.npy", "{data}", "{file}", ""]),
    "--output": pool(valid=["{full}/", "{tmp}/p", "{data}", ("{old_prediction}", "--overwrite")],
                     invalid=["{tmp}/nowhere/p", "{file}/p", "/proc/p", "{old_prediction}", ""]),
    "--batch-size": pool(valid=["1", "99999999999999999999", "512"], invalid=["0", "-1", *NOT_INT]),
    "--device": DEVICES,
    "--overwrite": FLAG,
    POSITIONAL: pool(valid=[("{checkpoint}", "{data}/VEC_data_normalized.npy")],
                     invalid=[("{checkpoint}", "{data}/IMG_data_normalized.npy"),
                              ("{data}/labels.npy", "{data}/labels.npy"),
                              ("{run}/results.json", "{data}/VEC_data_normalized.npy"), ("{run}", "{data}"),
                              ("{checkpoint}", "{file}"), ("{checkpoint}", ""), ("", ""), ("{checkpoint}",)]),
}


def predict_argv(example, positional, arguments):
    inputs = positional if positional is not None else (example.path("checkpoint"),
                                                        example.fill("{data}/VEC_data_normalized.npy"))
    return [*inputs, "--device", "cpu", "--output", example.here("pred"), *arguments]


# ----------------------------------------------------------------------------- inspect_run.py
INSPECT_OPTIONS = {
    "--no-figures": FLAG, "--no-probes": FLAG,
    "--data": pool(valid="{rundata}",  # {data}: other rows than the run's
                   invalid=["{data}", "{tmp}/nowhere", "{file}", "{full}", ""]),
    "--device": DEVICES,
    "--output": pool(valid=["{tmp}/inspected", "{tmp}/a/b/c", "{full}"],  # probes.json beside what is there
                     invalid=["{file}", "{file}/sub", "/proc/fuzz-out", "/sys/fuzz-out", "{tmp}/" + "n" * 300, ""]),
    POSITIONAL: pool(valid=[("{run}",)],
                     invalid=[("{tmp}/nowhere",), ("{file}",), ("{data}",), ("",), ("{full}",), ()]),
}


def inspect_argv(example, positional, arguments):
    # figures (t-SNE) cost seconds: drawn only for --no-probes alone, where they are the point
    figures = [] if arguments == ["--no-probes"] else ["--no-figures"]
    run_folder = positional if positional is not None else (example.path("run"),)
    return [*run_folder, "--device", "cpu", *figures, *arguments]


# ----------------------------------------------------------------------------- make_splits.py, make_example.py
SPLITS_OPTIONS = {
    "--seed": pool(valid=["4294967295", "0"], invalid=["4294967296", "-1", "", "x"]),
    "--fractions": pool(valid=[("0.5", "0.25", "0.25"), ("0.7", "0.1", "0.2")],
                        invalid=[("nan", "0.5", "0.5"), ("inf", "0", "0"), ("1", "0", "0"), ("0.7", "0.1"),
                                 ("-0.2", "0.6", "0.6"), ("1e308", "1e308", "1e308"), ("0.3", "0.3", "0.3"),
                                 ("x", "y", "z")]),
    "--overwrite": FLAG,
    POSITIONAL: pool(valid=[("{unsplit}",), ("{data}", "--overwrite")],
                     invalid=[("{data}",), ("{tmp}/nowhere",), ("{file}",), ("{full}",), ("",), ()]),  # {data}: split
}


def splits_argv(example, positional, arguments):
    return [*(positional if positional is not None else (example.path("unsplit"),)), *arguments]


EXAMPLE_OPTIONS = {
    "--overwrite": FLAG,
    POSITIONAL: pool(valid=[("{tmp}/example",), (), ("{full}", "--overwrite")],  # (): ./example_digits
                     invalid=[("{full}",), ("{file}",), ("{file}/sub",), ("/proc/example",), ("{data}",), ("",)]),
}


def example_argv(example, positional, arguments):
    return [*(positional if positional is not None else (example.here("example"),)), *arguments]


# ----------------------------------------------------------------------------- benchmark.py
BENCHMARK_OPTIONS = {
    "--shape": pool(valid="tiny", invalid=["eurosat-x", "", "TINY"]),  # the real presets run for minutes on a CPU
    "--samples": pool(valid=["9", "64"], invalid=["8", "0", "-1", "10000000000000", "", "x"]),
    "--first-shape": pool(valid=[("6",), ("2", "16"), ("1", "12", "12")],
                          invalid=[("1", "3", "3"), ("0", "4", "4"), ("1", "2", "3", "4"), ("-1",), ("x",)]),
    "--second-shape": pool(valid=[("6",), ("1", "8", "8")], invalid=[("0",), ("2", "1"), ("x",)]),
    "--classes": pool(valid=["2", "3"], invalid=["1", "0", "-1", "100000", "x"]),
    "--epochs": pool(valid=["2", "1"], invalid=["0", "-1", "x"]),
    "--batch-size": BATCH_SIZES, "--device": DEVICES,
    "--precision": PRECISIONS, "--compile": COMPILE, "--data-on-device": DATA_ON_DEVICE,
    "--compare-plain": FLAG, "--end-to-end": FLAG,
    "--output": pool(valid=["{full}", "{tmp}/a/b/c"],  # a folder of timestamped files: one holding files too
                     invalid=["{file}", "{file}/sub", "/proc/fuzz-out", "/sys/fuzz-out", "{tmp}/" + "n" * 300, ""]),
    # --methods applies with --end-to-end only
    "--methods": pool(valid=[("mono,teacher", "--end-to-end"), ("discomkd", "--end-to-end")],
                      invalid=[("", "--end-to-end"), ("x", "--end-to-end"), ("kd", "--end-to-end"), (",", "--end-to-end"),
                               "mono", "bogus"]),  # refused without --end-to-end too: it would time nothing
}


def benchmark_argv(example, positional, arguments):
    # vectors (the MLP) by default: the tiny preset's images would train ResNet-18, seconds per example
    return ["--shape", "tiny", "--first-shape", "8", "--epochs", "1", "--device", "cpu",
            "--output", example.here("bench"), *arguments]


# ----------------------------------------------------------------------------- tune.py
TUNE_BASE = [*toy_options(epochs=1), "--trials", "1", "--runs", "1", "--output", "{tmp}/tune"]


def tune_argv(example, positional, arguments):
    base = [example.fill(a) for a in TUNE_BASE]
    return [*(positional if positional is not None else (example.path("data"), *PREFIXES)), *base, *arguments]


# checked against the data, which tuning reads once Ray is imported (discomkd.tuning), before anything is written
CHECKED_WITH_THE_DATA = ("--encoder-first", "--encoder-second", "--augment-first", "--augment-second")
TUNE_OPTIONS = {
    **{option: option_pool for option, option_pool in CONFIG_OPTIONS.items()
       if option not in ("--settings", "--test-every-epoch")},  # the search never scores the test split
    **BASELINE_OPTIONS,
    **{option: dataclasses.replace(CONFIG_OPTIONS[option], invalid=tuple(map(WithRay, CONFIG_OPTIONS[option].invalid)))
       for option in CHECKED_WITH_THE_DATA},
    "--seed": pool(valid=["4294967294", "0"],  # the final runs train on seeds SEED+1..SEED+RUNS
                   invalid=["4294967295", ("0", "--runs", "4294967296"), "-1", "", "x", "1.5"]),
    "--method": pool(valid=["discomkd", "mono", "kd", "discomkd-mmd"], invalid=["", "x", "logreg", "DisCoM-KD"]),
    "--trials": pool(valid=["1", "3"], invalid=["0", "-1", "", "x", "1.5"]),
    "--runs": pool(valid=["0", "1", "2"], invalid=["-1", "1001", "", "x"]),  # 0: the search alone
    "--grace-epochs": pool(valid=["1", "5"], invalid=["0", "-1", "", "x"]),  # 5 > --epochs: never stopped early
    "--teacher-settings": pool(valid=[("{settings}", "--method", "kd")],
                               invalid=["{settings}",  # the base tunes discomkd: no teacher to set
                                        ("{tmp}/nowhere.json", "--method", "dkd"), ("{file}", "--method", "kd"),
                                        ("{unknown_setting}", "--method", "kd"),
                                        ("{mistyped_setting}", "--method", "kd")]),
    "--executor": pool(valid=["ray", "local"], invalid=["", "x", "RAY"]),
    "--ray-address": pool(valid=["auto", "", "127.0.0.1:1"]),  # any text; reaching it: tests/test_ray.py
    "--gpus-per-task": pool(valid=["0", "0.5", "1"],
                            invalid=[with_ray("-1"), with_ray("nan"), with_ray("1.5"), with_ray("inf"), "", "x"]),
    "--cpus-per-task": pool(valid=["1", "0.5"], invalid=[with_ray("0"), with_ray("-1"), with_ray("nan"), "", "x"]),
    "--output": dataclasses.replace(OUTPUT_FOLDERS, invalid=tuple(
        value if value == ("",) else WithRay(value) for value in OUTPUT_FOLDERS.invalid)),  # '' refused before Ray
    POSITIONAL: pool(valid=[("{data}", "IMG", "VEC")],
                     invalid=[with_ray(("{data}", "VEC", "VEC")), with_ray(("{tmp}/nowhere", "IMG", "VEC")),
                              with_ray(("{file}", "IMG", "VEC")), with_ray(("{data}", "IMG", "X")), ("{data}", "IMG")]),
}

COMMANDS = {command.name: command for command in [
    Command(MAIN, None, MAIN_OPTIONS, main_argv, ("results.json",), 10),
    # the training options are main_DisCoM-KD.py's (one parser function, one Config check; with --methods
    # logreg nothing trains): their values run alone there, here in combinations (a few alone)
    Command("compare.py", compare.main, COMPARE_OPTIONS, compare_argv, ("comparison.json", "comparison.md"), 6,
            frozenset(CONFIG_OPTIONS) - {"--epochs", "--batch-size", "--seed", "--device", "--settings"}),
    Command("predict.py", predict.main, PREDICT_OPTIONS, predict_argv, ("*_classes.npy", "*_probabilities.npy"), 4),
    Command("inspect_run.py", inspect_run.main, INSPECT_OPTIONS, inspect_argv, ("*.json|*.png",), 2),
    Command("make_splits.py", make_splits.main, SPLITS_OPTIONS, splits_argv,
            ("train_idx.npy", "valid_idx.npy", "test_idx.npy"), 5),
    Command("make_example.py", make_example.main, EXAMPLE_OPTIONS, example_argv,
            ("labels.npy", "*_data_normalized.npy"), 4),
    Command("benchmark.py", benchmark.main, BENCHMARK_OPTIONS, benchmark_argv, ("benchmark_*.json",), 3),
    # its training options are checked by the same function as main_DisCoM-KD.py's, but before Ray: all run alone
    Command("tune.py", tune.main, TUNE_OPTIONS, tune_argv, (), 6, hide_ray=True),
]}


# ----------------------------------------------------------------------------- running one example
def run_command(main, argv, cwd):
    """(exit status, stdout, stderr) of `main(argv)` run in `cwd`; argparse's SystemExit becomes a status."""
    stdout, stderr = io.StringIO(), io.StringIO()
    previous = os.getcwd()
    os.chdir(cwd)  # relative default outputs (benchmark_results, example_digits) land in the example's folder
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                status = main(argv)
            except SystemExit as exit_request:
                status = exit_request.code
    finally:
        os.chdir(previous)
    return status, stdout.getvalue(), stderr.getvalue()


@dataclasses.dataclass
class Outcome:
    argv: list
    status: int
    out: str
    err: str
    written: list  # files created or changed

    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if not line.startswith("warning: ")]

    def describe(self) -> str:
        return f"exit {self.status} for {self.argv}\nstdout: {self.out[-800:]}\nstderr: {self.err[-1500:]}"


def run_example(request, cli_main, command: Command, option: str | None, value, example=None) -> Outcome:
    """Runs `command` on its cheap base with `option value` (or the positional arguments `value`; a
    `WithRay` value with Ray), in a fresh example folder that `request`'s finalizer removes."""
    example = example or Example(request)
    request.addfinalizer(lambda: shutil.rmtree(example.tmp, ignore_errors=True))
    ray_visible = isinstance(value, WithRay)
    filled = [example.fill(text) for text in (value.value if ray_visible else value)]
    if option == POSITIONAL:
        argv = command.argv(example, filled, [])
    else:
        argv = command.argv(example, None, [] if option is None else [option, *filled])
    return execute(cli_main, command, example, argv, ray_visible)


@contextlib.contextmanager
def ray_hidden():
    """`import ray` fails inside, as where Ray is not installed (the modules that import it are imported again)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "ray", None)
        for name in ("ray_executor", "tuning"):
            patch.delitem(sys.modules, f"discomkd.comparison.{name}", raising=False)
            patch.delattr(discomkd.comparison, name, raising=False)
        yield


def execute(cli_main, command: Command, example: Example, argv: list, ray_visible: bool = False) -> Outcome:
    before = folder_snapshot(example.tmp)
    with ray_hidden() if command.hide_ray and not ray_visible else contextlib.nullcontext():
        status, out, err = run_command(command.main or cli_main, argv, example.tmp)
    if ray_visible and "ray" in sys.modules and sys.modules["ray"] is not None and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()  # the local Ray a command started works in this example's folder, removed next
    after = folder_snapshot(example.tmp)
    return Outcome(argv, status, out, err, sorted(path for path in after if after[path] != before.get(path)))


def assert_refused(outcome: Outcome, named=()) -> None:
    """Exit 2, one `error:` line (argparse: its usage, then one `prog: error:` line) naming one of
    `named` (the option or its value), nothing on stdout, nothing written."""
    assert "Traceback" not in outcome.err, outcome.describe()
    assert outcome.status == 2, outcome.describe()
    lines = outcome.error_lines()
    if lines and lines[0].startswith("usage:"):
        errors = [line for line in lines if ": error: " in line]
        assert len(errors) == 1 and lines[-1] == errors[0], outcome.describe()
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), outcome.describe()
    if named:
        assert any(text in lines[-1] for text in named), f"{lines[-1]!r} names none of {named}"
    assert outcome.out == "", outcome.describe()
    assert outcome.written == [], f"files written for {outcome.argv}: {outcome.written}"


def assert_reaches_ray(outcome: Outcome) -> None:
    """Every check before Ray passed: the one line saying Ray is missing, exit 2, nothing written."""
    assert "Traceback" not in outcome.err and outcome.status == 2, outcome.describe()
    lines = outcome.error_lines()
    assert len(lines) == 1 and lines[0].startswith("error: " + RAY_MISSING), outcome.describe()
    assert outcome.out == "" and outcome.written == [], outcome.describe()


def assert_ran(outcome: Outcome, command: Command) -> None:
    """Exit 0, no error line, and the command's files written."""
    assert outcome.status == 0 and "Traceback" not in outcome.err, outcome.describe()
    assert not [line for line in outcome.error_lines() if "error" in line.lower()], outcome.describe()
    names = [os.path.basename(path) for path in outcome.written]
    for patterns in command.writes:
        assert any(fnmatch.fnmatch(name, pattern) for name in names for pattern in patterns.split("|")), \
            f"{patterns} not written by {outcome.argv}: {names}"
    if command.name == MAIN:
        results = [path for path in outcome.written if os.path.basename(path) == "results.json"]
        assert all(json.load(open(path))["status"] == "finished" for path in results), results


# ----------------------------------------------------------------------------- the tests
def cases(kind: str, alone: int | None = None) -> list:
    """pytest parameters (command, option, value) for the values of pool `kind` (`alone`: the first ones,
    and the known bugs)."""
    params = []
    for name, command in COMMANDS.items():
        for option, option_pool in command.options.items():
            if option in command.not_alone:
                continue
            items = getattr(option_pool, kind)
            bugs_further = () if alone is None else tuple(item for item in items[alone:] if isinstance(item, KnownBug))
            for item in items[:alone] + bugs_further:
                value = item.value if isinstance(item, KnownBug) else item
                arguments = value.value if isinstance(value, WithRay) else value
                shown = " ".join(repr(text) if text == "" else text[:40] for text in arguments)
                marks = [pytest.mark.xfail(strict=True, reason=item.reason)] if isinstance(item, KnownBug) else []
                if isinstance(value, WithRay):
                    marks.append(pytest.mark.skipif(not RAY_INSTALLED, reason="needs Ray (requirements-ray.txt)"))
                params.append(pytest.param(name, option, value, marks=marks, id=f"{name} {option} {shown}".rstrip()))
    return params


@pytest.mark.parametrize("name, option, value", cases("valid", VALID_ALONE))
def test_a_valid_value_runs(request, cli_main, name, option, value):
    command = COMMANDS[name]
    outcome = run_example(request, cli_main, command, option, value)
    assert_reaches_ray(outcome) if command.hide_ray else assert_ran(outcome, command)


@pytest.mark.parametrize("name, option, value", cases("invalid"))
def test_an_invalid_value_is_refused_in_one_line(request, cli_main, name, option, value):
    example = Example(request)
    arguments = value.value if isinstance(value, WithRay) else value
    named = [example.fill(text) if text else "''" for text in arguments] + [option]
    if "" in arguments:
        named.append("error: : ")  # an empty path, named as nothing
    if name == "benchmark.py" and option == "--classes" and arguments == ("100000",):
        named.append("per class")  # more classes than --samples allows: the line names --samples
    if option == POSITIONAL:
        named = []  # the positional arguments each have their own checks, in their own words
    assert_refused(run_example(request, cli_main, COMMANDS[name], option, value, example), named)


@pytest.mark.parametrize("name, option, value", cases("diverges"))
def test_a_diverging_value_trains_or_stops_on_its_loss(request, cli_main, name, option, value):
    command = COMMANDS[name]
    outcome = run_example(request, cli_main, command, option, value)
    if command.hide_ray:  # no training without Ray: the value passed every check before it
        assert_reaches_ray(outcome)
    elif outcome.status == 3:  # training failed; the run's outputs so far are kept by design
        lines = outcome.error_lines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "loss" in lines[0], outcome.describe()
    else:
        assert_ran(outcome, command)


def every_value(option_pool: Pool) -> list:
    """The values the property draws from: all three pools, known bugs aside."""
    return [value.value if isinstance(value, WithRay) else value
            for value in option_pool.valid + option_pool.invalid + option_pool.diverges
            if not isinstance(value, KnownBug)]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_random_combinations_never_crash(request, cli_main, name):
    """Up to three options drawn with values from all three pools (and sometimes positional arguments):
    exit 0, 2 (one error line, nothing written) or 3 (one error line); never a traceback."""
    command = COMMANDS[name]
    flags = sorted(set(command.options) - {POSITIONAL})

    @settings(max_examples=command.examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def combinations_never_crash(data):
        example = Example(request)
        try:
            chosen = data.draw(st.lists(st.sampled_from(flags), min_size=1, max_size=3, unique=True))
            arguments = [example.fill(text) for flag in chosen
                         for text in (flag, *data.draw(st.sampled_from(every_value(command.options[flag]))))]
            positional = None
            if POSITIONAL in command.options and data.draw(st.booleans()):
                positional = [example.fill(text) for text in data.draw(st.sampled_from(every_value(
                    command.options[POSITIONAL])))]
            outcome = execute(cli_main, command, example, command.argv(example, positional, arguments))
            assert "Traceback" not in outcome.err and outcome.status in (0, 2, 3), outcome.describe()
            if outcome.status == 2:
                assert_refused(outcome)
            elif outcome.status == 3:
                assert len(outcome.error_lines()) == 1, outcome.describe()
        finally:
            shutil.rmtree(example.tmp, ignore_errors=True)

    combinations_never_crash()


def long_options(parser) -> set[str]:
    """Every --option a parser accepts, --help aside."""
    return {flag for action in parser._actions for flag in action.option_strings
            if flag.startswith("--") and flag != "--help"}


def test_every_option_of_every_command_is_fuzzed(cli_main):
    """The pools are written by hand: an option added to a command must be added to its pools too, with a
    valid value, and an invalid one unless it takes none (a flag) or any text (--ray-address)."""
    parsers = {MAIN: train.build_parser(), "compare.py": compare.build_parser(),
               "predict.py": predict.build_parser(), "inspect_run.py": inspect_run.build_parser(),
               "make_splits.py": make_splits.build_parser(), "make_example.py": make_example.build_parser(),
               "benchmark.py": benchmark.build_parser(), "tune.py": tune.build_parser()}
    assert set(parsers) == set(COMMANDS)
    missing = {name: sorted(long_options(parser) - set(COMMANDS[name].options)) for name, parser in parsers.items()}
    assert not any(missing.values()), missing
    without_valid = [(name, option) for name, command in COMMANDS.items()
                     for option, option_pool in command.options.items() if not option_pool.valid]
    assert not without_valid, without_valid
    takes_a_value = {(name, flag) for name, parser in parsers.items() for action in parser._actions
                     if action.nargs != 0 for flag in action.option_strings if flag.startswith("--")}
    any_text = {("compare.py", "--ray-address"), ("tune.py", "--ray-address")}
    without_invalid = sorted((name, option) for name, option in takes_a_value - any_text
                             if not COMMANDS[name].options[option].invalid)
    assert not without_invalid, without_invalid


# ----------------------------------------------------------------------------- settings files
# A settings file's values are parsed as the options they stand for, before the command line's
# (settings_file.parse_with_settings): each settable field takes its option's pool values as JSON.
SETTABLE = settings_file.settable_fields()
SETTINGS_OPTIONS = {name: "--" + name.replace("_", "-") for name in SETTABLE}


SETTINGS_PARSERS = {MAIN: train.build_parser(), "compare.py": compare.build_parser()}  # the commands taking --settings
# values of another JSON type than each kind of field takes; null and nested objects included
WRONG_TYPES = {"int": ["1", 1.0, True, None, [1], {"value": 1}],
               "float": ["0.5", True, None, [0.5], {"value": 0.5}],
               "bool": ["true", 1, 0, None, [True], {"value": True}],
               "str": [1, 0.5, True, False, None, ["cpu"], {"value": "cpu"}]}


def field_kind(field: str) -> str:
    return str(SETTABLE[field].type).split(" ")[0]  # "str | None": a string


def json_value(field: str, value: tuple, example: Example):
    """An option's pool value as a settings file holds it: true for a flag; for a numeric field the number its
    text reads as (nan and inf too: Python's json reads NaN and Infinity), else the text, a wrong type there."""
    if value == ():
        return True
    (text,) = value
    for read in {"int": (int,), "float": (float,)}.get(field_kind(field), ()):
        try:
            return read(text)
        except ValueError:
            pass
    return example.fill(text)


def settings_cases(kind: str, alone: int | None = None) -> list:
    """pytest parameters (field, value) from main_DisCoM-KD.py's pools for the fields it has an option for,
    one-value items only: a settings file holds one value per field."""
    params = []
    for field, option in SETTINGS_OPTIONS.items():
        if option not in MAIN_OPTIONS:
            continue
        items = [item for item in getattr(MAIN_OPTIONS[option], kind) if not isinstance(item, KnownBug)]
        for value in [item for item in items if len(item) <= 1][:alone]:
            shown = "true" if value == () else repr(value[0][:40])
            params.append(pytest.param(field, value, id=f"{field} {shown}"))
    return params


def run_with_settings(request, cli_main, command_name: str, settings, example=None) -> tuple[Outcome, str]:
    """The command on its cheap base (less the options of the fields `settings` sets: the command line
    would win) with `--settings FILE`. `settings`: a dict written as JSON, the file's text, or None (the
    caller made FILE in `example`)."""
    example = example or Example(request)
    request.addfinalizer(lambda: shutil.rmtree(example.tmp, ignore_errors=True))
    path = example.here("settings.json")
    if settings is not None:
        example.write_text("settings.json", settings if isinstance(settings, str) else json.dumps(settings))
    dropped = {SETTINGS_OPTIONS[field] for field in settings if field in SETTABLE} if isinstance(settings, dict) else ()
    base = [example.fill(text) for text in {MAIN: MAIN_BASE, "compare.py": COMPARE_BASE}[command_name]]
    kept = [text for pair in zip(base[::2], base[1::2]) if pair[0] not in dropped for text in pair]
    argv = [example.path("data"), *PREFIXES, *kept, "--settings", path]
    return execute(cli_main, COMMANDS[command_name], example, argv), path


def test_every_settable_field_is_fuzzed_with_a_type_the_file_can_hold():
    assert set(SETTINGS_OPTIONS.values()) <= set(MAIN_OPTIONS) | set(COMPARE_OPTIONS)
    assert {field_kind(field) for field in SETTABLE} <= set(WRONG_TYPES)


def parsed(parse, argv) -> str | None:
    """repr of the namespace `parse(argv)` gives without its "settings" entry (NaN equals NaN there), or
    None when argparse refuses argv or the settings file is refused."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            namespace = vars(parse(argv))
    except (SystemExit, BadInput):
        return None
    namespace.pop("settings")
    return repr(sorted(namespace.items()))


@pytest.mark.parametrize("field, value", [*settings_cases("valid"), *settings_cases("diverges"),
                                          *settings_cases("invalid")])
def test_a_setting_parses_as_its_option_typed(request, cli_main, field, value):
    """One set of checks: a settings file's value gives the namespace its option typed gives, or is
    refused where the typed option is (argparse's types); the Config checks then see the same values."""
    parser = train.build_parser()
    example = Example(request)
    request.addfinalizer(lambda: shutil.rmtree(example.tmp, ignore_errors=True))
    path = example.write_text("settings.json", json.dumps({field: json_value(field, value, example)}))
    option = SETTINGS_OPTIONS[field]  # typed as --option=VALUE, so that "-inf" stays a value as in a file
    typed = parsed(parser.parse_args, ["D", "A", "B", *([f"{option}={example.fill(value[0])}"] if value else [option])])
    from_file = parsed(lambda argv: settings_file.parse_with_settings(parser, argv), ["D", "A", "B", "--settings", path])
    assert from_file == typed


@pytest.mark.parametrize("field, value", settings_cases("invalid"))
def test_an_invalid_setting_is_refused_as_its_option(request, cli_main, field, value):
    example = Example(request)
    setting = json_value(field, value, example)
    outcome, path = run_with_settings(request, cli_main, MAIN, {field: setting}, example=example)
    named = [SETTINGS_OPTIONS[field], path]
    if isinstance(setting, str):
        named.append(setting if setting else "''")  # a value is named itself; an empty one as ''
        named.append("error: : ")  # an empty path, named as nothing
    assert_refused(outcome, named)


@pytest.mark.parametrize("field", sorted(field for field, option in SETTINGS_OPTIONS.items() if option in MAIN_OPTIONS))
def test_a_setting_of_the_wrong_type_is_refused(request, cli_main, field):
    for setting in WRONG_TYPES[field_kind(field)]:
        outcome, path = run_with_settings(request, cli_main, MAIN, {field: setting})
        assert_refused(outcome, [f"{path}: {field} {json.dumps(setting)}"])


# files that hold no settings object, or keys no command line has
NOT_SETTINGS = {
    "unknown key": ('{"lr": 0.001}', "'lr' is not a setting"),
    "a field set by the comparison": ('{"method": "mono"}', "'method' is not a setting"),
    "a field with no option": ('{"score_test": false}', "'score_test' is not a setting"),
    "verbose": ('{"verbose": 0}', "'verbose' is not a setting"),
    "nested settings": ('{"settings": {"epochs": 1}}', "'settings' is not a setting"),
    "a key in capitals": ('{"Epochs": 1}', "'Epochs' is not a setting"),
    "a key with a space": ('{"epochs ": 1}', "'epochs ' is not a setting"),
    "a key with dashes": ('{"learning-rate": 0.001}', "'learning-rate' is not a setting"),
    "an empty key": ('{"": 1}', "'' is not a setting"),
    "a key twice": ('{"epochs": 1, "epochs": 0}', "'epochs' given more than once"),
    "a list": ('[{"epochs": 1}]', "a JSON object of settings is expected"),
    "null": ("null", "a JSON object of settings is expected"),
    "a number": ("1", "a JSON object of settings is expected"),
    "a string": ('"epochs"', "a JSON object of settings is expected"),
    "NaN": ("NaN", "a JSON object of settings is expected"),
    "empty": ("", "not JSON"),
    "two objects": ('{} {}', "not JSON"),
    "a trailing comma": ('{"epochs": 1,}', "not JSON"),
    "deeply nested": ('{"epochs": ' + "[" * 100_000 + "]" * 100_000 + "}", "not a settings file (JSON nested too deeply)"),
    "a UTF-8 byte-order mark": ('\ufeff{"epochs": 1}', "not JSON"),
}


@pytest.mark.parametrize("case", sorted(NOT_SETTINGS))
def test_a_file_that_is_no_settings_object_is_refused(request, cli_main, case):
    content, expected = NOT_SETTINGS[case]
    outcome, path = run_with_settings(request, cli_main, MAIN, content)
    assert_refused(outcome, [f"{path}: {expected}"])


def test_a_settings_file_that_is_not_text_is_refused(request, cli_main):
    example = Example(request)
    with open(example.here("settings.json"), "wb") as handle:
        handle.write(b'{"epochs": "\xff\xfe"}')
    outcome, path = run_with_settings(request, cli_main, MAIN, None, example=example)
    assert_refused(outcome, [f"{path}: not JSON"])


def test_an_empty_settings_object_changes_nothing(request, cli_main):
    outcome, _ = run_with_settings(request, cli_main, MAIN, "{}")
    assert_ran(outcome, COMMANDS[MAIN])


@pytest.mark.parametrize("name, field", [(name, field) for name, parser in SETTINGS_PARSERS.items()
                                         for field, option in SETTINGS_OPTIONS.items()
                                         if option not in long_options(parser)])
def test_a_setting_the_command_line_refuses_is_refused_from_a_file(request, cli_main, name, field):
    """Settings a command has no option for (compare.py: legacy_modality_targets, its discomkd-legacy row
    trains them; main_DisCoM-KD.py: the distillation baselines'): neither may a settings file set them
    (it could, as a default the parser never checked)."""
    setting = {"int": 1, "float": 1.0, "bool": True, "str": "x"}[field_kind(field)]
    outcome, path = run_with_settings(request, cli_main, name, {field: setting})
    assert_refused(outcome, [f"{path}: {field!r} is not an option of this command"])
