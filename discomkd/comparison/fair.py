"""The fair table in one command (`compare.py DIR A B --tune TRIALS`): every compared method searched on the same
budget, then compared on the split the searches used.

    the teacher's search -> one teacher trained with its choice -> the searches of kd's and dkd's students
    the searches of mono_<PREFIX>, dml, discomkd, ...            (Ray Tune trials, validation rows only)
    -> compare(): RUNS runs on seeds SEED+1.., each model with its own search's choice (any executor, test rows)

The plan (`plan_searches`): the teacher first when a compared method reads one (kd, dkd) or the teacher is compared;
then one search per per-modality model (mono, kd's and dkd's students: `mono_<PREFIX>`), scored on that modality's
validation rows alone, so that each modality's classifier gets its own choice; one search per joint method (dml,
discomkd and its variants), scored on the mean over both classifiers. The budget: TRIALS trials per search, so every
classifier is chosen among TRIALS settings (a per-modality method's two searches train as many models as TRIALS
two-model trials would; a joint method's trial trains both classifiers at once). The students distil from one
teacher trained with the teacher's chosen settings. Each search spares its first trial (the paper's settings) from
ASHA (`tuning.SparingASHA`) and records what plain ASHA would have chosen.

Resumable as a whole: OUTPUT/fair.json records the plan and each finished search; `--resume` with the same command
keeps those, starts an interrupted search again from its first trial, and continues the comparison
(`compare(resume=True)`: finished models kept, state.pt continued). Outputs: OUTPUT/fair.md (the table and the
searches), fair.json, searches/<model>/ (settings.json, tuning.json, trials/), comparison/ (compare's outputs),
search_split/ (when the data folder has no split files).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass

from discomkd.comparison.inputs import RESULTS_FILE as COMPARISON_FILE
from discomkd.comparison.inputs import TABLE_FILE, parse_methods, what_differs
from discomkd.comparison.jobs import TEACHER
from discomkd.comparison.runner import compare
from discomkd.comparison.table import render
from discomkd.comparison.tuning import (
    METRIC,
    SearchJob,
    default_grace,
    search,
    search_job,
    train_teacher,
    validation_only,
)
from discomkd.comparison.tuning_space import check_tuning, model_key, searched
from discomkd.data.folder import DataFolder, has_split_files, write_split_files
from discomkd.models.methods import FUSED, METHODS
from discomkd.runs.outputs import checkpoint_path, run_status
from discomkd.runs.ownership import whole_folder
from discomkd.training.config import Config
from discomkd.training.identity import computed_settings
from discomkd.training.setup import check_augmentations
from discomkd.utils.errors import DataError, Interrupted, OptionError, TrainingError
from discomkd.utils.files import write_json, write_text

RECORD_FILE, FAIR_TABLE = "fair.json", "fair.md"
SEARCHES, CHOSEN_TEACHER, COMPARISON = "searches", "chosen_teacher", "comparison"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Search:
    """One search of the plan: a method's model (`modality`: one modality's model of a per-modality method)."""

    method: str
    modality: str | None = None

    @property
    def name(self) -> str:
        """Its folder under OUTPUT/searches and its key in the comparison's settings (`tuning_space.model_key`)."""
        return model_key(self.method, self.modality)


def plan_searches(methods: tuple[str, ...], prefixes: tuple[str, str]) -> list[Search]:
    """The searches, in the order they run: the teacher when a method reads one or it is compared, then each neural
    method's, one per modality for per-modality methods."""
    neural = [m for m in methods if m in METHODS]
    teacher = TEACHER in neural or any(METHODS[m].needs_teacher for m in neural)
    plan = [Search(TEACHER)] if teacher else []
    for method in (m for m in neural if m != TEACHER):
        plan += [Search(method, p) for p in prefixes] if METHODS[method].per_modality else [Search(method)]
    return plan


