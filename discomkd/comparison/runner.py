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
OUTPUT/comparison.md (the table), OUTPUT/comparison.png (its figure, with matplotlib),
OUTPUT/run_<seed>/<method>[_<PREFIX>]/ for each neural model.

How it runs: input (checked: `inputs.py`) -> plan -> jobs -> an executor -> results -> table. Each run is
planned into jobs (one per
model, one per classical baseline: `jobs.plan_run`); an executor (`executors.py`: in this
process, or on Ray) runs them with `jobs.run_job` and hands back their results as they
finish; once a run's last job is done its entries are assembled, and comparison.json/.md rewritten
with the aggregates and the table (`table.py`).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import time
from dataclasses import dataclass, field

import torch

from discomkd.analysis.comparison_figure import draw_comparison_figure
from discomkd.analysis.figures import MISSING_MATPLOTLIB, matplotlib_figure
from discomkd.comparison.classical import CLASSICAL
from discomkd.comparison.executors import LocalExecutor
from discomkd.comparison.inputs import (
    DEFAULT_METHODS,
    FIGURE_FILE,
    RESULTS_FILE,
    TABLE_FILE,
    Comparison,
    read_input,
    split_name,
)
from discomkd.comparison.jobs import TEACHER, Job, method_entry, plan_run, read_data, run_job
from discomkd.comparison.table import STD_DDOF, aggregate, format_paired, format_table, paired_differences
from discomkd.data.folder import DataFolder, has_split_files, write_split_files
from discomkd.runs.ownership import whole_folder
from discomkd.training.config import Config, resolve_device, resolve_precision
from discomkd.utils.errors import Interrupted, TrainingError
from discomkd.utils.files import write_json, write_text

logger = logging.getLogger(__name__)



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
