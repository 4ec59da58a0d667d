"""The paper's comparison on one data folder: DisCoM-KD against its baselines, over repeated runs.

    python compare.py DIR FIRST SECOND [--runs K] [--methods mono,teacher,...] [--resplit] [options]

Methods (every neural one uses DisCoM-KD's encoders, Adam, augmentation, epochs and model
selection: each model's best validation weighted F1, test metrics at that epoch):
    mono             each modality alone: encoder + Linear(512, K)
    teacher          one encoder per modality, features summed, Linear(512, K); reads both
                     modalities at test time (a reference, not a single-modality method)
    kd               single-modality student distilled from the teacher (Hinton et al.)
    dkd              decoupled KD (Zhao et al., CVPR 2022)
    discomkd         DisCoM-KD (functions.run); discomkd-legacy: with the published code's
                     modality targets
    svm, logreg      RBF SVM and logistic regression on the flattened rows, C chosen on validation

Run k uses seed S+k (S = --seed, 0 by default). When DIR holds no split files, or with
--resplit, each run draws its own stratified 70/10/20 split and reads the data through a folder
view OUTPUT/run_<seed>/split (its split files plus links to DIR's arrays); DIR is never written.
Outputs: OUTPUT/comparison.json (per-run results and aggregates), OUTPUT/comparison.md (the
table), OUTPUT/run_<seed>/<method>/ for each DisCoM-KD run.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from baselines import (STUDENT_METHODS, MultiModalTeacher, SingleModalityClassifier, student_loss_weights,
                       student_losses)
from data import SPLITS, DataError, DataFolder, Prefetcher, RowSource, array_path, augment, epoch_positions, \
    load_data_folder
from functions import (Config, Interrupted, TrainingError, add_config_arguments, atomic_write, autocast_context,
                       build_sources, check_config, classification_metrics, predict, prepare_output, resolve_device,
                       resolve_precision, run, seed_everything, write_json)
from functions import MAX_SEED
from make_splits import draw_split, read_labels, save_index
from outputs import line_buffered_stdout

METHODS = ("mono", "teacher", "kd", "dkd", "discomkd", "discomkd-legacy", "svm", "logreg")
DISTILLATION_METHODS = ("teacher", "kd", "dkd")  # need rows present in both modalities' training sets
FUSED = "fused"  # the teacher's one result column: its prediction reads both modalities
SPLIT_FOLDER = "split"
RESULTS_FILE, TABLE_FILE = "comparison.json", "comparison.md"
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


def classical_pipeline(method: str, c: float) -> Pipeline:
    """StandardScaler then the method's model with regularisation C (an unfitted pipeline)."""
    return Pipeline([("scale", StandardScaler()), ("model", CLASSICAL[method][0](c))])


@dataclass
class RunContext:
    """What every method of one run reads: the checked data, the settings, and while the neural
    baselines train, each modality's rows on the device."""

    config: Config  # seed = this run's seed
    directory: str  # the folder the run reads: DIR, or the run's split view
    folder: str  # the run's output folder
    data: DataFolder
    device: torch.device
    precision: str
    verbose: bool
    log: object
    sources: tuple[RowSource, RowSource] | None = None  # while the neural baselines train
    augmentations: tuple[str, str] | None = None

    @property
    def prefixes(self) -> list[str]:
        return [m.prefix for m in self.data.modalities]

    def rows(self, split: str) -> np.ndarray:
        """Valid and test rows are shared by both modalities (data.py checks a single file of each)."""
        return self.data.modalities[0].splits[split]


# ----------------------------------------------------------------------------- neural training
def _adam(model: torch.nn.Module, config: Config, device: torch.device) -> torch.optim.Optimizer:
    fused = {"fused": True} if device.type == "cuda" else {}  # as functions.build_trainer
    return torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay, **fused)


