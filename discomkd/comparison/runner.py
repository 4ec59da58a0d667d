"""The paper's comparison on one data folder: DisCoM-KD against its baselines, over repeated runs.

    python compare.py DIR FIRST SECOND [--runs K] [--methods mono,teacher,...] [--resplit] [options]

Every neural method is a spec in `models/methods.py` trained by the one training loop (`loop.fit`), so
all use the same encoders, Adam, augmentation, epochs, compiled step and model selection (each
classifier's best validation weighted F1, test metrics at that epoch); each writes its own run
folder (results.json, checkpoints, state.pt while unfinished). svm and logreg are scikit-learn
pipelines on the flattened rows, C chosen on validation (`classical.py`).

Run k uses seed S+k (S = --seed, 0 by default). When DIR holds no split files, or with
--resplit, each run draws its own stratified split (the authors' fractions), saved in OUTPUT/run_<seed>/split;
DIR is never written. Outputs: OUTPUT/comparison.json (per-run results and aggregates),
OUTPUT/comparison.md (the table), OUTPUT/run_<seed>/<method>[_<PREFIX>]/ for each neural model.

How it runs: plan -> jobs -> an executor -> results -> table. Each run is planned into jobs (one per
model, one per classical baseline: `jobs.plan_run`); an executor (`executors.py`: in this
process, or on Ray) runs them with `jobs.run_job` and hands back their results as they
finish; once a run's last job is done its entries are assembled, and comparison.json/.md rewritten
with the aggregates and the table (`table.py`).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from discomkd.analysis.comparison_figure import draw_comparison_figure
from discomkd.analysis.figures import MISSING_MATPLOTLIB, matplotlib_figure
from discomkd.comparison.classical import CLASSICAL
from discomkd.comparison.executors import LocalExecutor
from discomkd.comparison.jobs import TEACHER, DataSource, Job, method_entry, plan_run, read_data, run_job
from discomkd.comparison.table import STD_DDOF, aggregate, format_paired, format_table, paired_differences
from discomkd.comparison.tuning_space import row_label, settings_source
from discomkd.data.folder import DataFolder, default_encoder, has_split_files, read_labels, write_split_files
from discomkd.data.splits import DEFAULT_FRACTIONS_TEXT, draw_split
from discomkd.models.methods import METHODS
from discomkd.runs.outputs import RESULTS_FILE as RUN_RESULTS_FILE
from discomkd.runs.ownership import whole_folder
from discomkd.training.config import MAX_RUNS, Config, check_config, resolve_device, resolve_precision
from discomkd.training.identity import computed_settings, resume_problem
from discomkd.training.setup import check_augmentations
from discomkd.utils.errors import DataError, Interrupted, OptionError, TrainingError
from discomkd.utils.files import write_json, write_text
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
    for method, settings in method_settings.items():
        if method not in METHODS:
            raise OptionError(f"settings for {method}: not a neural method of this comparison; expected one of "
                              f"{', '.join(m for m in methods if m in METHODS)}")
        check_config(dataclasses.replace(comparison.config, **settings))
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
    for method, settings in method_settings.items():
        check_method_settings(comparison.config, settings, data, f"the settings for {method}")
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
    differ = [key for key in now if before[key] != now[key] and not (key == "methods" and set(before[key]) <= set(
        now[key]))]
    if differ:
        detail = differ if differ != ["config"] else sorted(
            k for k in now["config"] if before["config"].get(k) != now["config"][k])
        raise OptionError(f"--resume: {path} is a comparison with other {', '.join(detail)}; give the command line it "
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


# ----------------------------------------------------------------------------- runs, from plan to record
@dataclass
class Run:
    """One run: its jobs, and their results as they finish."""

    seed: int
    folder: str  # OUTPUT/run_<seed>, as the record names it
    described: dict  # the run's data, DataFolder.describe()
    jobs: list[Job]
    skipped: dict[str, dict]  # the entries of the methods this run skips
    results: dict[str, dict] = field(default_factory=dict)  # job name -> result

    @property
    def finished(self) -> bool:
        return len(self.results) == len(self.jobs)

    def record(self, methods: tuple[str, ...]) -> dict:
        """The run in comparison.json: {"seed", "folder", "data", "methods": {method: entry}}, in the order
        of `methods`; the teacher's result counts in the time of the methods that read it."""
        teacher = next((self.results[job.name] for job in self.jobs if job.method == TEACHER), None)
        entries = {}
        for method in methods:
            results = [self.results[job.name] for job in self.jobs if job.method == method]
            entries[method] = self.skipped[method] if method in self.skipped else method_entry(method, results, teacher)
        return {"seed": self.seed, "folder": self.folder, "data": self.described, "methods": entries}


