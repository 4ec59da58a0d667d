"""Training settings of any neural method searched on validation with Ray Tune (the library behind tune.py).

The search: random sampling of `search_space` (what `tuning_space.searched` names for the method; the
starting settings evaluated first), each trial the method trained by the training loop (`loop.fit`) on the
search split, reporting after every epoch the mean over both modalities of each classifier's best
validation weighted F1 so far (what the loop's per-classifier model selection keeps; a per-modality
method trains its two models in turn and reports during the second); ASHA stops trials that lag at its
rungs. The trials read no test row: their data holds the training and validation rows only
(`validation_only`) and `Config.score_test` is off, so the loop never scores a test split.

The chosen settings are then trained `runs` times on fresh seeds by the comparison
(`comparison.compare`), beside the settings the search started from, and reported in one table.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import logging
import os
import time

import numpy as np
import ray.tune as ray_tune
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import BasicVariantGenerator

from discomkd.comparison.inputs import check_method_settings, draw_splits
from discomkd.comparison.jobs import TEACHER, DataSource, read_data
from discomkd.comparison.runner import compare
from discomkd.comparison.table import format_table
from discomkd.comparison.tuning_space import (
    DKD_ALPHAS,
    DKD_BETAS,
    GRL_COEFFICIENTS,
    KD_WEIGHTS,
    LEARNING_RATES,
    LOSS_WEIGHTS,
    TEMPERATURES,
    WEIGHT_DECAYS,
    check_tuning,
    searched,
    switched_off_note,
)
from discomkd.data.augment import AUGMENTATIONS
from discomkd.data.folder import DataFolder, has_split_files, write_split_files
from discomkd.models.methods import FUSED, METHODS
from discomkd.runs.outputs import RESULTS_FILE, STATE_FILE, checkpoint_path
from discomkd.runs.ownership import whole_folder
from discomkd.training.config import Config
from discomkd.training.loop import fit
from discomkd.training.setup import check_augmentations
from discomkd.utils import console
from discomkd.utils.errors import Interrupted, TrainingError
from discomkd.utils.files import write_json, write_text

METRIC = "valid_weighted_f1"  # what trials report and the search maximises
logger = logging.getLogger(__name__)


def epoch_choices(max_epochs: int) -> list[int]:
    """A quarter, half and all of `max_epochs` (model selection keeps the best validation epoch, so
    fewer epochs only help when later ones would not be reached anyway: they save time)."""
    return sorted({max(1, max_epochs // 4), max(1, max_epochs // 2), max_epochs})


def search_space(config: Config, data: DataFolder, modality: int | None = None) -> dict:
    """Ray Tune's space over the settings `searched(config.method, modality)` names; augmentations among those
    each modality's rank allows."""
    space = {
        "learning_rate": ray_tune.loguniform(*LEARNING_RATES),
        "weight_decay": ray_tune.choice(WEIGHT_DECAYS),
        "epochs": ray_tune.choice(epoch_choices(config.epochs)),
        **{f"augment_{which}": ray_tune.choice(list(AUGMENTATIONS[m.rank + 1]))
           for which, m in zip(("first", "second"), data.modalities)},
        **{f"weight_{term}": ray_tune.choice(LOSS_WEIGHTS) for term in ("aux", "mod", "adv", "perp")},
        "grl_coefficient": ray_tune.choice(GRL_COEFFICIENTS),
        "align_weight": ray_tune.choice(LOSS_WEIGHTS[1:]),
        "kd_temperature": ray_tune.choice(TEMPERATURES), "kd_weight": ray_tune.choice(KD_WEIGHTS),
        "dkd_alpha": ray_tune.choice(DKD_ALPHAS), "dkd_beta": ray_tune.choice(DKD_BETAS),
        "dkd_temperature": ray_tune.choice(TEMPERATURES),
        "dml_temperature": ray_tune.choice(TEMPERATURES), "dml_weight": ray_tune.choice(KD_WEIGHTS),
    }
    return {name: space[name] for name in searched(config.method, modality)}