def _seeded(context: RunContext, build) -> torch.nn.Module:
    """A model built right after seeding, so its weights and the training's random draws do not depend
    on which methods ran before it in the run."""
    seed_everything(context.config.seed)
    return build().to(context.device)


@torch.inference_mode()
def predict_fused(teacher: MultiModalTeacher, sources, rows: np.ndarray, batch_size: int,
                  precision: str = "fp32") -> np.ndarray:
    """The teacher's predicted classes (0..K-1) for user rows `rows`, read from both modalities."""
    device = next(teacher.parameters()).device
    positions = [source.positions(rows) for source in sources]
    predicted = []
    for start in range(0, len(rows), batch_size):
        inputs = [source.gather(p[start:start + batch_size]) for source, p in zip(sources, positions)]
        with autocast_context(device, precision):
            predicted.append(teacher(*inputs).logits.float().argmax(dim=1))
    return torch.cat(predicted).cpu().numpy()


def fit(context: RunContext, model: torch.nn.Module, rows: np.ndarray, modalities: tuple[int, ...], losses,
        weights, predict_split, name: str, keep_best: bool = False) -> dict:
    """Trains `model` on the user rows `rows` for `config.epochs` and selects its best validation epoch.

    Args:
        modalities: the modalities whose inputs a step reads (augmented, as DisCoM-KD's).
        losses: (inputs {modality: (B, ...)}, labels (B,)) -> {term: scalar}, the raw loss terms.
        weights: epoch (1-based) -> {term: weight}; the total is the weighted sum of the terms.
        predict_split: split name -> (n,) predicted classes of that split's rows (the model in eval mode);
            called for valid every epoch, for test at the epochs that improve validation.
        keep_best: load the best epoch's weights back into `model` at the end (the teacher is reused).
    Returns:
        {"best_epoch", "valid": metrics, "test": metrics, "train_rows", "seconds",
         "history": [{"epoch", "loss": {term: mean}, "valid_weighted_f1"}]}
    """
    config, device, data = context.config, context.device, context.data
    started = time.time()
    optimizer = _adam(model, config, device)
    generator = torch.Generator().manual_seed(config.seed)
    positions = {m: context.sources[m].positions(rows) for m in modalities}
    train_labels = torch.from_numpy(data.labels[rows]).to(device)  # (n,)
    streamed = not all(context.sources[m].resident for m in modalities)
    best, best_state, history = {"best_epoch": 0, "valid": {"weighted_f1": -1.0}}, None, []
    for epoch in range(1, config.epochs + 1):
        model.train()
        bounds, (order,) = epoch_positions((len(rows),), config.batch_size, generator)
        # the epoch's order copied once: a pageable host-to-device copy per step would synchronise every step
        stored = {m: positions[m][order.to(context.sources[m].index_device)] for m in modalities}
        ordered_labels = train_labels[order.to(device)]
        epoch_weights = weights(epoch)

        def fetch(i):
            start, end = bounds[i]
            return ({m: context.sources[m].gather(stored[m][start:end]) for m in modalities},
                    ordered_labels[start:end])

        sums, names = None, None
        for inputs, labels in Prefetcher(fetch, len(bounds), enabled=streamed):
            # augmentation draws random numbers, so it runs here, in order, never in the prefetch thread
            inputs = {m: augment(x, context.augmentations[m]) for m, x in inputs.items()}
            with autocast_context(device, context.precision):
                terms = losses(inputs, labels)
            total = sum(epoch_weights[k] * terms[k].float() for k in epoch_weights)  # the one place weights apply
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            names = list(terms) + ["total"]
            step = torch.stack([t.detach().float() for t in terms.values()] + [total.detach()])
            sums = step if sums is None else sums + step
        loss = dict(zip(names, (sums / len(bounds)).tolist()))  # the epoch's one host-device synchronisation
        bad = [k for k, v in loss.items() if not math.isfinite(v)]
        if bad:
            raise TrainingError(f"{name}: loss term {bad[0]} is {loss[bad[0]]} at epoch {epoch}: training stopped "
                                "(try a lower --learning-rate); the runs finished so far are in comparison.json")
        model.eval()
        valid = classification_metrics(data.labels[context.rows("valid")], predict_split("valid"))
        improved = valid["weighted_f1"] > best["valid"]["weighted_f1"]
        if improved:  # the test split is only read at the epochs that model selection can pick
            test = classification_metrics(data.labels[context.rows("test")], predict_split("test"))
            best = {"best_epoch": epoch, "valid": valid, "test": test}
            if keep_best:
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        history.append({"epoch": epoch, "loss": loss, "valid_weighted_f1": valid["weighted_f1"]})
        if context.verbose:
            context.log(f"  {name} epoch {epoch:>{len(str(config.epochs))}}/{config.epochs}  loss {loss['total']:.3f} ["
                        + " ".join(f"{k} {v:.3f}" for k, v in loss.items() if k != "total")
                        + f"]  valid wF1 {valid['weighted_f1']:.4f}{'*' if improved else ''}")
    if keep_best:
        model.load_state_dict(best_state)
    model.eval()
    return {**best, "train_rows": int(len(rows)), "seconds": time.time() - started, "history": history}


