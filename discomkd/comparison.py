"""The paper's comparison on one data folder: DisCoM-KD against its baselines, over repeated runs.

    python compare.py DIR FIRST SECOND [--runs K] [--methods mono,teacher,...] [--resplit] [options]

Every neural method is a spec in `methods.py` trained by the one engine (`functions.fit`), so all
use the same encoders, Adam, augmentation, epochs, compiled step and model selection (each
classifier's best validation weighted F1, test metrics at that epoch); each writes its own run
folder (results.json, checkpoints, state.pt while unfinished). svm and logreg are scikit-learn
pipelines on the flattened rows, C chosen on validation.

Run k uses seed S+k (S = --seed, 0 by default). When DIR holds no split files, or with
--resplit, each run draws its own stratified 70/10/20 split, saved in OUTPUT/run_<seed>/split;
DIR is never written. Outputs: OUTPUT/comparison.json (per-run results and aggregates),
OUTPUT/comparison.md (the table), OUTPUT/run_<seed>/<method>[_<PREFIX>]/ for each neural model.
--ablation adds the loss ablation's methods; --executor ray trains every model as a Ray task
(ray_executor.py, imported only then), with the same results.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.dummy import DummyClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from discomkd.config import MAX_SEED, Config, check_config, resolve_device, resolve_precision
from discomkd.data import DataFolder, load_data_folder, read_labels
from discomkd.engine import build_sources, classification_metrics
from discomkd.errors import DataError, Interrupted, TrainingError
from discomkd.methods import FUSED, METHODS
from discomkd.probes import INVARIANCE_MEANING
from discomkd.run_files import (
    atomic_write,
    checkpoint_path,
    prepare_output,
    save_npy,
    write_json,
    write_text,
)
from discomkd.splits import SPLITS, draw_split, split_file_name
from discomkd.training import fit, format_duration

RESULTS_FILE, TABLE_FILE = "comparison.json", "comparison.md"
SPLIT_FOLDER = "split"
# Far beyond any comparison (the paper: 5 runs), and it bounds the per-run splits drawn and checked
# before anything is written.
MAX_RUNS = 1000
STD_DDOF = 1  # sample standard deviation over runs: with few runs the population formula understates the spread

# Regularisation grids, a factor 10 apart; the C with the best validation weighted F1 is kept.
LOGREG_MAX_ITER = 5000  # lbfgs on standardised features converges well within this on typical data
CLASSICAL = {
    "svm": (lambda c: SVC(C=c, kernel="rbf"), (0.1, 1.0, 10.0, 100.0)),
    "logreg": (lambda c: LogisticRegression(C=c, max_iter=LOGREG_MAX_ITER), (0.01, 0.1, 1.0, 10.0, 100.0)),
}
ALL_METHODS = tuple(METHODS) + tuple(CLASSICAL)
DEFAULT_METHODS = tuple(m for m in METHODS if METHODS[m].compared_by_default) + tuple(CLASSICAL)
TEACHER = "teacher"  # the run every distillation method reads, trained once per run


def classical_pipeline(method: str, c: float) -> Pipeline:
    """StandardScaler then the method's model with regularisation C (an unfitted pipeline)."""
    return Pipeline([("scale", StandardScaler()), ("model", CLASSICAL[method][0](c))])


@dataclass
class RunContext:
    """What every method of one run reads: the checked data, the settings, where it writes."""

    config: Config  # seed = this run's seed
    folder: str  # the run's output folder
    data: DataFolder
    verbose: bool
    log: object

    @property
    def prefixes(self) -> list[str]:
        return [m.prefix for m in self.data.modalities]


# ----------------------------------------------------------------------------- neural methods
def _silent(line: str) -> None:
    """A log that drops the engine's own lines (the comparison prints one line per model)."""