def starting_point(config: Config, modality: int | None = None) -> dict:
    """The searched settings as `config` holds them (the paper's unless set): the first trial."""
    return {name: getattr(config, name) for name in searched(config.method, modality)}


def first_trial(config: Config, data: DataFolder, modality: int | None = None) -> dict:
    """`starting_point` with `auto` augmentations resolved for `data`'s modalities, so that the first
    trial's values lie in the search space (which lists the modes themselves)."""
    resolved = dict(zip(("augment_first", "augment_second"), check_augmentations(config, data)))
    point = starting_point(config, modality)
    return {**point, **{name: mode for name, mode in resolved.items() if name in point}}


def validation_only(data: DataFolder) -> DataFolder:
    """`data` without its test rows: each modality keeps its training and validation rows only."""
    modalities = tuple(dataclasses.replace(m, splits={s: r for s, r in m.splits.items() if s != "test"})
                       for m in data.modalities)
    return dataclasses.replace(data, modalities=modalities)


@dataclasses.dataclass(frozen=True)
class SearchJob:
    """What every trial reads: the settings it starts from (`config.method`: the method searched), the
    data folder with the search split, for kd and dkd the teacher trained once for the search, and for a search
    over one modality's model of a per-modality method, that modality's prefix."""

    config: Config  # seed: the search's; output: the search folder
    data: DataSource  # absolute paths: trials run in Ray Tune's own working folders, on any node
    teacher: str | None = None  # the search teacher's checkpoint (kd, dkd)
    modality: str | None = None  # one modality's model alone (mono, kd, dkd), scored on that modality only

    @property
    def modality_index(self) -> int | None:
        """0 or 1 for a search over one modality's model, else None."""
        return None if self.modality is None else self.data.prefixes.index(self.modality)


def search_data(job: SearchJob) -> DataFolder:
    """The trial's data, read again: the search split's training and validation rows."""
    return validation_only(read_data(job.data))


def trial_models(method: str, data: DataFolder, modality: str | None = None) -> list[str | None]:
    """The models a trial of `method` trains, in order: `modality`'s alone when given; else one per modality for
    mono, kd and dkd (their prefixes), or one model reading both (None)."""
    if modality is not None:
        return [modality]
    return [m.prefix for m in data.modalities] if METHODS[method].per_modality else [None]


def run_trial(settings: dict, job: SearchJob, output: str, report) -> dict:
    """One trial: `job.config.method` with `settings` trained into `output` on the search split's
    training rows, scored on its validation rows only; `report({METRIC, "epoch"})` after every epoch of
    its last model (a per-modality method trains one model per modality, in turn, unless `job.modality` names
    one: the metric is the mean over the classifiers trained of each one's best validation weighted F1 so far, a
    finished model's best included). Returns the last model's fit results."""
    config = dataclasses.replace(job.config, **settings, output=output, overwrite=True, verbose=0,
                                 score_test=False, test_every_epoch=False, teacher=job.teacher)
    data = search_data(job)
    models = trial_models(config.method, data, job.modality)
    best: dict[str, float] = {}

    def on_epoch(entry: dict) -> None:
        for column, scores in entry.items():
            if isinstance(scores, dict) and "valid" in scores:
                best[column] = max(best.get(column, -1.0), scores["valid"]["weighted_f1"])
        report({METRIC: float(np.mean(list(best.values()))), "epoch": entry["epoch"]})

    for k, modality in enumerate(models):
        folder = output if modality is None else os.path.join(output, f"{config.method}_{modality}")
        os.makedirs(folder, exist_ok=True)
        last = k == len(models) - 1
        with console.only_warnings("discomkd.training"):  # one line per finished trial instead
            results = fit(dataclasses.replace(config, modality=modality, output=folder), data, folder,
                          on_epoch=on_epoch if last else None)
        if not last:
            best.update({c: r["valid"]["weighted_f1"] for c, r in results["final"].items()})
    return results