def train_teacher(context: RunContext, paired_rows: np.ndarray) -> tuple[MultiModalTeacher, dict]:
    """The multi-modal teacher trained on the paired training rows, holding its best validation epoch's
    weights (selected on the fused prediction), in eval mode."""
    data = context.data
    teacher = _seeded(context, lambda: MultiModalTeacher([m.sample_shape for m in data.modalities], data.num_classes,
                                                         [m.encoder for m in data.modalities]))

    def losses(inputs, labels):
        return {"ce": F.cross_entropy(teacher(inputs[0], inputs[1]).logits.float(), labels)}

    def predict_split(split):
        return predict_fused(teacher, context.sources, context.rows(split), context.config.eval_batch_size,
                             context.precision)

    result = fit(context, teacher, paired_rows, (0, 1), losses, lambda epoch: {"ce": 1.0}, predict_split, "teacher",
                 keep_best=True)
    teacher.requires_grad_(False)
    return teacher, result


def train_student(context: RunContext, modality: int, method: str, rows: np.ndarray,
                  teacher: MultiModalTeacher | None = None) -> dict:
    """A single-modality classifier of `modality` trained by `method` (mono, kd or dkd) on `rows`.

    kd/dkd read both modalities of each row: the teacher (frozen, eval mode) sees the same
    augmented input as the student for the student's modality.
    """
    data, source = context.data, context.sources[modality]
    spec = data.modalities[modality]
    student = _seeded(context, lambda: SingleModalityClassifier(spec.sample_shape, data.num_classes, spec.encoder))

    def losses(inputs, labels):
        teacher_logits = None
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = teacher(inputs[0], inputs[1]).logits
        return student_losses(method, student(inputs[modality]).logits, labels, teacher_logits)

    def predict_split(split):
        rows_split = context.rows(split)
        return predict(student, source, source.positions(rows_split), context.config.eval_batch_size,
                       context.precision)[1]

    modalities = (modality,) if teacher is None else (0, 1)
    return fit(context, student, rows, modalities, losses, lambda epoch: student_loss_weights(method, epoch),
               predict_split, f"{method} {spec.prefix}")


# ----------------------------------------------------------------------------- other methods
def fit_classical(data: DataFolder, modality: int, method: str) -> dict:
    """`method` (svm or logreg) on the flattened rows of one modality, C chosen on validation weighted F1.

    Returns:
        {"C", "valid": metrics, "test": metrics (of the chosen C), "grid": [{"C", "valid", "converged"}], "seconds"}
    """
    started = time.time()
    spec = data.modalities[modality]
    features = {split: np.asarray(spec.array[rows]).reshape(len(rows), -1) for split, rows in spec.splits.items()}
    labels = {split: data.labels[rows] for split, rows in spec.splits.items()}
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