def neural_config(context: RunContext, method: str, modality: str | None = None, teacher: str | None = None
                  ) -> Config:
    """The settings of one model of `method` (for `modality` when the method has one per modality), its
    output the run folder's <method>[_<modality>]."""
    name = method if modality is None else f"{method}_{modality}"
    return dataclasses.replace(context.config, method=method, modality=modality, teacher=teacher,
                               output=os.path.join(context.folder, name), overwrite=True,
                               verbose=int(context.verbose))


def neural_part(results: dict, seconds: float) -> dict:
    """What the comparison keeps of one trained model's results: {"seconds", "columns": {column:
    {"best_epoch", "valid", "test", "train_rows"}}, "output", "compiled", "invariance_probe"}."""
    rows = results["train_rows"]
    columns = {c: {"best_epoch": r["best_epoch"], "valid": r["valid"], "test": r["test"],
                   "train_rows": rows.get(c, max(rows.values()))} for c, r in results["final"].items()}
    return {"seconds": seconds, "columns": columns, "output": results["output"],
            "compiled": results["environment"]["compiled"], "invariance_probe": results.get("invariance_probe")}


def train_neural(context: RunContext, method: str, modality: str | None = None, teacher: str | None = None,
                 on_epoch=None) -> dict:
    """One model of `method` trained by the engine into its own folder (`neural_config`); returns its
    `neural_part`. `on_epoch` goes to `functions.fit`."""
    config = neural_config(context, method, modality, teacher)
    started = time.time()
    results = fit(config, context.data, prepare_output(config.output, True),
                  log=context.log if context.verbose else _silent, on_epoch=on_epoch)
    return neural_part(results, time.time() - started)


def paired_rows(data: DataFolder) -> np.ndarray:
    return np.intersect1d(data.modalities[0].splits["train"], data.modalities[1].splits["train"])


def neural_plan(context: RunContext, methods: tuple[str, ...]) -> tuple[list[tuple[str, list]], dict[str, dict]]:
    """The neural models one run trains: [(method, [modality prefix or None, ...])] in order, and the
    entries of the methods skipped (with a note) because the training sets share fewer than 2 rows.
    The teacher is listed once when any method reads it: kd and dkd then read its checkpoint."""
    plan, skipped = [], {}
    paired = len(paired_rows(context.data))
    for method in [m for m in methods if m in METHODS]:
        spec = METHODS[method]
        if (spec.paired or spec.needs_teacher) and paired < 2:
            note = (f"{method} needs paired data (rows present in both modalities' training sets); the training "
                    f"sets share {paired} row(s): skipped")
            context.log(f"note: {note}")
            skipped[method] = {"status": "skipped", "note": note}
            continue
        if (spec.needs_teacher or method == TEACHER) and TEACHER not in [m for m, _ in plan]:
            plan.append((TEACHER, [None]))
        if method != TEACHER:
            plan.append((method, context.prefixes if spec.per_modality else [None]))
    return plan, skipped


def teacher_checkpoint(teacher: dict) -> str:
    """The checkpoint kd and dkd read, of the teacher's `neural_part`."""
    return checkpoint_path(teacher["output"], FUSED)


def neural_entry(method: str, parts: list[dict], teacher: dict | None) -> dict:
    """A trained method's entry in a run's results, from its parts (one per model) and the teacher's part."""
    spec = METHODS[method]
    return {"status": "done", "columns": {c: r for part in parts for c, r in part["columns"].items()},
            "seconds": sum(p["seconds"] for p in parts) + (teacher["seconds"] if spec.needs_teacher else 0.0),
            "part_seconds": [p["seconds"] for p in parts], "compiled": all(p["compiled"] for p in parts),
            "outputs": [p["output"] for p in parts], "invariance_probe": parts[0]["invariance_probe"]}