class Runs:
    """The comparison's runs as they are planned and as their jobs finish: a run is recorded once its last
    job is done (or at once, when every method of it is skipped), comparison.json/.md rewritten then."""

    def __init__(self, comparison: Comparison, data: DataFolder, results: dict, local: bool):
        self.comparison, self.data, self.results = comparison, data, results
        self.local = local  # the executor runs each job here as it is planned; else paths must be absolute
        self.by_seed: dict[int, Run] = {}
        self.folders: list[str] = []  # the run folders made, removed when the comparison stops with none finished
        self.planned = self.done = 0  # jobs

    def plan(self):
        """Every run's jobs, in order; each run prepared (split saved, data read) just before its jobs."""
        kept = {run["seed"] for run in self.comparison.kept}
        for k, seed in enumerate(self.comparison.seeds):
            if seed in kept:
                logger.info(f"run {k + 1}/{len(self.comparison.seeds)}  seed {seed}  kept as {RESULTS_FILE} records it")
                continue
            run = self.prepare(k, seed)
            self.by_seed[seed] = run
            self.planned += len(run.jobs)
            if not run.jobs:
                self.record(run)
            yield from run.jobs

    def prepare(self, k: int, seed: int) -> Run:
        """Run k's folder, split and data as its jobs read them; its plan."""
        comparison = self.comparison
        folder = os.path.join(comparison.output, f"run_{seed}")
        if not os.path.exists(folder):  # a resumed run's folder holds earlier work: never removed
            self.folders.append(folder)
        data, split_folder = self.data, None
        if comparison.drawn is not None:
            split_folder = split_name(comparison.output, seed)
            write_split_files(split_folder, comparison.drawn[k])
            data = read_data(comparison.source(split_folder))
        for warning in data.warnings:
            logger.warning(warning)
        logger.info(f"run {k + 1}/{len(comparison.seeds)}  seed {seed}  training rows "
                 + " ".join(f"{m.prefix} {len(m.splits['train'])}" for m in data.modalities)
                 + f", valid {len(data.modalities[0].splits['valid'])}, "
                   f"test {len(data.modalities[0].splits['test'])}")
        described = data.describe()
        source = comparison.source(split_folder).checked(data)
        run_folder = folder
        if not self.local:  # the jobs may run in another working folder
            run_folder, source = os.path.abspath(folder), source.absolute()
        run_config = dataclasses.replace(comparison.config, seed=seed, verbose=int(comparison.verbose))
        jobs, skipped = plan_run(seed, run_folder, run_config, data, source, comparison.methods,
                                 comparison.method_settings)
        return Run(seed, folder, described, jobs, skipped)

    def finish(self, job: Job, result: dict) -> None:
        """A job's result: announced, and its run recorded when it was the run's last."""
        run = self.by_seed[job.seed]
        run.results[job.name] = result
        self.done += 1
        announce("" if self.local else f"[{self.done}/{self.planned}] seed {job.seed}  ", job, result)
        if run.finished:
            self.record(run)

    def record(self, run: Run) -> None:
        """A finished run into comparison.json/.md."""
        self.results["results"].append(run.record(self.comparison.methods))
        self.results["results"].sort(key=lambda entry: entry["seed"])  # an executor may finish runs out of order
        save(self.comparison, self.results)


def announce(label: str, job: Job, result: dict) -> None:
    """One line per column of a finished job's result, `label` first."""
    method = job.method + (" (resumed)" if result.get("resumed") else "")
    for column, scores in result["columns"].items():
        seconds = scores["seconds"] if job.method in CLASSICAL else result["seconds"]
        choice = f"C {scores['C']:g}" if scores.get("C") is not None else (
            f"best epoch {scores['best_epoch']}" if "best_epoch" in scores else "constant")
        logger.info(f"  {label}{method:<15} {column:<10} {choice:<15} valid wF1 {scores['valid']['weighted_f1']:.4f}  "
            f"test wF1 {scores['test']['weighted_f1']:.4f}  acc {scores['test']['accuracy']:.4f}  {seconds:.1f}s")


