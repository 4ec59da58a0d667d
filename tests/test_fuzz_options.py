"""Property-based fuzzing of every command's OPTIONS (tests/test_fuzz.py fuzzes the data folder).

Each command's options map to pools of valid and invalid values (negative, zero, huge, nan, inf,
empty, unknown, paths where nothing can be written). An argument list draws a focus option (each
option is the focus of some examples, so every one is exercised) plus a few others, on top of a
cheap base (1 epoch, tiny data). Whatever is drawn, the command must end with exit status 0, or 2
with exactly one `error:` line on stderr (argparse's usage line aside), nothing on stdout and
nothing written; never a traceback. A run whose loss diverges (a huge learning rate or loss weight)
may end with 3, the project's "training failed" status, with its one `error:` line.
"""
import collections
import contextlib
import io
import os
import shutil
import tempfile

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis (a test-only dependency) is not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from toy import PREFIXES, folder_snapshot, write_toy_folder  # noqa: E402

import benchmark  # noqa: E402
import compare  # noqa: E402
import inspect_run  # noqa: E402
import make_example  # noqa: E402
import make_splits  # noqa: E402
import predict  # noqa: E402
from discomkd.data import array_path  # noqa: E402

ROWS = 30
EXAMPLES_PER_OPTION = 2  # derandomized: the same examples every run
MAX_EXTRA_OPTIONS = 2
POSITIONAL = "(positional)"
# Placeholders in the pools, filled per example: a fresh temporary folder and what it holds.
# {tmp} the example's folder; {data} a toy data folder in it; {file} a regular file; {full} a folder
# holding a file; {run} a finished run (copied into {tmp}); {checkpoint} its best_VEC.pt.


def values(*items):
    """An option's pool: each item is one value (a string), a tuple of values (nargs) or None (a flag)."""
    return [() if item is None else (item,) if isinstance(item, str) else tuple(item) for item in items]


NUMBERS = ("-1", "0", "nan", "inf", "-inf", "", "x", "1e309", "99999999999999999999")
FLOATS = values("0", "1e-3", "0.5", "1", "-1", "nan", "inf", "-inf", "1e309", "", "x", "1e300")
SMALL_INTS = values("1", "2", *NUMBERS, "1.5")
BIG_INTS = values("1", "2", "8", "512", "100000000", *NUMBERS)
DEVICES = values("cpu", "auto", "cpu:0", "meta", "mps", "xla", "cuda:x", "cuda:-1", "", "CPU", "gpu")
OUTPUT_FOLDERS = values("{tmp}/out", "{tmp}/a/b/c", "", "{file}", "{file}/sub", "{full}", "/proc/fuzz-out",
                        "/sys/fuzz-out", "{tmp}/" + "n" * 300)
CONFIG_OPTIONS = {
    "--epochs": values("1", "2", "0", "-1", "nan", "", "x", "1.5"),
    "--batch-size": BIG_INTS, "--eval-batch-size": BIG_INTS, "--save-every": BIG_INTS,
    "--learning-rate": FLOATS, "--weight-decay": FLOATS, "--grl-coefficient": FLOATS,
    "--weight-cl": FLOATS, "--weight-aux": FLOATS, "--weight-mod": FLOATS, "--weight-adv": FLOATS,
    "--weight-perp": FLOATS,
    "--seed": values("0", "4294967295", "4294967296", "-1", "99999999999", "", "x", "1.5"),
    "--device": DEVICES,
    "--encoder-first": values("auto", "lenet", "resnet18", "mlp", "resnet1d", "", "LeNet", "vgg"),
    "--encoder-second": values("auto", "mlp", "lenet", "", "x"),
    "--augment-first": values("auto", "none", "flip", "flip+rot90", "shift", "", "rot"),
    "--augment-second": values("auto", "none", "flip", "shift", ""),
    "--data-on-device": values("auto", "yes", "no", "", "maybe"),
    "--compile": values("auto", "no", "", "maybe", "1"),  # "yes" on a CPU compiles for minutes: see test_fast_path
    "--precision": values("auto", "fp32", "bf16", "fp16", "bf17", ""),
    "--overwrite": values(None),
    "--test-every-epoch": values(None), "--save-every-seconds": FLOATS,
    "--grl-schedule": values("constant", "dann", "linear", "", "x", "DANN"), "--grl-warmup": FLOATS,
    "--discriminator": values("linear", "mlp", "", "x"), "--discriminator-lr-scale": FLOATS,
    "--settings": values("{file}", "{tmp}/nowhere.json", "", "{data}"),
}