def settings_from(methods: tuple[str, ...], trials: int) -> dict[str, str]:
    """The comparison's "settings" column: where each neural method's settings came from."""
    said = {}
    for method in (m for m in methods if m in METHODS):
        said[method] = (f"tuned per modality ({trials} trials each)" if METHODS[method].per_modality
                        else f"tuned ({trials} trials)")
        if METHODS[method].needs_teacher:
            said[method] += ", from the tuned teacher"
    return said


def what_it_computes(config: Config, directory: str, prefixes: tuple[str, str], methods: tuple[str, ...],
                     trials: int, runs: int, grace_epochs: int, spare_first: bool) -> dict:
    """What decides the searches' and the comparison's results: a resumed fair table must match it."""
    return json.loads(json.dumps({
        "directory": os.path.abspath(directory), "prefixes": list(prefixes), "methods": list(methods),
        "trials": trials, "runs": runs, "grace_epochs": grace_epochs, "spare_first": spare_first,
        "config": computed_settings(dataclasses.replace(config, output=None, overwrite=False))}))


def tune_all(config: Config, directory: str, prefixes: tuple[str, str], methods, trials: int, runs: int,
             grace_epochs: int | None, ray_executor, executor, resume: bool = False, verbose: bool = False,
             spare_first: bool = True) -> dict:
    """The fair table: `plan_searches` searched on seed config.seed (Ray Tune on `ray_executor`'s cluster), then
    `compare` of every method with its chosen settings, `runs` runs on seeds config.seed+1.. by `executor`, on the
    searches' split (`runs` 0: the searches alone). Output: config.output (default DIR/tuned_comparison_<A>_<B>).
    `resume`: the fair table in the output folder continued. Raises `OptionError` or `DataError` before writing
    anything on bad input; returns fair.json's contents."""
    methods = parse_methods(methods if isinstance(methods, str) else ",".join(methods))
    output = config.output or os.path.join(directory, f"tuned_comparison_{prefixes[0]}_{prefixes[1]}")
    config = dataclasses.replace(config, output=output)
    grace_epochs = default_grace(config.epochs) if grace_epochs is None else grace_epochs
    plan = plan_searches(methods, prefixes)
    if not plan:
        raise OptionError(f"--tune: no neural method among --methods {','.join(methods)}; svm and logreg choose C on "
                          "validation by themselves")
    for each in plan:  # the same checks as tune.py's, before Ray starts
        check_tuning(dataclasses.replace(config, method=each.method), trials, runs, grace_epochs)
    base, data, split = search_job(config, directory, prefixes)
    check_augmentations(config, data)
    identity = what_it_computes(config, directory, prefixes, methods, trials, runs, grace_epochs, spare_first)
    record = _recorded(output, identity) if resume else {"status": "running", "plan": identity, "searches": {}}
    with whole_folder(output, config.overwrite, lambda: ray_executor.start(output), resume):
        try:
            return _tune_all(config, base, data, split, plan, methods, trials, runs, grace_epochs, record,
                             ray_executor, executor, resume, verbose, spare_first)
        except (KeyboardInterrupt, Interrupted, TrainingError) as error:  # Ctrl-C or SIGTERM, in a search or after
            failed = isinstance(error, TrainingError)
            record["status"] = "failed" if failed else "interrupted"
            write_json(os.path.join(output, RECORD_FILE), record)
            detail = "by a signal" if isinstance(error, KeyboardInterrupt) else str(error)
            raise (TrainingError if failed else Interrupted)(
                f"the fair table {'failed' if failed else 'was interrupted'} ({detail}); the searches that finished "
                f"are kept in "
                f"{os.path.join(output, RECORD_FILE)}: the same command with --resume continues") from None


def _recorded(output: str, identity: dict) -> dict:
    """--resume: fair.json of the output folder, which must record this very fair table."""
    path = os.path.join(output, RECORD_FILE)
    try:
        with open(path) as file:
            record = json.load(file)
        before = record["plan"]
    except FileNotFoundError:
        raise OptionError(f"--resume: {path} not found; a new fair table starts without --resume") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{path}: not a fair table's record ({error})") from None
    differ = what_differs(identity, before)
    if differ:
        raise OptionError(f"--resume: {path} is a fair table with other {', '.join(differ)}; give the command line it "
                          "started with, or --overwrite to start again")
    record["status"] = "running"
    return record