def run_discomkd(context: RunContext, method: str) -> dict:
    """One DisCoM-KD run (functions.run) writing to the run's folder; returns its method entry."""
    config = dataclasses.replace(context.config, output=os.path.join(context.folder, method), overwrite=True,
                                 legacy_modality_targets=method == "discomkd-legacy", verbose=int(context.verbose))
    started = time.time()
    results = run(config, context.directory, *context.prefixes, log=context.log if context.verbose else _silent)
    columns = {prefix: {"best_epoch": r["best_epoch"], "valid": r["valid"], "test": r["test"]}
               for prefix, r in results["final"].items()}
    return {"status": "done", "seconds": time.time() - started, "columns": columns, "output": config.output}


def _silent(line: str) -> None:
    """A log that drops DisCoM-KD's own summary table (the comparison prints one line per model)."""


def _train_neural_baselines(context: RunContext, methods: tuple[str, ...], announce) -> dict[str, dict]:
    """mono, teacher, kd and dkd of one run, with the data on the device. The teacher is trained once and
    serves kd and dkd; without paired training rows the three are skipped with a note."""
    data = context.data
    entries = {}
    paired = np.intersect1d(data.modalities[0].splits["train"], data.modalities[1].splits["train"])
    teacher, teacher_seconds = None, 0.0
    if set(DISTILLATION_METHODS) & set(methods):
        if len(paired) < 2:
            note = (f"teacher, kd and dkd need paired data (rows present in both modalities' training sets); "
                    f"the training sets share {len(paired)} row(s): skipped")
            context.log(f"note: {note}")
            entries.update({m: {"status": "skipped", "note": note} for m in DISTILLATION_METHODS if m in methods})
        else:
            teacher, result = train_teacher(context, paired)
            teacher_seconds = result["seconds"]
            announce("teacher", FUSED, result)
            if "teacher" in methods:
                entries["teacher"] = {"status": "done", "seconds": teacher_seconds, "columns": {FUSED: result}}
    for method in STUDENT_METHODS:
        if method not in methods or method in entries:
            continue
        columns = {}
        for m, prefix in enumerate(context.prefixes):
            rows = data.modalities[m].splits["train"] if method == "mono" else paired
            columns[prefix] = train_student(context, m, method, rows, None if method == "mono" else teacher)
            announce(method, prefix, columns[prefix])
        seconds = sum(c["seconds"] for c in columns.values()) + (teacher_seconds if method != "mono" else 0.0)
        entries[method] = {"status": "done", "seconds": seconds, "columns": columns}
    return entries


def run_methods(context: RunContext, methods: tuple[str, ...], announce) -> dict[str, dict]:
    """Every requested method on one run: the neural baselines, then DisCoM-KD, then the classical ones.

    The baselines' copy of the data leaves the device before DisCoM-KD places its own.

    Returns:
        {method: {"status": "done" | "skipped", "seconds", "columns": {prefix or "fused": result}, "note"?}},
        in the order of `methods`.
    """
    entries = {}
    if set(methods) & set(STUDENT_METHODS + DISTILLATION_METHODS):
        sources, _, _, augmentations = build_sources(context.config, context.data, context.device)
        context.sources, context.augmentations = tuple(sources), tuple(augmentations)
        entries.update(_train_neural_baselines(context, methods, announce))
        context.sources = None
        if context.device.type == "cuda":
            torch.cuda.empty_cache()
    for method in ("discomkd", "discomkd-legacy"):
        if method in methods:
            entries[method] = run_discomkd(context, method)
            for prefix, result in entries[method]["columns"].items():
                announce(method, prefix, result)
    for method in CLASSICAL:
        if method in methods:
            columns = {prefix: fit_classical(context.data, m, method) for m, prefix in enumerate(context.prefixes)}
            for prefix, result in columns.items():
                announce(method, prefix, result)
            entries[method] = {"status": "done", "seconds": sum(c["seconds"] for c in columns.values()),
                               "columns": columns}
    return {method: entries[method] for method in methods}