class Example:
    """One example's folder with the files the placeholders name."""

    def __init__(self, needs_run=None):
        self.tmp = tempfile.mkdtemp(prefix="fuzz-options-")
        self.data = write_toy_folder(os.path.join(self.tmp, "data"), PREFIXES, n=ROWS)
        self.file = os.path.join(self.tmp, "file.txt")
        with open(self.file, "w") as handle:
            handle.write("a user's file")
        self.full = os.path.join(self.tmp, "full")
        os.makedirs(self.full)
        with open(os.path.join(self.full, "notes.txt"), "w") as handle:
            handle.write("a user's file")
        self.run = None
        if needs_run is not None:
            self.run = os.path.join(self.tmp, "run")
            shutil.copytree(needs_run, self.run)

    def fill(self, text: str) -> str:
        return (text.replace("{tmp}", self.tmp).replace("{data}", self.data).replace("{file}", self.file)
                .replace("{full}", self.full).replace("{run}", self.run or "")
                .replace("{checkpoint}", os.path.join(self.run or "", "best_VEC.pt")))


def draw_arguments(draw, options: dict, focus: str) -> list[str]:
    """The focus option (or positional arguments) and up to MAX_EXTRA_OPTIONS others, each with a pool value."""
    others = sorted(set(options) - {focus, POSITIONAL})
    chosen = [focus] + (draw(st.lists(st.sampled_from(others), max_size=MAX_EXTRA_OPTIONS, unique=True))
                        if others else [])
    arguments = []
    for flag in chosen:
        if flag != POSITIONAL:
            arguments += [flag, *draw(st.sampled_from(options[flag]))]
    return arguments


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


def check_outcome(status, out, err, before, after, argv):
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if not line.startswith("warning: ")]
    if status == 0:
        return "ok"
    assert status in (2, 3), f"exit {status} for {argv}: {err}"
    if lines and lines[0].startswith("usage:"):  # argparse: usage, then one 'prog: error: ...' line
        assert sum(": error: " in line for line in lines) == 1 and out == "", (argv, err)
        assert after == before, f"files written for {argv}"
        return "argparse: " + lines[-1].split(": error: ")[1].split(":")[0][:30]
    assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
    if status == 3:  # training failed; the run's outputs so far are kept by design
        assert "loss" in lines[0], (argv, lines[0])
        return "diverged"
    assert out == "" and after == before, f"files written for {argv}: {sorted(set(after) ^ set(before))}"
    return "refused"


def fuzz(main, options: dict, focus: str, make_argv, needs_run=None, examples=EXAMPLES_PER_OPTION, check_ok=None):
    """Runs `examples` derandomized examples with `focus` drawn; returns the outcomes seen."""
    seen = collections.Counter()

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def options_never_crash(data):
        example = Example(needs_run)
        try:
            arguments = [example.fill(a) for a in draw_arguments(data.draw, options, focus)]
            positional = [example.fill(a) for a in data.draw(st.sampled_from(options[POSITIONAL]))] \
                if focus == POSITIONAL else None
            argv = make_argv(example, positional, arguments)
            before = folder_snapshot(example.tmp)
            status, out, err = run_command(main, argv, example.tmp)
            outcome = check_outcome(status, out, err, before, folder_snapshot(example.tmp), argv)
            if outcome == "ok" and check_ok is not None:
                check_ok(example, argv, out)
            seen[outcome] += 1
        finally:
            shutil.rmtree(example.tmp, ignore_errors=True)

    options_never_crash()
    return seen