def run_neural_methods(context: RunContext, methods: tuple[str, ...], announce) -> dict[str, dict]:
    """Every requested neural method of one run, one model after the other (`neural_plan`)."""
    plan, entries = neural_plan(context, methods)
    teacher = None  # the teacher's part, once trained
    for method, targets in plan:
        spec = METHODS[method]
        checkpoint = teacher_checkpoint(teacher) if spec.needs_teacher else None
        parts = [train_neural(context, method, target, checkpoint) for target in targets]
        for part in parts:
            for column, result in part["columns"].items():
                announce(method, column, result, part["seconds"])
        teacher = parts[0] if method == TEACHER else teacher
        if method in methods:
            entries[method] = neural_entry(method, parts, teacher)
    return entries


# ----------------------------------------------------------------------------- classical methods
def fit_classical(data: DataFolder, modality: int, method: str) -> dict:
    """`method` (svm or logreg) on the flattened rows of one modality, C chosen on validation weighted F1.

    A modality whose training rows hold a single class gets a constant prediction (scikit-learn's
    models need two classes), said in the result's "note".

    Returns:
        {"C", "valid": metrics, "test": metrics (of the chosen C), "grid": [{"C", "valid", "converged"}], "seconds"}
    """
    started = time.time()
    spec = data.modalities[modality]
    features = {split: np.asarray(spec.array[rows], dtype=np.float64).reshape(len(rows), -1)
                for split, rows in spec.splits.items()}
    labels = {split: data.labels[rows] for split, rows in spec.splits.items()}
    if len(np.unique(labels["train"])) < 2:
        model = DummyClassifier(strategy="most_frequent").fit(features["train"], labels["train"])
        valid = classification_metrics(labels["valid"], model.predict(features["valid"]))
        return {"C": None, "valid": valid, "test": classification_metrics(labels["test"], model.predict(features["test"])),
                "train_rows": int(len(labels["train"])), "grid": [], "seconds": time.time() - started,
                "note": f"{spec.prefix}'s training rows hold a single class: constant prediction"}
    grid, best_c, best_model, best_valid = [], None, None, {"weighted_f1": -1.0}
    for c in CLASSICAL[method][1]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model = classical_pipeline(method, c).fit(features["train"], labels["train"])
        valid = classification_metrics(labels["valid"], model.predict(features["valid"]))
        grid.append({"C": c, "valid": valid,
                     "converged": not any(issubclass(w.category, ConvergenceWarning) for w in caught)})
        if valid["weighted_f1"] > best_valid["weighted_f1"]:
            best_c, best_model, best_valid = c, model, valid
    test = classification_metrics(labels["test"], best_model.predict(features["test"]))
    return {"C": best_c, "valid": best_valid, "test": test, "train_rows": int(len(labels["train"])), "grid": grid,
            "seconds": time.time() - started}


def classical_columns(data: DataFolder, method: str) -> dict[str, dict]:
    """`fit_classical` of `method` on each modality: {prefix: result}."""
    return {m.prefix: fit_classical(data, position, method) for position, m in enumerate(data.modalities)}


def classical_entry(columns: dict[str, dict]) -> dict:
    return {"status": "done", "seconds": sum(c["seconds"] for c in columns.values()), "columns": columns}


def run_methods(context: RunContext, methods: tuple[str, ...], announce) -> dict[str, dict]:
    """Every requested method on one run: the neural ones through the engine, then the classical ones.

    Returns:
        {method: {"status": "done" | "skipped", "seconds", "columns": {prefix or "fused": result}, "note"?}},
        in the order of `methods`.
    """
    entries = run_neural_methods(context, methods, announce)
    for method in CLASSICAL:
        if method in methods:
            columns = classical_columns(context.data, method)
            for prefix, result in columns.items():
                announce(method, prefix, result, result["seconds"])
            entries[method] = classical_entry(columns)
    return {method: entries[method] for method in methods}