# ----------------------------------------------------------------------------- the comparison
def compare(config: Config, directory: str, first_prefix: str, second_prefix: str, runs: int = 1,
            methods=DEFAULT_METHODS, resplit: bool = False, verbose: bool = False,
            executor=None, on_epoch=None, shared_split: str | None = None, method_settings: dict | None = None,
            settings_from: dict | None = None, resume: bool = False) -> dict:
    """Runs every method `runs` times (seeds config.seed + k) and writes comparison.json / .md.

    `config` holds the training settings of every neural method (its output: the comparison's folder,
    default DIR/comparison_<FIRST>_<SECOND>). `executor` runs the jobs (`executors.py`): a
    `LocalExecutor` (None) or a `ray_executor.RayExecutor`. `on_epoch` goes to every model's training
    (`loop.fit`); `shared_split`, `method_settings`, `settings_from`: see `read_input`. One process at
    a time writes the folder, and `--overwrite` keeps the earlier comparison until this one is complete
    (`ownership.whole_folder`). `resume`: the comparison saved in the output folder continued with the same
    input (`--runs` and `--methods` may grow): its recorded runs kept, and in the others every model that finished kept and
    every state.pt continued (`jobs.run_job`'s `may_resume`). Raises `DataError` or `OptionError` before
    writing anything on bad input; `Interrupted` or `TrainingError` after saving the runs finished so far (a
    new comparison with none finished leaves nothing behind). Returns the contents of comparison.json.
    """
    comparison, data = read_input(config, directory, (first_prefix, second_prefix), runs, methods, resplit, verbose,
                                  shared_split, method_settings, settings_from, resume)
    executor = executor or LocalExecutor()
    device = resolve_device(config.device)
    with whole_folder(comparison.output, config.overwrite, lambda: executor.start(comparison.output),
                      resume) as write:
        return _run(comparison, data, executor, device, directory, write.created, on_epoch, write.replacing)


def _run(comparison: Comparison, data: DataFolder, executor, device: torch.device, directory: str, created: bool,
         on_epoch, replacing: bool) -> dict:
    """The comparison's jobs run by `executor`, their results recorded as they finish; see `compare`."""
    if comparison.drawn is not None and has_split_files(directory, comparison.prefixes):
        logger.info(f"--resplit: {directory}'s own split files are not used")
    started = time.time()
    results = _header(comparison, executor.description, device)
    if comparison.resume:
        results["results"] = list(comparison.kept)
        results["resumed"] = {"kept_runs": [run["seed"] for run in comparison.kept]}
        if comparison.kept:
            save(comparison, results)
    state = Runs(comparison, data, results, executor.local)
    run_one = functools.partial(run_job, on_epoch=on_epoch, may_resume=comparison.resume)
    finishing = executor(state.plan(), run_one)  # a generator: nothing is planned or run yet
    try:
        for job, result in finishing:
            state.finish(job, result)
    except (Interrupted, TrainingError, KeyboardInterrupt) as error:
        finishing.close()  # an executor's tasks still running are cancelled
        _stop(error, comparison, results, state.folders, created, replacing)
    return _finish(comparison, results, time.time() - started)


def _header(comparison: Comparison, executor: str, device: torch.device) -> dict:
    """comparison.json before any run has finished."""
    config = comparison.config
    return {"status": "running", "directory": os.path.abspath(comparison.directory),
            "prefixes": list(comparison.prefixes), "methods": list(comparison.methods), "runs": len(comparison.seeds),
            "seeds": comparison.seeds, "splits": comparison.split_note, "std_ddof": STD_DDOF,
            "config": dataclasses.asdict(config), "method_settings": comparison.method_settings,
            "settings_from": comparison.settings_from, "row_labels": comparison.labels, "executor": executor,
            "environment": {"torch": str(torch.__version__), "device": str(device),
                            "precision": resolve_precision(config.precision, device)},
            "results": [], "aggregated": {}, "paired": {}}