def fuzz_report(command, options, focus, seen):
    print(f"\nfuzz {command} {focus}: {dict(seen)} ({len(options)} options and positionals in the pools)")
    assert sum(seen.values()) > 0


# ----------------------------------------------------------------------------- main_DisCoM-KD.py
MAIN_BASE = ["--epochs", "1", "--batch-size", "8", "--encoder-first", "lenet", "--device", "cpu", "--quiet"]
MAIN_OPTIONS = {
    **CONFIG_OPTIONS,
    "--output": OUTPUT_FOLDERS,
    "--resume": values("{data}", "{tmp}/nowhere", "{file}", "", "{full}"),
    "--legacy-modality-targets": values(None), "--quiet": values(None), "--verbose": values(None),
    "--no-fast": values(None),
    POSITIONAL: values(("{data}", "IMG", "VEC"), ("{data}", "IMG", "IMG"), ("{data}", "IMG", ""),
                       ("{data}", "../IMG", "VEC"), ("{tmp}/nowhere", "IMG", "VEC"), ("{file}", "IMG", "VEC"),
                       ("", "IMG", "VEC"), ("{data}", "IMG"), ("{data}", "img", "VEC"), ("{data}", "IMG ", "VEC")),
}


def main_argv(example, positional, arguments):
    return [*(positional if positional is not None else (example.data, *PREFIXES)), *MAIN_BASE, *arguments]


@pytest.mark.parametrize("focus", sorted(MAIN_OPTIONS))
def test_main_options(cli_main, focus):
    fuzz_report("main_DisCoM-KD.py", MAIN_OPTIONS, focus, fuzz(cli_main, MAIN_OPTIONS, focus, main_argv))


# ----------------------------------------------------------------------------- compare.py
COMPARE_BASE = ["--epochs", "1", "--batch-size", "8", "--encoder-first", "lenet", "--device", "cpu",
                "--methods", "logreg", "--output", "{tmp}/cmp"]
COMPARE_OPTIONS = {
    **{k: v for k, v in CONFIG_OPTIONS.items() if k != "--epochs"},
    "--epochs": values("1", "0", "-1", "x"),  # compare trains every method: one epoch at most here
    "--runs": values("1", "2", "0", "-1", "1001", "1000000000", "", "x"),
    "--methods": values("logreg", "mono", "svm,logreg", "discomkd", "", ",", "x", "logreg,logreg", "LOGREG"),
    "--resplit": values(None), "--verbose": values(None), "--ablation": values(None),
    # "ray" would start a Ray cluster where Ray is installed: tests/test_grid.py and test_ray.py cover it
    "--executor": values("local", "", "x", "RAY"), "--ray-address": values("auto", "", "127.0.0.1:1"),
    "--gpus-per-task": FLOATS, "--cpus-per-task": FLOATS, "--max-retries": BIG_INTS,
    "--output": OUTPUT_FOLDERS,
    POSITIONAL: values(("{data}", "IMG", "VEC"), ("{data}", "VEC", "VEC"), ("{tmp}/nowhere", "IMG", "VEC"),
                       ("{file}", "IMG", "VEC"), ("{data}", "IMG", "X")),
}
COMPARE_OPTIONS["--seed"] = values("0", "4294967295", "-1", "x")


def compare_argv(example, positional, arguments):
    base = [example.fill(a) for a in COMPARE_BASE]
    return [*(positional if positional is not None else (example.data, *PREFIXES)), *base, *arguments]


@pytest.mark.parametrize("focus", sorted(COMPARE_OPTIONS))
def test_compare_options(focus):
    fuzz_report("compare.py", COMPARE_OPTIONS, focus, fuzz(compare.main, COMPARE_OPTIONS, focus, compare_argv))


# ----------------------------------------------------------------------------- predict.py and inspect_run.py
@pytest.fixture
def finished_run(toy_run):
    """The run folder of conftest's shared finished run (each example works on a copy)."""
    return toy_run[1]