def announcer(log, label: str = ""):
    """`announce(method, column, result, seconds)`: one line per trained model's column, `label` first."""
    def announce(method, column, result, seconds):
        choice = f"C {result['C']:g}" if result.get("C") is not None else (
            f"best epoch {result['best_epoch']}" if "best_epoch" in result else "constant")
        log(f"  {label}{method:<15} {column:<10} {choice:<15} valid wF1 {result['valid']['weighted_f1']:.4f}  "
            f"test wF1 {result['test']['weighted_f1']:.4f}  acc {result['test']['accuracy']:.4f}"
            f"  {seconds:.1f}s")
    return announce


def run_locally(contexts, methods: tuple[str, ...], log):
    """The local executor: each run's methods one after the other, in this process. Yields
    (context, entries) per run as it finishes; `contexts` is consumed one run at a time."""
    for context in contexts:
        yield context, run_methods(context, methods, announcer(log))


# ----------------------------------------------------------------------------- splits
def has_split_files(directory: str, prefixes) -> bool:
    names = [split_file_name(split) for split in SPLITS] + [split_file_name("train", p) for p in prefixes]
    return any(os.path.lexists(os.path.join(directory, name)) for name in names)


def save_splits(folder: str, splits: dict[str, np.ndarray]) -> None:
    """Writes a run's drawn split as split files, for the record and for resuming its runs."""
    os.makedirs(folder, exist_ok=True)
    for split, rows in splits.items():
        atomic_write(os.path.join(folder, split_file_name(split)),
                     lambda temporary, values=np.asarray(rows, dtype=np.int64): save_npy(temporary, values))


def split_name(output: str, seed: int) -> str:
    """Where run `seed`'s drawn split is saved; also how errors about it name it."""
    return os.path.join(output, f"run_{seed}", SPLIT_FOLDER)


def load_run_data(config: Config, directory: str, prefixes, output: str, seed: int,
                  splits: dict[str, np.ndarray] | None) -> DataFolder:
    """The data folder as run `seed` sees it: with its own drawn `splits`, or the folder's split files."""
    encoders = (config.encoder_first, config.encoder_second)
    if splits is None:
        return load_data_folder(directory, *prefixes, encoders)
    return load_data_folder(directory, *prefixes, encoders, splits=splits, splits_name=split_name(output, seed))