def train_search_teacher(job: SearchJob, data: DataFolder, settings: dict | None = None) -> SearchJob:
    """kd and dkd: the teacher their trials distil from, trained once here with the starting settings
    (`settings` replacing them: --teacher-settings) on the search split (validation only) into
    OUTPUT/search_teacher; other methods: `job` unchanged."""
    if not METHODS[job.config.method].needs_teacher:
        return job
    folder = os.path.join(job.config.output, "search_teacher")
    logger.info(f"search teacher: trained once with the {'given' if settings else 'starting'} settings into {folder}")
    return dataclasses.replace(job, teacher=train_teacher(job.config, data, settings, folder))


def train_teacher(config: Config, data: DataFolder, settings: dict | None, folder: str) -> str:
    """A teacher for the searches of kd and dkd: `config` with `settings` replacing its own, trained on `data` (the
    search split, validation only) into `folder`; returns its checkpoint's path."""
    os.makedirs(folder, exist_ok=True)
    config = dataclasses.replace(config, **(settings or {}), method=TEACHER, output=folder, overwrite=True,
                                 verbose=0, score_test=False, test_every_epoch=False)
    with console.only_warnings("discomkd.training"):
        fit(config, data, folder)
    return checkpoint_path(folder, FUSED)


def _trainable(settings: dict, job: SearchJob):
    trial = ray_tune.get_context().get_trial_id()
    run_trial(settings, job, os.path.join(job.config.output, "trials", trial), ray_tune.report)


class _TrialLines(ray_tune.Callback):
    """One line per finished or stopped trial, numbered in the order the search drew them (trial 1: the starting
    settings), with how many have ended so far."""

    def __init__(self, total: int):
        self.total, self.done = total, 0

    def _name(self, trials, trial) -> str:
        number = next((i for i, each in enumerate(trials) if each is trial), None)  # Tune lists them as created
        if number is None:
            return "trial"
        return f"trial {number + 1}/{self.total}" + (" (the starting settings)" if number == 0 else "")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.done += 1
        error = str(getattr(trial, "error_file", "") or "")
        logger.warning(f"{self._name(trials, trial)} failed [{self.done} of {self.total} ended]"
                       + (f" (its traceback: {error})" if error else ""))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        result = trial.last_result or {}
        shown = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in sorted(trial.config.items()))
        logger.info(f"{self._name(trials, trial)}  valid wF1 {result.get(METRIC, float('nan')):.4f}  "
                    f"epochs {result.get('epoch', 0)}/{trial.config['epochs']}  [{self.done} of {self.total} ended]  "
                    f"{shown}")


@contextlib.contextmanager
def _quiet_ray_tune():
    """Ray Tune's own loggers shown from CRITICAL only (each trial's end or failure is one line of _TrialLines), its
    progress output off (without RAY_AIR_NEW_OUTPUT=0 even verbose 0 prints a box of the experiment's configuration
    and a TensorBoard hint into Ray's temporary folder), and Ctrl-C left to Python. The user's own values of those two
    variables win."""
    # Ray Tune also catches Ctrl-C itself and returns as if the search had ended: left to Python, it interrupts the
    # search as it does everything else (the trials it reached kept; a fair table's --resume continues)
    given = {name: os.environ.get(name) for name in ("RAY_AIR_NEW_OUTPUT", "TUNE_DISABLE_SIGINT_HANDLER")}
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    try:
        with contextlib.ExitStack() as quiet:
            for name in ("ray.tune", "ray.train", "ray.air"):
                quiet.enter_context(console.only_warnings(name, logging.CRITICAL))
            yield
    finally:
        for name, value in given.items():
            if value is None:
                os.environ.pop(name, None)


class SparingASHA(ASHAScheduler):
    """ASHA that never stops the first trial (the starting settings: the paper's unless options change them), so
    that a slow starting learning rate is scored on all its epochs; its results still enter the rungs as ASHA's
    would. `spared`: what ASHA would have done to it, {"would_stop_after", "score_then"} at the first rung that
    would have stopped it (empty when none would)."""

    def __init__(self, **options):
        super().__init__(**options)
        self.first: str | None = None
        self.spared: dict = {}

    def on_trial_add(self, tune_controller, trial):
        if self.first is None:  # the searcher yields points_to_evaluate first
            self.first = trial.trial_id
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        decision = super().on_trial_result(tune_controller, trial, result)
        if trial.trial_id != self.first or decision != TrialScheduler.STOP or \
                result.get("epoch", 0) >= trial.config.get("epochs", 0):
            return decision
        if not self.spared:
            self.spared = {"would_stop_after": int(result["epoch"]), "score_then": float(result[METRIC])}
        return TrialScheduler.CONTINUE