def save(comparison: Comparison, results: dict) -> None:
    """comparison.json and comparison.md with the runs finished so far."""
    finished = [run["seed"] for run in results["results"]]  # in seed order, not always the first seeds
    results["aggregated"] = aggregate(results["results"], comparison.methods)
    results["paired"] = paired_differences(results["results"], comparison.methods, comparison.prefixes)
    table = format_table(results["aggregated"], comparison.prefixes, len(finished), finished, comparison.split_note,
                         True, comparison.extra_notes, comparison.settings_from, comparison.labels)
    paired = format_paired(results["paired"], comparison.prefixes, True, labels=comparison.labels)
    table += "\n" + paired if paired else ""
    runs_done = f"{len(finished)} of {len(comparison.seeds)} runs"
    heading = {"running": f"**In progress: {runs_done} finished so far.**",
               "interrupted": f"**Interrupted after {runs_done}; the same command with --resume continues it.**",
               "failed": f"**Failed after {runs_done}: {results.get('stopped_because')}**"
               }.get(results["status"])
    table = f"{heading}\n\n{table}" if heading else table
    write_json(os.path.join(comparison.output, RESULTS_FILE), results)
    write_text(os.path.join(comparison.output, TABLE_FILE), table)
    new_figure = matplotlib_figure()
    if new_figure is not None and results["aggregated"]:
        draw_comparison_figure(new_figure, results, os.path.join(comparison.output, FIGURE_FILE), comparison.labels)


def _stop(error: BaseException, comparison: Comparison, results: dict, folders: list[str], created: bool,
          replacing: bool = False):
    """Ends a comparison stopped by `error`: the runs finished so far saved (status "interrupted" or
    "failed"), or with none finished, everything it wrote removed. Raises `Interrupted` or `TrainingError`."""
    output, finished = comparison.output, len(results["results"])
    reason = "interrupted" if isinstance(error, (Interrupted, KeyboardInterrupt)) else "failed"
    if finished:
        results["status"] = reason
        results["stopped_because"] = str(error) if isinstance(error, TrainingError) else "a signal"
        save(comparison, results)
        kept = ("the run(s) finished so far are saved with them" if replacing else
                f"the {finished} run(s) finished so far are in {os.path.join(output, RESULTS_FILE)} and "
                f"{TABLE_FILE}; --resume continues, --overwrite starts again")
    elif comparison.resume:
        for folder in folders:  # only those this attempt made
            shutil.rmtree(folder, ignore_errors=True)
        kept = f"the models that finished before stay in {output}; --resume continues"
    else:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        if created:
            shutil.rmtree(output, ignore_errors=True)
        kept = "no run had finished, so nothing was kept"
    detail = str(error) if isinstance(error, TrainingError) else "by a signal"
    message = f"comparison {reason} with {finished}/{len(comparison.seeds)} run(s) finished ({detail}); {kept}"
    stopped = (TrainingError if reason == "failed" else Interrupted)(message)
    raise stopped from None


def _finish(comparison: Comparison, results: dict, seconds: float) -> dict:
    """The finished comparison's comparison.json and .md, with the table also printed; returns its contents."""
    results["status"] = "finished"
    save(comparison, results)  # comparison.md without its heading "in progress"
    results["total_seconds"] = seconds
    results["table"] = format_table(results["aggregated"], comparison.prefixes, len(comparison.seeds),
                                    comparison.seeds, comparison.split_note, False, comparison.extra_notes,
                                    comparison.settings_from, comparison.labels)
    paired = format_paired(results.get("paired", {}), comparison.prefixes, False, labels=comparison.labels)
    results["table"] += "\n\n" + paired if paired else ""
    write_json(os.path.join(comparison.output, RESULTS_FILE), results)
    logger.info("")
    logger.info(results["table"])
    drawn = os.path.exists(os.path.join(comparison.output, FIGURE_FILE))
    logger.info(f"(outputs in {comparison.output}: {RESULTS_FILE}, {TABLE_FILE}"
                + (f", {FIGURE_FILE})" if drawn else f"; {MISSING_MATPLOTLIB.replace('figures', 'its figure')})"))
    return results