# ----------------------------------------------------------------------------- splits and folder views
def has_split_files(directory: str, prefixes) -> bool:
    names = [f"{split}_idx.npy" for split in SPLITS] + [f"train_idx_{prefix}.npy" for prefix in prefixes]
    return any(os.path.isfile(os.path.join(directory, name)) for name in names)


def write_split_view(view: str, directory: str, prefixes, splits: dict[str, np.ndarray]) -> None:
    """Makes `view` a data folder reading `directory`'s labels and arrays through links, with `splits`
    as its train/valid/test_idx.npy. Files missing in `directory` get no link (the loader names them)."""
    os.makedirs(view, exist_ok=True)
    targets = [(os.path.join(directory, "labels.npy"), os.path.join(view, "labels.npy"))]
    targets += [(array_path(directory, prefix), array_path(view, prefix)) for prefix in prefixes]
    for target, link in targets:
        # a prefix naming a sub-folder gets no link: the loader rejects that prefix with its own message
        if os.path.isfile(target) and os.path.dirname(link) == view:
            if os.path.lexists(link):
                os.remove(link)
            os.symlink(os.path.abspath(target), link)
    for split, rows in splits.items():
        save_index(os.path.join(view, f"{split}_idx.npy"), rows)


def draw_run_splits(config: Config, directory: str, prefixes, seeds) -> tuple[DataFolder, list[dict]]:
    """One stratified 70/10/20 split per seed, after checking the folder through a temporary view.

    Returns the folder as the first seed's split sees it (for further checks) and the splits.
    Raises `DataError` naming the user's files; writes nothing outside the system's temporary folder.
    """
    labels = read_labels(directory)
    splits = [draw_split(labels, seed, labels_path=os.path.join(directory, "labels.npy")) for seed in seeds]
    with tempfile.TemporaryDirectory(prefix="compare-check-") as view:
        _link_split_view(view, directory, prefixes, splits[0])
        try:
            data = load_data_folder(view, *prefixes, (config.encoder_first, config.encoder_second))
        except DataError as error:
            raise DataError(str(error).replace(view, directory.rstrip(os.sep))) from None
    return data, splits


def _link_split_view(view: str, directory: str, prefixes, splits: dict[str, np.ndarray]) -> None:
    """`write_split_view`, explaining a file system without symbolic links in one line."""
    try:
        write_split_view(view, directory, prefixes, splits)
    except OSError as error:
        raise DataError(f"{view}: cannot link to {directory}'s arrays ({error.strerror}); write split files into "
                        "the data folder with make_splits.py and run without --resplit") from None


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
            "includes_teacher_seconds": method in ("kd", "dkd"),
            "columns": {column: {metric: _summary([e["columns"][column]["test"][metric] for e in done])
                                 for metric in ("weighted_f1", "accuracy")} for column in done[0]["columns"]}}
    return table


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


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
    header = ["method"] + [f"{p} test wF1 / acc" for p in prefixes] + ["training time"]
    rows, notes = [], []
    for method, a in aggregated.items():
        if a["status"] != "done":
            rows.append([method] + ["skipped (needs paired rows)"] * len(prefixes) + ["-"])
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
        rows.append([method] + cells + [_duration(a["seconds"]) + (" [t]" if a["includes_teacher_seconds"] else "")])
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
    notes.append("Training time: wall time summed over runs, per-epoch evaluation included.")
    notes += list(extra_notes)
    notes += [f"{method}: {a['note']}" for method, a in aggregated.items() if a["status"] != "done"]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + [":---:"] * len(prefixes) + ["---:"]) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines + [""] + [f"{note}  " for note in notes]) + "\n"
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header] + rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines + [""] + notes)