def search(job: SearchJob, data: DataFolder, trials: int, grace_epochs: int, cpus: float, gpus: float,
           spare_first: bool = True) -> dict:
    """Runs the search; returns {"chosen": settings, "trials": [{"settings", METRIC, "epochs_trained",
    "stopped_early"}], "starting_trial": ..., ...} with the chosen trial first among equals in Tune's order.
    `spare_first`: ASHA never stops the first trial (`SparingASHA`); "starting_trial" then says where it would
    have, and which trial plain ASHA would have chosen (its score then against the others' scores)."""
    max_epochs = max(epoch_choices(job.config.epochs))
    scheduler = (SparingASHA if spare_first else ASHAScheduler)(
        time_attr="training_iteration", max_t=max_epochs, grace_period=min(grace_epochs, max_epochs))
    searcher = BasicVariantGenerator(points_to_evaluate=[first_trial(job.config, data, job.modality_index)],
                                     random_state=job.config.seed)
    tuner = ray_tune.Tuner(
        ray_tune.with_resources(ray_tune.with_parameters(_trainable, job=job), {"cpu": cpus, "gpu": gpus}),
        param_space=search_space(job.config, data, job.modality_index),
        tune_config=ray_tune.TuneConfig(metric=METRIC, mode="max", search_alg=searcher, scheduler=scheduler,
                                        num_samples=trials),
        run_config=ray_tune.RunConfig(name="search", storage_path=os.path.abspath(os.path.join(job.config.output,
                                                                                               "ray_tune")),
                                      verbose=0, callbacks=[_TrialLines(trials)]))
    with _quiet_ray_tune():  # a failed trial is one line (above), not Ray's traceback
        grid = tuner.fit()
    records = []
    for result in grid:
        if result.error is not None or "epoch" not in (result.metrics or {}):
            error = "it never reported an epoch" if result.error is None else str(result.error).splitlines()[-1]
            records.append({"settings": result.config, METRIC: None, "error": error})
            continue
        trained = int(result.metrics["epoch"])
        records.append({"settings": result.config, METRIC: result.metrics[METRIC], "epochs_trained": trained,
                        "stopped_early": trained < result.config["epochs"]})
    _mark_stopped_trials(os.path.join(job.config.output, "trials"))
    scored = [r for r in records if r[METRIC] is not None]
    if not scored:
        raise TrainingError(f"every trial failed; the first: {records[0].get('error')} (each trial's log: "
                            f"{os.path.join(job.config.output, 'ray_tune', 'search')})")
    chosen = max(scored, key=lambda r: r[METRIC])  # the first of equals
    found = {"metric": METRIC, "chosen": chosen["settings"], "chosen_" + METRIC: chosen[METRIC], "trials": records}
    if spare_first:
        found["starting_trial"] = starting_trial_note(records, scheduler.spared)
    return found


def starting_trial_note(records: list[dict], spared: dict) -> dict:
    """What sparing the first trial changed: {"spared": whether ASHA would have stopped it, "would_stop_after",
    "score_then", "score" (all its epochs), "chosen_without_sparing": the trial plain ASHA would have chosen (1-based,
    in Tune's order: the starting trial is 1), "chosen": the one chosen}. Approximate: after the epoch ASHA would have
    stopped it, the spared trial's results entered later rungs, which may have changed other trials' fates."""
    def best(scores: list) -> int:  # 1-based, the first of equals, failed trials (None) last
        return max(range(len(scores)), key=lambda k: -1.0 if scores[k] is None else scores[k]) + 1

    scores = [r[METRIC] for r in records]
    plain = [spared["score_then"]] + scores[1:] if spared else scores
    return {"spared": bool(spared), "score": scores[0], **spared, "chosen": best(scores),
            "chosen_without_sparing": best(plain)}