def _tune_all(config: Config, base: SearchJob, data: DataFolder, split: dict | None, plan: list[Search],
              methods: tuple[str, ...], trials: int, runs: int, grace_epochs: int, record: dict, ray_executor,
              executor, resume: bool, verbose: bool, spare_first: bool) -> dict:
    output, started = config.output, time.time()
    if split is not None and not has_split_files(base.data.split_folder, base.data.prefixes):
        write_split_files(base.data.split_folder, split)
    searched_data = validation_only(data)
    logger.info(f"fair table: {len(plan)} search(es) of {trials} trial(s) each on seed {config.seed} "
                f"({', '.join(s.name for s in plan)}), validation only "
                f"({len(data.modalities[0].splits['valid'])} rows); ASHA grace {grace_epochs} epoch(s), the starting "
                f"trial {'spared' if spare_first else 'not spared'}; then {runs} run(s) of the chosen settings")
    teacher = None  # the chosen teacher's checkpoint, which the students' trials read
    for k, each in enumerate(plan):
        folder = os.path.join(output, SEARCHES, each.name)
        if each.name in record["searches"]:
            logger.info(f"search {k + 1}/{len(plan)} {each.name}: kept, as {RECORD_FILE} records it")
        else:
            shutil.rmtree(folder, ignore_errors=True)  # an interrupted search starts again
            os.makedirs(folder)
            job = dataclasses.replace(base, config=dataclasses.replace(base.config, method=each.method, output=folder),
                                      teacher=teacher, modality=each.modality)
            logger.info(f"search {k + 1}/{len(plan)} {each.name}: {trials} trial(s)"
                        + (f", scored on {each.modality}'s validation rows" if each.modality else ""))
            found = search(job, searched_data, trials, grace_epochs, ray_executor.cpus, ray_executor.gpus,
                           spare_first)
            found.update(method=each.method, modality=each.modality, grace_epochs=grace_epochs,
                         searched=list(searched(each.method, job.modality_index)))
            write_json(os.path.join(folder, "settings.json"), found["chosen"])
            write_json(os.path.join(folder, "tuning.json"), found)
            record["searches"][each.name] = {key: found[key] for key in (
                "method", "modality", "chosen", "chosen_" + METRIC, "starting_trial", "searched") if key in found}
            record["searches"][each.name].update(trials=len(found["trials"]), starting=found["trials"][0]["settings"],
                                                 epochs_trained=[t.get("epochs_trained") for t in found["trials"]])
            write_json(os.path.join(output, RECORD_FILE), record)
            logger.info(f"  {each.name}: chosen valid wF1 {found['chosen_' + METRIC]:.4f}  {found['chosen']}")
        if each.method == TEACHER and any(METHODS[s.method].needs_teacher for s in plan):
            teacher = _chosen_teacher(base, searched_data, record["searches"][TEACHER]["chosen"], output)
    chosen = {name: found["chosen"] for name, found in record["searches"].items()}
    if runs:
        comparison = _compare(config, base, methods, runs, chosen, trials, executor, resume, verbose)
        record["comparison"] = {key: comparison[key] for key in ("seeds", "aggregated", "paired", "row_labels",
                                                                  "settings_from", "method_settings")}
    record.update(status="finished", seconds=record.get("seconds", 0.0) + time.time() - started)
    table = fair_table(record, os.path.join(output, COMPARISON, TABLE_FILE) if runs else None)
    write_text(os.path.join(output, FAIR_TABLE), table)
    write_json(os.path.join(output, RECORD_FILE), record)
    logger.info("")
    logger.info(searches_table(record, markdown=False))
    logger.info(f"(the fair table: {os.path.join(output, FAIR_TABLE)}; the comparison's outputs in "
                f"{os.path.join(output, COMPARISON)}; each search's in {os.path.join(output, SEARCHES)})")
    return record