# ----------------------------------------------------------------------------- the comparison
def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def parse_methods(text: str) -> tuple[str, ...]:
    """'mono,kd' -> ('mono', 'kd'), in the given order, each once; raises `DataError` for unknown names."""
    methods = []
    for name in (part.strip() for part in text.split(",")):
        if name not in METHODS:
            raise DataError(f"--methods {text}: unknown method {name!r}; expected a comma-separated list of "
                            f"{', '.join(METHODS)}")
        if name not in methods:
            methods.append(name)
    return tuple(methods)


def compare(config: Config, directory: str, first_prefix: str, second_prefix: str, runs: int = 5,
            methods=METHODS, resplit: bool = False, verbose: bool = False, log=print) -> dict:
    """Runs every method `runs` times (seeds config.seed + k) and writes comparison.json / .md.

    `config` is DisCoM-KD's (its output: the comparison's folder, default DIR/comparison_<FIRST>_<SECOND>);
    its training settings apply to every neural method. Raises `DataError` before writing anything
    on bad input. Returns the contents of comparison.json.
    """
    methods = parse_methods(methods if isinstance(methods, str) else ",".join(methods))
    if not 1 <= runs <= MAX_RUNS:
        raise DataError(f"--runs {runs}: 1 to {MAX_RUNS} is expected")
    check_config(config)
    if config.seed + runs - 1 > MAX_SEED:
        raise DataError(f"--seed {config.seed} --runs {runs}: the last run's seed {config.seed + runs - 1} exceeds "
                        f"{MAX_SEED} (2**32-1)")
    device = resolve_device(config.device)
    prefixes = (first_prefix, second_prefix)
    seeds = [config.seed + k for k in range(runs)]
    output = config.output or os.path.join(directory, f"comparison_{first_prefix}_{second_prefix}")
    encoders = (config.encoder_first, config.encoder_second)

    per_run_splits = resplit or not has_split_files(directory, prefixes)
    if per_run_splits:
        data, splits = draw_run_splits(config, directory, prefixes, seeds)
    else:
        data, splits = load_data_folder(directory, *prefixes, encoders), None
    # the augmentation settings are checked without copying anything to the device
    build_sources(dataclasses.replace(config, data_on_device="no"), data, torch.device("cpu"))
    prepare_output(dataclasses.replace(config, output=output), directory, *prefixes)
    # ---- nothing was written before this line
    os.makedirs(output, exist_ok=True)
    compiled = config.compile == "yes" or (config.compile == "auto" and device.type == "cuda")
    extra_notes = []
    if compiled and {"discomkd", "discomkd-legacy"} & set(methods):
        extra_notes.append("DisCoM-KD's training step is torch.compiled (--compile), the baselines' are not: "
                           "compare its times with that in mind.")
    split_note = ("a fresh stratified 70/10/20 split per run, saved in run_<seed>/split" if per_run_splits
                  else "the folder's own split files, shared by all runs")
    if not per_run_splits and set(CLASSICAL) & set(methods) and runs > 1:
        extra_notes.append("svm and logreg do not depend on the seed: on a shared split their runs repeat "
                           "(standard deviation 0); --resplit draws a split per run.")
    if per_run_splits and has_split_files(directory, prefixes):
        log(f"--resplit: {directory}'s own split files are not used")
    results = {"status": "running", "directory": directory, "prefixes": list(prefixes), "methods": list(methods),
               "runs": runs, "seeds": seeds, "splits": split_note, "std_ddof": STD_DDOF,
               "config": dataclasses.asdict(config),
               "environment": {"torch": str(torch.__version__), "device": str(device),
                               "precision": resolve_precision(config, device), "baselines_compiled": False},
               "results": [], "aggregated": {}}
    started = time.time()
    for k, seed in enumerate(seeds):
        folder = os.path.join(output, f"run_{seed}")
        os.makedirs(folder, exist_ok=True)
        run_directory = directory
        if per_run_splits:
            run_directory = os.path.join(folder, SPLIT_FOLDER)
            _link_split_view(run_directory, directory, prefixes, splits[k])
            data = load_data_folder(run_directory, *prefixes, encoders)
        for warning in data.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        context = RunContext(dataclasses.replace(config, seed=seed), run_directory, folder, data, device,
                             resolve_precision(config, device), verbose, log)
        log(f"run {k + 1}/{runs}  seed {seed}  training rows "
            + " ".join(f"{m.prefix} {len(m.splits['train'])}" for m in data.modalities)
            + f", valid {len(context.rows('valid'))}, test {len(context.rows('test'))}")

        def announce(method, column, result):
            choice = f"C {result['C']:g}" if "C" in result else f"best epoch {result['best_epoch']}"
            log(f"  {method:<15} {column:<10} {choice:<15} valid wF1 {result['valid']['weighted_f1']:.4f}  "
                f"test wF1 {result['test']['weighted_f1']:.4f}  acc {result['test']['accuracy']:.4f}"
                + (f"  {result['seconds']:.1f}s" if "seconds" in result else ""))

        entries = run_methods(context, methods, announce)
        results["results"].append({"seed": seed, "folder": folder, "data": data.describe(), "methods": entries})
        results["aggregated"] = aggregate(results["results"], methods)
        table = format_table(results["aggregated"], prefixes, k + 1, seeds[:k + 1], split_note, True, extra_notes)
        write_json(os.path.join(output, RESULTS_FILE), results)
        atomic_write(os.path.join(output, TABLE_FILE), lambda temporary, text=table: _write_text(temporary, text))
    results["status"] = "finished"
    results["total_seconds"] = time.time() - started
    results["table"] = format_table(results["aggregated"], prefixes, runs, seeds, split_note, False, extra_notes)
    write_json(os.path.join(output, RESULTS_FILE), results)
    log("")
    log(results["table"])
    log(f"(outputs in {output}: {RESULTS_FILE}, {TABLE_FILE})")
    return results