PREDICT_OPTIONS = {
    "--rows": values("{data}/test_idx.npy", "{data}/labels.npy", "{data}", "{tmp}/nowhere.npy", "{file}", "",
                     "{data}/VEC_data_normalized.npy"),
    "--labels": values("{data}/labels.npy", "{data}/test_idx.npy", "{data}/VEC_data_normalized.npy", "{data}",
                       "{file}", ""),
    "--output": values("{tmp}/p", "{tmp}/nowhere/p", "{file}/p", "/proc/p", "", "{data}", "{full}/"),
    "--batch-size": BIG_INTS, "--device": DEVICES, "--overwrite": values(None),
    POSITIONAL: values(("{checkpoint}", "{data}/VEC_data_normalized.npy"),
                       ("{checkpoint}", "{data}/IMG_data_normalized.npy"), ("{data}/labels.npy", "{data}/labels.npy"),
                       ("{run}/results.json", "{data}/VEC_data_normalized.npy"), ("{run}", "{data}"),
                       ("{checkpoint}", "{file}"), ("{checkpoint}", ""), ("", "")),
}


def predict_argv(example, positional, arguments):
    inputs = positional if positional is not None else (example.fill("{checkpoint}"), array_path(example.data, "VEC"))
    return [*inputs, "--device", "cpu", "--output", os.path.join(example.tmp, "pred"), *arguments]


@pytest.mark.parametrize("focus", sorted(PREDICT_OPTIONS))
def test_predict_options(finished_run, focus):
    fuzz_report("predict.py", PREDICT_OPTIONS, focus,
                fuzz(predict.main, PREDICT_OPTIONS, focus, predict_argv, needs_run=finished_run))


INSPECT_OPTIONS = {
    "--no-figures": values(None), "--no-probes": values(None),
    "--data": values("{data}", "{tmp}/nowhere", "{file}", "", "{full}"),
    "--device": DEVICES,
    POSITIONAL: values(("{run}",), ("{tmp}/nowhere",), ("{file}",), ("{data}",), ("",), ("{full}",)),
}


def inspect_argv(example, positional, arguments):
    # figures (t-SNE) cost seconds: drawn only when the focus is --no-probes, where they are the point
    figures = [] if "--no-probes" in arguments else ["--no-figures"]
    return [*(positional if positional is not None else (example.run,)), "--device", "cpu", *figures, *arguments]


@pytest.mark.parametrize("focus", sorted(INSPECT_OPTIONS))
def test_inspect_run_options(finished_run, focus):
    fuzz_report("inspect_run.py", INSPECT_OPTIONS, focus,
                fuzz(inspect_run.main, INSPECT_OPTIONS, focus, inspect_argv, needs_run=finished_run))


# ----------------------------------------------------------------------------- make_splits.py, make_example.py
SPLITS_OPTIONS = {
    "--seed": values("0", "4294967295", "4294967296", "-1", "", "x"),
    "--fractions": values(("0.7", "0.1", "0.2"), ("0.5", "0.25", "0.25"), ("nan", "0.5", "0.5"), ("inf", "0", "0"),
                          ("1", "0", "0"), ("0.7", "0.1"), ("-0.2", "0.6", "0.6"), ("1e308", "1e308", "1e308"),
                          ("0.3", "0.3", "0.3"), ("x", "y", "z")),
    "--overwrite": values(None),
    POSITIONAL: values(("{data}",), ("{tmp}/nowhere",), ("{file}",), ("{full}",), ("",)),
}


def splits_argv(example, positional, arguments):
    return [*(positional if positional is not None else (example.data,)), *arguments]


@pytest.mark.parametrize("focus", sorted(SPLITS_OPTIONS))
def test_make_splits_options(focus):
    fuzz_report("make_splits.py", SPLITS_OPTIONS, focus, fuzz(make_splits.main, SPLITS_OPTIONS, focus, splits_argv))


EXAMPLE_OPTIONS = {
    "--overwrite": values(None),
    POSITIONAL: values(("{tmp}/example",), ("{full}",), ("{file}",), ("{file}/sub",), ("/proc/example",), ("",),
                       ("{data}",), ()),
}


def example_argv(example, positional, arguments):
    return [*(positional if positional is not None else (os.path.join(example.tmp, "example"),)), *arguments]


