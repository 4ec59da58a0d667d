"""A comparison's input, checked before anything is written: its methods, runs and seeds, settings (each
method's own among them), the drawn splits, the data, and with --resume the comparison saved in the output
folder that it continues (`recorded_runs`). The runner (`runner.py`) takes a `Comparison` from here.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field

import numpy as np

from discomkd.comparison.classical import CLASSICAL
from discomkd.comparison.jobs import DataSource, read_data
from discomkd.comparison.tuning_space import model_settings, row_label, settings_source, split_model_key
from discomkd.data.folder import DataFolder, default_encoder, has_split_files, read_labels
from discomkd.data.splits import DEFAULT_FRACTIONS_TEXT, draw_split
from discomkd.models.methods import METHODS
from discomkd.runs.outputs import RESULTS_FILE as RUN_RESULTS_FILE
from discomkd.training.config import MAX_RUNS, Config, check_config
from discomkd.training.identity import computed_settings, resume_problem
from discomkd.training.setup import check_augmentations
from discomkd.utils.errors import DataError, OptionError
from discomkd.utils.seeds import MAX_SEED

RESULTS_FILE, TABLE_FILE, FIGURE_FILE = "comparison.json", "comparison.md", "comparison.png"
SPLIT_FOLDER = "split"
ALL_METHODS = tuple(METHODS) + tuple(CLASSICAL)
DEFAULT_METHODS = tuple(m for m in METHODS if METHODS[m].compared_by_default) + tuple(CLASSICAL)

logger = logging.getLogger(__name__)


def parse_methods(text: str) -> tuple[str, ...]:
    """'mono,kd' -> ('mono', 'kd'), in the given order, each once; raises `OptionError` for unknown names."""
    methods = []
    for name in (part.strip() for part in text.split(",")):
        if name not in ALL_METHODS:
            raise OptionError(f"--methods {text}: unknown method {name!r}; expected a comma-separated list of "
                            f"{', '.join(ALL_METHODS)}")
        if name not in methods:
            methods.append(name)
    return tuple(methods)


def draw_splits(directory: str, seeds) -> list[dict[str, np.ndarray]]:
    """A stratified split of the folder's labels per seed, in DEFAULT_FRACTIONS; raises `DataError`."""
    labels_path = os.path.join(directory, "labels.npy")
    if not os.path.isdir(directory):
        raise DataError(f"{directory}: data folder not found")
    labels = read_labels(labels_path)
    return [draw_split(labels, seed, labels_path=labels_path) for seed in seeds]


def split_name(output: str, seed: int) -> str:
    """Where run `seed`'s drawn split is saved; also how errors about it name it."""
    return os.path.join(output, f"run_{seed}", SPLIT_FOLDER)


# ----------------------------------------------------------------------------- the input, checked
@dataclass
class Comparison:
    """A comparison's input, checked: its settings, data folder, runs and methods."""

    config: Config  # every neural method's settings; output: the comparison's folder
    directory: str
    prefixes: tuple[str, str]
    seeds: list[int]  # one run per seed
    methods: tuple[str, ...]
    verbose: bool
    drawn: list[dict] | None = None  # per run, the split drawn for it; None: shared split files
    shared_split: str | None = None  # the folder of the shared split files; None: the data folder's own
    method_settings: dict[str, dict] = field(default_factory=dict)  # per method, settings replacing config's
    settings_from: dict[str, str] = field(default_factory=dict)  # per method, where its settings came from
    labels: dict[str, str] = field(default_factory=dict)  # per method, its row's name (`tuning_space.row_label`)
    resume: bool = False  # continue the comparison saved in the output folder
    kept: list[dict] = field(default_factory=list)  # --resume: the runs comparison.json recorded, kept as they are

    @property
    def output(self) -> str:
        return self.config.output

    @property
    def split_note(self) -> str:
        if self.drawn is not None:
            return f"a fresh stratified {DEFAULT_FRACTIONS_TEXT} split per run, saved in run_<seed>/split"
        return ("the folder's own split files" if self.shared_split is None
                else f"the split files in {self.shared_split}") + ", shared by all runs"

    @property
    def extra_notes(self) -> list[str]:
        """The table's notes beyond the usual ones."""
        if self.drawn is None and set(CLASSICAL) & set(self.methods) and len(self.seeds) > 1:
            return ["svm and logreg do not depend on the seed: on a shared split their runs repeat "
                    "(standard deviation 0); --resplit draws a split per run."]
        return []

    def source(self, split_folder: str | None) -> DataSource:
        """The data as a run reads it: with the split saved in `split_folder`, or the folder's own."""
        return DataSource(self.directory, self.prefixes, (self.config.encoder_first, self.config.encoder_second),
                          split_folder or self.shared_split)