def _chosen_teacher(base: SearchJob, data: DataFolder, settings: dict, output: str) -> str:
    """The teacher the students' searches distil from: trained once with the teacher's chosen settings on the search
    split (kept when --resume finds it finished); its checkpoint's path."""
    folder = os.path.join(output, SEARCHES, TEACHER, CHOSEN_TEACHER)
    if run_status(folder) == "finished" and os.path.exists(checkpoint_path(folder, FUSED)):
        return checkpoint_path(folder, FUSED)
    logger.info(f"the chosen teacher: trained once with the teacher's chosen settings into {folder}")
    return train_teacher(base.config, data, settings, folder)


def _compare(config: Config, base: SearchJob, methods: tuple[str, ...], runs: int, chosen: dict[str, dict],
             trials: int, executor, resume: bool, verbose: bool) -> dict:
    """The comparison of the chosen settings, on seeds config.seed+1.. and the searches' split."""
    folder = os.path.join(config.output, COMPARISON)
    run_config = dataclasses.replace(config, seed=config.seed + 1, output=folder, overwrite=False)
    logger.info(f"comparison: {runs} run(s) on seeds {config.seed + 1}..{config.seed + runs}, each method with its "
                "chosen settings")
    return compare(run_config, base.data.directory, *base.data.prefixes, runs, methods, verbose=verbose,
                   executor=executor, shared_split=base.data.split_folder, method_settings=chosen,
                   settings_from=settings_from(methods, trials),
                   resume=resume and os.path.exists(os.path.join(folder, COMPARISON_FILE)))


def searches_table(record: dict, markdown: bool = True) -> str:
    """One row per search: its trials, the starting trial's score over all its epochs and where plain ASHA would
    have stopped it, the chosen trial's score and settings that differ from the starting ones."""
    header = ["search", "trials", "starting trial: valid wF1", "plain ASHA would have", "chosen: valid wF1",
              "chosen settings (those differing from the starting trial's)"]
    rows = []
    for name, found in record["searches"].items():
        start = found.get("starting_trial", {})
        spared = (f"stopped it after epoch {start['would_stop_after']} ({start['score_then']:.4f}); chosen trial "
                  f"{start['chosen_without_sparing']}" if start.get("spared") else "let it finish")
        first = found["starting"]
        changed = {k: v for k, v in found["chosen"].items() if first.get(k) != v}
        shown = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(changed.items()))
        chosen_trial = start.get("chosen")
        rows.append([name, str(found["trials"]), "-" if start.get("score") is None else f"{start['score']:.4f}", spared,
                     f"{found['chosen_' + METRIC]:.4f}" + (f" (trial {chosen_trial})" if chosen_trial else ""),
                     shown or "the starting settings"])
    return render(header, rows, ["---"] + [":---:"] * 4 + ["---"], [], markdown).rstrip() + "\n"


def fair_table(record: dict, comparison_table: str | None) -> str:
    """fair.md: the comparison's table (when it ran), then the searches'."""
    plan = record["plan"]
    parts = [f"# The fair table: {', '.join(plan['methods'])} on {plan['directory']} "
             f"({plan['prefixes'][0]} + {plan['prefixes'][1]})", ""]
    if comparison_table is not None:
        with open(comparison_table) as file:
            parts += [file.read().rstrip(), ""]
    parts += [f"## The searches ({plan['trials']} trials each, seed {plan['config']['seed']}, ASHA grace "
              f"{plan['grace_epochs']} epochs, validation rows only)", "", searches_table(record).rstrip(), "",
              "Trials are numbered as the search drew them (trial 1: the starting settings, the paper's unless the "
              "command line changed them). A per-modality model's search is scored on its own modality's validation "
              "rows; a joint method's on the mean over both classifiers. \"plain ASHA would have\": the starting "
              "trial is spared from early stopping; this column says where ASHA would have stopped it and which "
              "trial it would then have chosen (approximate: the spared trial's later results entered later rungs).",
              ""]
    return "\n".join(parts)