def _mark_stopped_trials(folder: str) -> None:
    """Trials ASHA stopped end mid-run, their results.json still "running": marked "stopped" (by the
    scheduler: their checkpoints are the best epochs they reached, and they keep no state.pt to resume)."""
    for path in glob.glob(os.path.join(glob.escape(folder), "**", RESULTS_FILE), recursive=True):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            with open(path) as handle:
                results = json.load(handle)
            if results.get("status") == "running":
                results["status"] = "stopped"
                results["stopped_by"] = "ASHA (tune.py's scheduler), after epoch " + str(len(results["history"]))
                write_json(path, results)
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(os.path.dirname(path), STATE_FILE))


def default_grace(epochs: int) -> int:
    """The epochs ASHA lets every trial train before comparing: a quarter of the longest trial, so that a
    slow learning rate (the paper's 1e-4) is compared once it has had time to learn."""
    return max(1, epochs // 4)


def tune_and_compare(config: Config, directory: str, first: str, second: str, trials: int, runs: int,
                     grace_epochs: int | None, ray_executor, executor=None, teacher_settings: dict | None = None
                     ) -> dict:
    """The search on seed config.seed, as Ray Tune trials on the cluster `ray_executor` reaches (its CPUs
    and GPUs per task), then the chosen and the starting settings each `runs` times on seeds
    config.seed+1.. (`comparison.compare` with `executor` into OUTPUT/starting and OUTPUT/tuned); writes
    OUTPUT/settings.json (the chosen settings: --settings), tuning.json and tuning.md. `grace_epochs`:
    the epochs ASHA lets every trial train, by default `default_grace`. `config.method`: any of TUNABLE.
    `teacher_settings` (kd, dkd): the teacher's, for the search's teacher and the final runs'. `runs` 0:
    the search alone (settings.json and tuning.json)."""
    check_tuning(config, trials, runs, grace_epochs)
    job, data, split = search_job(config, directory, (first, second))
    check_augmentations(config, data)  # before anything is written
    if teacher_settings:
        check_method_settings(config, teacher_settings, data, "--teacher-settings")
    # the search and its final comparisons one folder, kept whole until complete under --overwrite
    with whole_folder(config.output, config.overwrite, lambda: ray_executor.start(config.output)):
        try:
            return _tune(config, job, data, split, (directory, first, second), trials, runs, grace_epochs,
                         ray_executor, executor, teacher_settings)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (the command turns it into the same)
            raise Interrupted("tuning interrupted (by a signal); the trials it reached are kept in its folder "
                              "(trials/, ray_tune/); --overwrite starts again") from None


def _tune(config: Config, job: SearchJob, data: DataFolder, split: dict | None, folder: tuple[str, str, str],
          trials: int, runs: int, grace_epochs: int | None, ray_executor, executor, teacher_settings: dict | None
          ) -> dict:
    """The search, then the final runs on the search's split; see `tune_and_compare`."""
    if split is not None:
        write_split_files(job.data.split_folder, split)
    started = time.time()
    grace_epochs = default_grace(config.epochs) if grace_epochs is None else grace_epochs
    logger.info(f"search: {trials} trial(s) of {config.method} on seed {config.seed}, validation only "
        f"({len(data.modalities[0].splits['valid'])} rows); ASHA grace {grace_epochs} epoch(s)")
    job = train_search_teacher(job, validation_only(data), teacher_settings)
    found = search(job, validation_only(data), trials, grace_epochs, ray_executor.cpus, ray_executor.gpus)
    found.update(method=config.method, grace_epochs=grace_epochs, searched=list(searched(config.method)))
    if teacher_settings:
        found["teacher_settings"] = teacher_settings
    found["search_seconds"] = time.time() - started
    found["split"] = job.data.split_folder or "the data folder's own split files"
    write_json(os.path.join(config.output, "settings.json"), found["chosen"])
    logger.info(f"chosen (valid wF1 {found['chosen_' + METRIC]:.4f}): {found['chosen']}")
    if runs == 0:  # the search alone: the comparison (compare.py --settings-for) is the user's
        found["total_seconds"] = time.time() - started
        write_json(os.path.join(config.output, "tuning.json"), found)
        return found
    # the final runs train and test on the search's split: their test rows are rows no trial read
    tuned = f"tuned ({trials} trials)"
    tables = {label: _final_runs(config, *folder, runs, settings, label, executor, job.data.split_folder, source,
                                 teacher_settings)
              for label, settings, source in (("starting", starting_point(config), None),
                                              ("tuned", found["chosen"], tuned))}
    return _report(config, folder[1:], trials, runs, found, tables, started)


def search_job(config: Config, directory: str, prefixes: tuple[str, str]
                ) -> tuple[SearchJob, DataFolder, dict | None]:
    """What the trials read, the data as they see it (test rows included) and the split drawn for the
    search when the folder has no split files (None: it has); nothing written. Raises `DataError`."""
    output = os.path.abspath(config.output)  # trials run in Ray Tune's own working folders: absolute paths
    split, split_folder = None, None
    if not has_split_files(directory, prefixes):  # a stratified split drawn for the search alone
        (split,), split_folder = draw_splits(directory, [config.seed]), os.path.join(output, "search_split")
    source = DataSource(directory, prefixes, (config.encoder_first, config.encoder_second), split_folder)
    data = read_data(source, split)
    source = source.absolute().checked(data)
    return SearchJob(dataclasses.replace(config, output=output), source), data, split


def _final_runs(config: Config, directory: str, first: str, second: str, runs: int, settings: dict, label: str,
                executor, split_folder: str | None, source: str | None, teacher_settings: dict | None) -> dict:
    """`settings` trained `runs` times on seeds config.seed+1.. by the comparison, into OUTPUT/<label>, on
    the split files of `split_folder` (the split drawn for the search), or the data folder's own."""
    run_config = dataclasses.replace(config, seed=config.seed + 1, output=os.path.join(config.output, label),
                                     overwrite=True)
    logger.info(f"{label} settings: {runs} run(s) on seeds {config.seed + 1}..{config.seed + runs}")
    # the method's own settings; a kd or dkd teacher those it had in the search
    method_settings = {config.method: settings, **({TEACHER: teacher_settings} if teacher_settings else {})}
    return compare(run_config, directory, first, second, runs, config.method, verbose=False, executor=executor,
                   shared_split=split_folder, method_settings=method_settings,
                   settings_from=None if source is None else {config.method: source})


def _report(config: Config, prefixes: tuple[str, str], trials: int, runs: int, found: dict, tables: dict,
            started: float) -> dict:
    """tuning.md and tuning.json: the starting and the tuned settings side by side; returns tuning.json's contents."""
    method = config.method
    paper = starting_point(config) == starting_point(Config(epochs=config.epochs, method=method))
    names = {"starting": "paper's settings" if paper else "starting settings", "tuned": "tuned on validation"}
    rows = {}
    for label, table in tables.items():  # the row says which DisCoM-KD terms its settings switch off
        trained = dataclasses.replace(Config(**table["config"]), **table["method_settings"].get(method, {}))
        switched_off = switched_off_note(method, trained)
        rows[f"{method} ({names[label]}{'; ' + switched_off if switched_off else ''})"] = table["aggregated"][method]
    seeds = tables["tuned"]["seeds"]
    notes = [f"Tuned: {trials} Ray Tune trial(s) (random search, ASHA) selected on the mean over both modalities of "
             f"each classifier's best validation weighted F1 (seed {config.seed}); test rows never read in the "
             "search. Chosen settings: settings.json (--settings)."]
    table = format_table(rows, prefixes, runs, seeds, tables["tuned"]["splits"], True, notes)
    write_text(os.path.join(config.output, "tuning.md"), table)
    found.update(runs={label: t["aggregated"][method] for label, t in tables.items()}, seeds=seeds,
                 table=table, total_seconds=time.time() - started)
    write_json(os.path.join(config.output, "tuning.json"), found)
    logger.info("")
    logger.info(format_table(rows, prefixes, runs, seeds, tables["tuned"]["splits"], False, notes))
    return found