def read_input(config: Config, directory: str, prefixes: tuple[str, str], runs: int, methods, resplit: bool,
               verbose: bool, shared_split: str | None = None, method_settings: dict[str, dict] | None = None,
               settings_from: dict[str, str] | None = None, resume: bool = False) -> tuple[Comparison, DataFolder]:
    """The comparison's input and the data as its first run sees it, every check that can fail on the
    user's input done before anything is written: the methods, runs and seeds, the settings, the
    drawn splits, the data, the augmentation settings, and with `resume` the saved comparison it continues
    (`recorded_runs`). `shared_split`: a folder whose split files every run uses (tuning's search split);
    `method_settings`: per method, settings replacing `config`'s; `settings_from`: per method, where its
    settings came from (by default `tuning_space.settings_source` without a file: "paper" or "command
    line"). Raises `DataError` or `OptionError`."""
    methods = parse_methods(methods if isinstance(methods, str) else ",".join(methods))
    if not 1 <= runs <= MAX_RUNS:  # before the seeds are listed
        raise OptionError(f"--runs {runs}: 1 to {MAX_RUNS} is expected")
    default = os.path.join(directory, f"comparison_{prefixes[0]}_{prefixes[1]}")
    output = default if config.output is None else config.output  # '' is refused by check_config
    comparison = Comparison(dataclasses.replace(config, output=output), directory, prefixes,
                            [config.seed + k for k in range(runs)], methods, verbose, shared_split=shared_split,
                            resume=resume)
    check_config(comparison.config)
    method_settings = dict(method_settings or {})
    for key, settings in method_settings.items():
        if split_model_key(key, prefixes) is None:
            raise OptionError(f"settings for {key}: not a neural method of this comparison; expected one of "
                              f"{', '.join(m for m in methods if m in METHODS)}, or <method>_<PREFIX> for one "
                              "modality's model of mono, kd or dkd")
        check_config(dataclasses.replace(comparison.config, **model_settings(method_settings, *split_model_key(
            key, prefixes))))
    comparison.method_settings = method_settings
    comparison.settings_from = {
        method: (settings_from or {}).get(method) or settings_source(
            method, None, dataclasses.replace(comparison.config, **method_settings.get(method, {})))
        for method in methods if method in METHODS}
    comparison.settings_from.update({method: "C chosen on validation" for method in methods if method in CLASSICAL})
    comparison.labels = {method: row_label(method, dataclasses.replace(comparison.config,
                                                                       **method_settings.get(method, {})))
                         for method in methods if method in METHODS}
    if config.seed + runs - 1 > MAX_SEED:
        raise OptionError(f"--seed {config.seed} --runs {runs}: the last run's seed {config.seed + runs - 1} exceeds "
                        f"{MAX_SEED} (2**32-1)")
    if shared_split is not None:
        data = read_data(comparison.source(None))
    elif resplit or not has_split_files(directory, prefixes):
        comparison.drawn = draw_splits(directory, comparison.seeds)
        data = read_data(comparison.source(split_name(output, comparison.seeds[0])), comparison.drawn[0])
    else:
        data = read_data(comparison.source(None))
    check_augmentations(comparison.config, data)  # before anything is written
    for key in method_settings:
        check_method_settings(comparison.config, model_settings(method_settings, *split_model_key(key, prefixes)),
                              data, f"the settings for {key}")
    if resume:
        comparison.kept = recorded_runs(comparison)
    return comparison, data


def what_it_computes(comparison: Comparison | dict) -> dict:
    """What decides a comparison's results, of a `Comparison` or as its comparison.json recorded it (a setting
    added since takes its default: `identity.computed_settings`): a resumed comparison must match."""
    keys = ("directory", "prefixes", "methods", "splits", "method_settings")
    if isinstance(comparison, dict):
        recorded = {key: comparison.get(key) for key in keys}
        return json.loads(json.dumps({**recorded, "config": computed_settings(comparison.get("config") or {})}))
    return json.loads(json.dumps({"directory": os.path.abspath(comparison.directory),
                                  "prefixes": list(comparison.prefixes), "methods": list(comparison.methods),
                                  "splits": comparison.split_note, "method_settings": comparison.method_settings,
                                  "config": computed_settings(comparison.config)}))


def what_differs(now: dict, before: dict, may_grow=()) -> list[str]:
    """The keys whose values differ between what a command computes now and what its output folder recorded (a list
    under a key of `may_grow` may have gained items); when only "config" differs, the settings in it that do."""
    differ = [key for key in now if before.get(key) != now[key]
              and not (key in may_grow and set(before.get(key) or ()) <= set(now[key]))]
    if differ == ["config"]:
        return sorted(k for k in now["config"] if (before.get("config") or {}).get(k) != now["config"][k])
    return differ