# ----------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Compare DisCoM-KD with its baselines (mono, teacher, KD, DKD, SVM, logistic regression) "
                    "on one data folder over repeated runs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("directory", metavar="DIR", help="data folder, as for main_DisCoM-KD.py; split files "
                                                         "optional (without them each run draws its own)")
    parser.add_argument("first_prefix", metavar="FIRST_PREFIX", help="first modality")
    parser.add_argument("second_prefix", metavar="SECOND_PREFIX", help="second modality")
    parser.add_argument("--runs", type=int, default=1, help="repeated runs, seeds SEED..SEED+RUNS-1 (the paper: 5)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods to compare")
    parser.add_argument("--resplit", action="store_true", help="draw a stratified 70/10/20 split per run even when "
                                                               "DIR has split files")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first run")
    parser.add_argument("--output", default=None, help="output folder (default DIR/comparison_<FIRST>_<SECOND>)")
    add_config_arguments(parser, skip=("seed", "output", "legacy_modality_targets"))
    parser.add_argument("--verbose", action="store_true", help="one line per epoch of every neural model")
    return parser


def main(argv=None) -> int:
    line_buffered_stdout()
    args = vars(build_parser().parse_args(argv))
    directory, first, second = args.pop("directory"), args.pop("first_prefix"), args.pop("second_prefix")
    runs, methods, resplit, verbose = args.pop("runs"), args.pop("methods"), args.pop("resplit"), args.pop("verbose")
    config = Config(**args, verbose=int(verbose))
    try:
        compare(config, directory, first, second, runs, methods, resplit, verbose)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except torch.cuda.OutOfMemoryError:
        print("error: GPU out of memory: try a smaller --batch-size or --data-on-device no; the runs finished so far "
              "are in comparison.json", file=sys.stderr)
        return 3
    except (Interrupted, KeyboardInterrupt):
        print("interrupted: the runs finished so far are in comparison.json", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