# ----------------------------------------------------------------------------- aggregation and table
def _summary(values: list[float]) -> dict:
    return {"values": values, "mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=STD_DDOF)) if len(values) > STD_DDOF else None}


def aggregate(runs: list[dict], methods) -> dict[str, dict]:
    """Per method and column: test weighted F1 and accuracy over the runs (values, mean, std with
    ddof=STD_DDOF) and the training seconds summed over runs."""
    table = {}
    for method in methods:
        entries = [r["methods"][method] for r in runs if method in r["methods"]]
        done = [e for e in entries if e["status"] == "done"]
        if not done:
            table[method] = {"status": "skipped", "note": entries[0]["note"] if entries else ""}
            continue
        table[method] = {
            "status": "done", "runs": len(done), "seconds": float(sum(e["seconds"] for e in done)),
            "includes_teacher_seconds": method in METHODS and METHODS[method].needs_teacher,
            "columns": {column: {metric: _summary([e["columns"][column]["test"][metric] for e in done])
                                 for metric in ("weighted_f1", "accuracy")} for column in done[0]["columns"]}}
        probes = [e["invariance_probe"]["modality_accuracy"] for e in done if e.get("invariance_probe")]
        if probes and None not in probes:
            table[method]["invariance_probe"] = _summary(probes)
    return table


def _cell(summary: dict, plus_minus: str) -> str:
    std = "" if summary["std"] is None else f" {plus_minus} {summary['std']:.3f}"
    return f"{summary['mean']:.3f}{std}"


def format_table(aggregated: dict, prefixes, runs: int, seeds, split_note: str, markdown: bool,
                 extra_notes=()) -> str:
    """The comparison table: one row per method, one column per modality (test wF1 / accuracy, mean and
    std over runs), the training time; the best mean test wF1 of each column marked (bold, or `*`).
    `extra_notes` are appended to the footnotes."""
    plus_minus = "±" if markdown else "+-"
    best = {}
    for prefix in prefixes:
        means = [a["columns"][prefix]["weighted_f1"]["mean"] for a in aggregated.values()
                 if a["status"] == "done" and prefix in a["columns"]]
        best[prefix] = max(means) if means else None
    probed = any("invariance_probe" in a for a in aggregated.values())
    header = (["method"] + [f"{p} test wF1 / acc" for p in prefixes] + ["invariant modality probe [i]"] * probed
              + ["training time"])
    rows, notes = [], []
    for method, a in aggregated.items():
        if a["status"] != "done":
            rows.append([method] + ["skipped (needs paired rows)"] * len(prefixes) + ["-"] * probed + ["-"])
            continue
        cells = []
        for prefix in prefixes:
            column = a["columns"].get(prefix) or a["columns"][FUSED]
            text = f"{_cell(column['weighted_f1'], plus_minus)} / {_cell(column['accuracy'], plus_minus)}"
            if prefix not in a["columns"]:
                text += " [f]"
            elif column["weighted_f1"]["mean"] == best[prefix]:
                text = f"**{text}**" if markdown else f"{text} *"
            cells.append(text)
        if probed:
            cells.append(_cell(a["invariance_probe"], plus_minus) if "invariance_probe" in a else "-")
        rows.append([method] + cells + [format_duration(a["seconds"]) + (" [t]" if a["includes_teacher_seconds"] else "")])
    spread = (f"mean {plus_minus} sample standard deviation (ddof=1) over {runs} runs" if runs > STD_DDOF
              else "a single run (no standard deviation)")
    notes.append(f"Test weighted F1 / accuracy at each model's best validation epoch (best validation C for svm "
                 f"and logreg): {spread}, seeds {', '.join(map(str, seeds))}. "
                 f"Best mean test wF1 per column {'in bold' if markdown else 'marked *'}.")
    notes.append(f"Splits: {split_note}.")
    if any(a["status"] == "done" and FUSED in a["columns"] for a in aggregated.values()):
        notes.append("[f] The teacher reads both modalities at test time: one fused result, shown in every column; "
                     "a reference, not a candidate for best.")
    if any(a["status"] == "done" and a["includes_teacher_seconds"] for a in aggregated.values()):
        notes.append("[t] Includes the teacher's training time (one teacher per run serves both kd and dkd).")
    if probed:
        notes.append(f"[i] Validation rows, each modality's best epoch; {INVARIANCE_MEANING}.")
    notes.append("Training time: wall time summed over runs, per-epoch evaluation included.")
    notes += list(extra_notes)
    notes += [f"{method}: {a['note']}" for method, a in aggregated.items() if a["status"] != "done"]
    if markdown:
        alignment = ["---"] + [":---:"] * (len(prefixes) + probed) + ["---:"]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(alignment) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines + [""] + [f"{note}  " for note in notes]) + "\n"
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header] + rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines + [""] + notes)


# ----------------------------------------------------------------------------- the comparison
def parse_methods(text: str) -> tuple[str, ...]:
    """'mono,kd' -> ('mono', 'kd'), in the given order, each once; raises `DataError` for unknown names."""
    methods = []
    for name in (part.strip() for part in text.split(",")):
        if name not in ALL_METHODS:
            raise DataError(f"--methods {text}: unknown method {name!r}; expected a comma-separated list of "
                            f"{', '.join(ALL_METHODS)}")
        if name not in methods:
            methods.append(name)
    return tuple(methods)