@pytest.mark.parametrize("focus", sorted(EXAMPLE_OPTIONS))
def test_make_example_options(focus):
    fuzz_report("make_example.py", EXAMPLE_OPTIONS, focus,
                fuzz(make_example.main, EXAMPLE_OPTIONS, focus, example_argv, examples=3))


# ----------------------------------------------------------------------------- benchmark.py
BENCHMARK_OPTIONS = {
    "--shape": values("tiny", "eurosat-x", "", "TINY"),  # the real presets run for minutes on a CPU
    "--samples": values("9", "64", "8", "0", "-1", "10000000000000", "", "x"),
    "--first-shape": values(("1", "12", "12"), ("6",), ("2", "16"), ("1", "3", "3"), ("0", "4", "4"),
                            ("1", "2", "3", "4"), ("-1",), ("x",)),
    "--second-shape": values(("6",), ("1", "8", "8"), ("0",), ("2", "1"), ("x",)),
    "--classes": values("2", "3", "1", "0", "-1", "100000", "x"),
    "--epochs": values("1", "2", "0", "-1", "x"),
    "--batch-size": BIG_INTS, "--device": DEVICES,
    "--precision": values("auto", "fp32", "bf16", "bf17", "", "fp16"),
    "--compile": values("auto", "no", "", "maybe"),
    "--data-on-device": values("auto", "yes", "no", "", "always"),
    "--compare-plain": values(None),
    "--output": OUTPUT_FOLDERS,
    "--end-to-end": values(None), "--methods": values("discomkd", "mono,teacher", "", "x", "kd"),
}


def benchmark_argv(example, positional, arguments):
    # vectors (the MLP) by default: the tiny preset's images would train ResNet-18, seconds per example
    return ["--shape", "tiny", "--first-shape", "8", "--epochs", "1", "--device", "cpu",
            "--output", os.path.join(example.tmp, "bench"), *arguments]


@pytest.mark.parametrize("focus", sorted(BENCHMARK_OPTIONS))
def test_benchmark_options(focus):
    fuzz_report("benchmark.py", BENCHMARK_OPTIONS, focus,
                fuzz(benchmark.main, BENCHMARK_OPTIONS, focus, benchmark_argv))


def test_option_counts():
    """The options (and positional argument lists) each command's fuzzing draws from, for the report."""
    counts = {"main_DisCoM-KD.py": MAIN_OPTIONS, "compare.py": COMPARE_OPTIONS, "predict.py": PREDICT_OPTIONS,
              "inspect_run.py": INSPECT_OPTIONS, "make_splits.py": SPLITS_OPTIONS, "make_example.py": EXAMPLE_OPTIONS,
              "benchmark.py": BENCHMARK_OPTIONS}
    print("\n" + ", ".join(f"{c}: {len([k for k in o if k != POSITIONAL])} options"
                           + (" + positionals" if POSITIONAL in o else "") for c, o in counts.items()))
    assert all(len(o) >= 2 for o in counts.values())


def long_options(parser) -> set[str]:
    """Every --option a parser accepts, --help aside."""
    return {flag for action in parser._actions for flag in action.option_strings
            if flag.startswith("--") and flag != "--help"}


def test_every_option_of_every_command_is_fuzzed(cli_main):
    """The pools are written by hand: an option added to a command must be added to its pool too."""
    parsers = {"main_DisCoM-KD.py": (cli_main.__globals__["build_parser"](), MAIN_OPTIONS),
               "compare.py": (compare.build_parser(), COMPARE_OPTIONS),
               "predict.py": (predict.build_parser(), PREDICT_OPTIONS),
               "inspect_run.py": (inspect_run.build_parser(), INSPECT_OPTIONS),
               "make_splits.py": (make_splits.build_parser(), SPLITS_OPTIONS),
               "make_example.py": (make_example.build_parser(), EXAMPLE_OPTIONS),
               "benchmark.py": (benchmark.build_parser(), BENCHMARK_OPTIONS)}
    missing = {command: sorted(long_options(parser) - set(pool)) for command, (parser, pool) in parsers.items()}
    assert not any(missing.values()), missing