def recorded_runs(comparison: Comparison) -> list[dict]:
    """--resume: the runs that the output folder's comparison.json recorded, after checking that it is this
    very comparison (data folder, modalities, methods, split, settings: only --runs and --methods may grow; with
    methods added, no run is kept whole, but each run's finished models are, by `jobs.run_job`) and that each
    run's data is still what it recorded (its split, shapes and labels; every byte, against a model's digests).
    Raises `OptionError` or `DataError` naming the file."""
    path = os.path.join(comparison.output, RESULTS_FILE)
    try:
        with open(path) as file:
            saved = json.load(file)
        saved_runs = list(saved["results"])
        saved_seeds = [run["seed"] for run in saved_runs]
    except FileNotFoundError:
        raise OptionError(f"--resume: {path} not found; a new comparison starts without --resume") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{path}: not a comparison's results ({error})") from None
    now, before = what_it_computes(comparison), what_it_computes(saved)
    added = [method for method in now["methods"] if method not in (before["methods"] or [])]
    differ = what_differs(now, before, may_grow=("methods",))
    if differ:
        raise OptionError(f"--resume: {path} is a comparison with other {', '.join(differ)}; give the command line it "
                          f"started with (only --runs and --methods may grow), or --overwrite to start again")
    dropped = sorted(set(saved_seeds) - set(comparison.seeds))
    if dropped:
        raise OptionError(f"--resume: {path} records the run(s) of seed {', '.join(map(str, dropped))}, which "
                          f"--runs {len(comparison.seeds)} leaves out; give at least --runs {len(saved_seeds)}")
    if added:  # every run planned again: its finished models kept by `jobs.run_job`, the methods added trained
        logger.info(f"--resume: methods added ({', '.join(added)}): each recorded run is planned again, its finished "
                    "models kept")
        return []
    for run in saved_runs:
        check_recorded_data(comparison, run, path)
    return saved_runs


def check_recorded_data(comparison: Comparison, run: dict, path: str) -> None:
    """A recorded run's data still as it was: read with its split, which must be the split its seed draws now;
    described as recorded; and, when it has a neural model, every byte as the model's results.json records."""
    seed = run["seed"]
    split_folder = split_name(comparison.output, seed) if comparison.drawn is not None else None
    data = read_data(comparison.source(split_folder))
    drawn = comparison.drawn[comparison.seeds.index(seed)] if comparison.drawn is not None else None
    problem = None
    if drawn is not None and any(not np.array_equal(m.splits[key], drawn[key]) for m in data.modalities
                                 for key in ("valid", "test")):
        problem = "its saved split is not the one its seed draws from the labels now"
    elif json.loads(json.dumps(data.describe())) != run["data"]:
        problem = "its data files, shapes, split sizes or classes differ"
    else:
        outputs = [output for entry in run["methods"].values() for output in entry.get("outputs", [])]
        if outputs:
            try:
                with open(os.path.join(outputs[0], RUN_RESULTS_FILE)) as file:
                    problem = resume_problem(json.load(file), data)
            except (OSError, ValueError) as error:
                problem = f"{os.path.join(outputs[0], RUN_RESULTS_FILE)} cannot be read ({error})"
    if problem is not None:
        raise DataError(f"--resume: {path}: the run of seed {seed} cannot be kept: {problem}; --overwrite starts "
                        "again")


def check_method_settings(config: Config, settings: dict, data: DataFolder, source: str) -> None:
    """One method's own settings (--settings-for, tune.py's --teacher-settings), which replace the comparison's
    `config` for that method, checked against the data as the comparison reads it, before anything is written:
    their augmentations must suit the samples, and their encoders must be those the data was read with (the
    comparison reads the data once, with the encoders of its command line: a model of other encoders would be
    recorded but never built). Raises `OptionError` naming `source`."""
    for index, which in enumerate(("first", "second")):
        asked = settings.get(f"encoder_{which}")
        modality = data.modalities[index]
        if asked is not None and (default_encoder(modality.prefix, modality.sample_shape) if asked == "auto"
                                  else asked) != modality.encoder:
            raise OptionError(f"{source}: encoder_{which} {asked}: the comparison reads {modality.prefix} once, with "
                              f"the encoder of its command line ({modality.encoder}); give --encoder-{which} {asked} "
                              "on the command line (every method then uses it), or leave it out of the file")
    check_augmentations(dataclasses.replace(config, **settings), data)