def _check_inputs(config: Config, directory: str, prefixes, runs: int, per_run_splits: bool, seeds
                  ) -> tuple[DataFolder, list | None]:
    """Every check that can fail on the user's input, before anything is written: the data as each run
    will see it, the drawn splits, the augmentation settings."""
    check_config(config)
    if config.seed + runs - 1 > MAX_SEED:
        raise DataError(f"--seed {config.seed} --runs {runs}: the last run's seed {config.seed + runs - 1} exceeds "
                        f"{MAX_SEED} (2**32-1)")
    splits = None
    if per_run_splits:
        labels_path = os.path.join(directory, "labels.npy")
        if not os.path.isdir(directory):
            raise DataError(f"{directory}: data folder not found")
        labels = read_labels(labels_path)
        splits = [draw_split(labels, seed, labels_path=labels_path) for seed in seeds]
    data = load_run_data(config, directory, prefixes, config.output, seeds[0], splits and splits[0])
    # the augmentation settings are checked without copying anything to the device
    build_sources(dataclasses.replace(config, data_on_device="no"), data, torch.device("cpu"))
    return data, splits


def compare(config: Config, directory: str, first_prefix: str, second_prefix: str, runs: int = 5,
            methods=DEFAULT_METHODS, resplit: bool = False, verbose: bool = False, log=print,
            executor=None) -> dict:
    """Runs every method `runs` times (seeds config.seed + k) and writes comparison.json / .md.

    `config` holds the training settings of every neural method (its output: the comparison's folder,
    default DIR/comparison_<FIRST>_<SECOND>). `executor` trains the runs: `run_locally` (None), or an
    object with `start(output)` (called once the input is checked, before anything is written) and
    `__call__(contexts, methods, log)` yielding (context, entries) as runs finish, in any order, as
    `run_locally` does (ray_executor.RayExecutor). Raises `DataError` before writing anything on bad
    input; `Interrupted` or `TrainingError` after saving the runs finished so far (a comparison with
    none finished leaves nothing behind). Returns the contents of comparison.json.
    """
    methods = parse_methods(methods if isinstance(methods, str) else ",".join(methods))
    if not 1 <= runs <= MAX_RUNS:  # before the seeds are listed
        raise DataError(f"--runs {runs}: 1 to {MAX_RUNS} is expected")
    prefixes = (first_prefix, second_prefix)
    seeds = [config.seed + k for k in range(runs)]
    output = config.output or os.path.join(directory, f"comparison_{first_prefix}_{second_prefix}")
    config = dataclasses.replace(config, output=output)
    per_run_splits = resplit or not has_split_files(directory, prefixes)
    data, splits = _check_inputs(config, directory, prefixes, runs, per_run_splits, seeds)
    prepare_output(output, config.overwrite)
    device = resolve_device(config.device)
    if executor is not None:
        executor.start(output)  # refuses (DataError) before anything is written
    # ---- nothing was written before this line
    created = not os.path.exists(output)
    os.makedirs(output, exist_ok=True)
    split_note = ("a fresh stratified 70/10/20 split per run, saved in run_<seed>/split" if per_run_splits
                  else "the folder's own split files, shared by all runs")
    extra_notes = []
    if not per_run_splits and set(CLASSICAL) & set(methods) and runs > 1:
        extra_notes.append("svm and logreg do not depend on the seed: on a shared split their runs repeat "
                           "(standard deviation 0); --resplit draws a split per run.")
    if per_run_splits and has_split_files(directory, prefixes):
        log(f"--resplit: {directory}'s own split files are not used")
    results = {"status": "running", "directory": os.path.abspath(directory), "prefixes": list(prefixes),
               "methods": list(methods), "runs": runs, "seeds": seeds, "splits": split_note, "std_ddof": STD_DDOF,
               "config": dataclasses.asdict(config), "executor": getattr(executor, "description", "local"),
               "environment": {"torch": str(torch.__version__), "device": str(device),
                               "precision": resolve_precision(config.precision, device)},
               "results": [], "aggregated": {}}
    started, written = time.time(), []

    def run_context(k: int, seed: int) -> RunContext:
        """Run k's folder, split and data, as every method of it reads them."""
        folder = os.path.join(output, f"run_{seed}")
        written.append(folder)
        run_data = data
        if per_run_splits:
            save_splits(split_name(output, seed), splits[k])
            run_data = load_run_data(config, directory, prefixes, output, seed, splits[k])
        for warning in run_data.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        log(f"run {k + 1}/{runs}  seed {seed}  training rows "
            + " ".join(f"{m.prefix} {len(m.splits['train'])}" for m in run_data.modalities)
            + f", valid {len(run_data.modalities[0].splits['valid'])}, "
              f"test {len(run_data.modalities[0].splits['test'])}")
        return RunContext(dataclasses.replace(config, seed=seed), folder, run_data, verbose, log)

    contexts = (run_context(k, seed) for k, seed in enumerate(seeds))
    finishing = (executor or run_locally)(contexts, methods, log)  # a generator: nothing has run yet
    try:
        for context, entries in finishing:
            results["results"].append({"seed": context.config.seed, "folder": context.folder,
                                       "data": context.data.describe(), "methods": entries})
            results["results"].sort(key=lambda run: run["seed"])  # an executor may finish runs out of order
            _save(output, results, methods, prefixes, seeds, split_note, extra_notes)
    except (Interrupted, TrainingError, KeyboardInterrupt) as error:
        finishing.close()  # an executor's tasks still running are cancelled
        finished = len(results["results"])
        reason = "interrupted" if isinstance(error, (Interrupted, KeyboardInterrupt)) else "failed"
        if finished:
            results["status"] = reason
            _save(output, results, methods, prefixes, seeds, split_note, extra_notes)
            kept = (f"the {finished} run(s) finished so far are in {os.path.join(output, RESULTS_FILE)} and "
                    f"{TABLE_FILE}; --overwrite starts again")
        else:
            for folder in written:
                shutil.rmtree(folder, ignore_errors=True)
            if created:
                shutil.rmtree(output, ignore_errors=True)
            kept = "no run had finished, so nothing was kept"
        detail = str(error) if isinstance(error, TrainingError) else "by a signal"
        message = f"comparison {reason} with {finished}/{runs} run(s) finished ({detail}); {kept}"
        raise (TrainingError if reason == "failed" else Interrupted)(message) from None
    results["status"] = "finished"
    results["total_seconds"] = time.time() - started
    results["table"] = format_table(results["aggregated"], prefixes, runs, seeds, split_note, False, extra_notes)
    write_json(os.path.join(output, RESULTS_FILE), results)
    log("")
    log(results["table"])
    log(f"(outputs in {output}: {RESULTS_FILE}, {TABLE_FILE})")
    return results


def _save(output: str, results: dict, methods, prefixes, seeds, split_note: str, extra_notes) -> None:
    """comparison.json and comparison.md with the runs finished so far."""
    finished = [run["seed"] for run in results["results"]]  # in seed order, not always the first seeds
    results["aggregated"] = aggregate(results["results"], methods)
    table = format_table(results["aggregated"], prefixes, len(finished), finished, split_note, True, extra_notes)
    write_json(os.path.join(output, RESULTS_FILE), results)
    write_text(os.path.join(output, TABLE_FILE), table)


def make_executor(name: str, address: str | None = None, gpus_per_task: float | None = None,
                  cpus_per_task: float = 1.0, max_retries: int = 3, on_epoch=None):
    """None for the local executor; for "ray", a `ray_executor.RayExecutor` (DataError when Ray is missing)."""
    if name == "local":
        return None
    try:
        from discomkd import ray_executor  # Ray is optional: imported only here
    except ModuleNotFoundError as error:
        if error.name != "ray" and not (error.name or "").startswith("ray."):
            raise
        raise DataError("Ray is not installed (--executor ray and tune.py need it); install it with "
                        "`pip install -r requirements-ray.txt` (or pip install \"ray[tune]\")") from None
    return ray_executor.RayExecutor(address, gpus_per_task, cpus_per_task, max_retries, on_epoch)
