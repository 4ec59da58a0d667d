"""See what a finished DisCoM-KD run learned: disentanglement probes and figures.

    python inspect_run.py RUN_FOLDER [--no-figures] [--no-probes] [--data DIR]

Reloads the run's data folder (recorded in RUN_FOLDER/results.json) and each modality's
best_<PREFIX>.pt, and computes the test rows' invariant, informative and irrelevant parts.

Probes (probes.json, and a table on stdout): cross-validated logistic regressions that predict
the modality from the pooled features of both modalities, and the class from each modality's
features, per part. If the disentanglement worked, the invariant part carries no modality
(accuracy near 0.5) while the informative and irrelevant parts carry it (near 1.0).

Figures (RUN_FOLDER/figures/, needs matplotlib, skipped with a message without it):
training_curves.png, confusion_<PREFIX>.png per modality, tsne.png.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np
import torch
from sklearn.manifold import TSNE
from sklearn.metrics import confusion_matrix

from discomkd.batches import input_batches
from discomkd.config import DEVICE_HELP, Config, checkpoint_precision, resolve_device
from discomkd.data import DataFolder, load_data_folder, read_split_files
from discomkd.engine import autocast_context, classification_metrics
from discomkd.errors import DataError, command_status
from discomkd.probes import PROBE_FOLDS, probe_accuracy
from discomkd.run_files import (
    RESULTS_FILE,
    atomic_write,
    checkpoint_path,
    folder_problem,
    line_buffered_stdout,
    load_classifier,
    write_json,
)
from discomkd.training import data_fingerprint
from model_pytorch import LOSS_TERMS

PARTS = ("invariant", "informative", "irrelevant")
PROBES_FILE = "probes.json"
FIGURES_FOLDER = "figures"
TSNE_ROWS = 1000  # rows per modality in the t-SNE figure: enough to see clusters, seconds to compute
MISSING_MATPLOTLIB = "matplotlib is not installed, figures skipped: pip install matplotlib to draw them"


# ----------------------------------------------------------------------------- the run and its features
def load_run(run_folder: str, data_directory: str | None = None) -> tuple[dict, DataFolder]:
    """The run's results.json and its data folder, reloaded with the recorded prefixes and encoders.

    `data_directory` replaces the recorded folder (for a data folder moved since training).
    Raises `DataError` when the run or its data cannot be read, or the data changed since training.
    """
    results_path = os.path.join(run_folder, RESULTS_FILE)
    if not os.path.isdir(run_folder):
        raise DataError(f"{run_folder}: run folder not found")
    if not os.path.isfile(results_path):
        raise DataError(f"{results_path}: file not found (a run folder written by main_DisCoM-KD.py expected)")
    try:
        with open(results_path) as handle:
            results = json.load(handle)
        described = results["data"]
        prefixes = [m["prefix"] for m in described["modalities"]]
        encoders = [m["encoder"] for m in described["modalities"]]
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"{results_path}: not a DisCoM-KD results file ({type(error).__name__}: {error})") from None
    directory = data_directory or described["directory"]
    if not os.path.isdir(directory):
        raise DataError(f"{directory}: data folder of this run not found (moved? pass --data DIR)")
    splits_from = described.get("splits_from", described["directory"])
    if data_directory is None and splits_from != described["directory"]:
        # a run on a split of its own (compare.py --resplit saves it beside the run): that split
        data = load_data_folder(directory, prefixes[0], prefixes[1], tuple(encoders),
                                splits=read_split_files(splits_from, prefixes), splits_name=splits_from)
    else:
        data = load_data_folder(directory, prefixes[0], prefixes[1], tuple(encoders))
    now = data.describe()
    for before, after in zip(described["modalities"], now["modalities"]):
        if (before["sample_shape"], before["rows"]) != (after["sample_shape"], after["rows"]):
            raise DataError(f"{after['file']}: shapes or splits differ from the run's ({before['sample_shape']}, "
                            f"{before['rows']}); the data folder changed since training")
    if described["classes"] != now["classes"]:
        raise DataError(f"{directory}: classes {now['classes']} differ from the run's {described['classes']}")
    recorded = results.get("data_fingerprint")  # absent from runs written before it was recorded
    if recorded is not None and recorded != data_fingerprint(data):
        raise DataError(f"{directory}: labels or split rows differ from the run's; the data folder changed since training")
    for prefix in prefixes:
        if not os.path.isfile(checkpoint_path(run_folder, prefix)):
            raise DataError(f"{checkpoint_path(run_folder, prefix)}: file not found (the run saved no checkpoint)")
    return results, data


@torch.inference_mode()
def feature_parts(run_folder: str, data: DataFolder, split: str = "test", device: torch.device | str = "cpu",
                  batch_size: int = Config.eval_batch_size) -> dict[str, dict[str, np.ndarray]]:
    """Each modality's best checkpoint applied to the rows of `split`.

    Returns:
        {prefix: {"invariant", "informative", "irrelevant": (n, 256) float32, "predicted": (n,) class
        indices, "labels": (n,) class indices (0..K-1, index data.classes)}}
    """
    device = torch.device(device)
    features = {}
    for modality in data.modalities:
        branch, checkpoint = load_classifier(checkpoint_path(run_folder, modality.prefix), device)
        precision = checkpoint_precision(checkpoint, device)
        rows = modality.splits[split]
        batches = {name: [] for name in PARTS + ("predicted",)}
        for _, x in input_batches(modality.array, rows, batch_size, device):
            with autocast_context(device, precision):
                output = branch(x)
            for name in PARTS:
                batches[name].append(getattr(output, name).float())
            batches["predicted"].append(output.logits.argmax(dim=1))
        features[modality.prefix] = {name: torch.cat(parts).cpu().numpy() for name, parts in batches.items()}
        features[modality.prefix]["labels"] = data.labels[rows]
    return features


# ----------------------------------------------------------------------------- probes
def disentanglement_probes(features: dict[str, dict[str, np.ndarray]], seed: int = 0) -> dict:
    """Modality and class probes for each feature part (see `probe_accuracy`).

    Args: features as returned by `feature_parts` (two modalities).
    Returns: {"modality": {part: {"mean", "std"}}, "class": {prefix: {part: {"mean", "std"}}},
    "chance": {"modality": 0.5, "class": {prefix: majority-class share}}, "rows": {...}}.
    """
    prefixes = list(features)
    # the same number of rows per modality, so that chance is exactly 0.5
    per_modality = min(len(features[p]["labels"]) for p in prefixes)
    rng = np.random.default_rng(seed)
    chosen = {p: np.sort(rng.choice(len(features[p]["labels"]), per_modality, replace=False)) for p in prefixes}
    modality_targets = np.repeat(np.arange(len(prefixes)), per_modality)

    def summary(mean_std):
        return {"mean": None if math.isnan(mean_std[0]) else mean_std[0],
                "std": None if math.isnan(mean_std[1]) else mean_std[1]}

    probes = {"modality": {}, "class": {p: {} for p in prefixes}}
    for part in PARTS:
        pooled = np.concatenate([features[p][part][chosen[p]] for p in prefixes])
        probes["modality"][part] = summary(probe_accuracy(pooled, modality_targets, seed))
        for p in prefixes:
            probes["class"][p][part] = summary(probe_accuracy(features[p][part], features[p]["labels"], seed))
    probes["chance"] = {"modality": 1 / len(prefixes),
                        "class": {p: float(np.bincount(features[p]["labels"]).max() / len(features[p]["labels"]))
                                  for p in prefixes}}
    probes["rows"] = {"modality": int(len(modality_targets)), **{p: int(len(features[p]["labels"])) for p in prefixes}}
    probes["method"] = (f"test rows; StandardScaler + LogisticRegression, StratifiedKFold({PROBE_FOLDS}, "
                        f"shuffle, seed {seed}); mean and std of the fold accuracies")
    return probes


def probe_table(probes: dict) -> str:
    """The probes as a small text table: one row per part, one column per probe, chance last."""
    prefixes = list(probes["class"])
    headers = ["modality"] + [f"class {p}" for p in prefixes]
    width = max(15, *(len(h) + 2 for h in headers))

    def cell(result):
        return "n/a" if result["mean"] is None else f"{result['mean']:.3f} ± {result['std']:.3f}"

    lines = [f"probe accuracy on the test rows ({PROBE_FOLDS}-fold logistic regression, mean ± std)",
             f"{'part':<12}" + "".join(f"{h:>{width}}" for h in headers)]
    for part in PARTS:
        cells = [probes["modality"][part]] + [probes["class"][p][part] for p in prefixes]
        lines.append(f"{part:<12}" + "".join(f"{cell(c):>{width}}" for c in cells))
    chance = [probes["chance"]["modality"]] + [probes["chance"]["class"][p] for p in prefixes]
    lines.append(f"{'chance':<12}" + "".join(f"{c:>{width}.3f}" for c in chance))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figures
def matplotlib_figure():
    """A function making matplotlib figures drawn by the non-interactive Agg canvas, or None when
    matplotlib is not installed."""
    try:
        # `import matplotlib.figure` checks the package itself, even when the submodule is already loaded
        import matplotlib.figure
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    except ImportError:
        return None

    def new_figure(**kwargs):
        """A `Figure` with constrained layout, drawn by the Agg canvas."""
        figure = matplotlib.figure.Figure(layout="constrained", **kwargs)
        FigureCanvasAgg(figure)  # Agg renders without a display, and no pyplot global state is touched
        return figure

    return new_figure


# Modalities get dark blue and vermilion, far from each other for colour-blind readers too.
MODALITY_COLOURS = ("#1f4e9c", "#d55e00")
FIGURE_DPI = 130  # readable at 100% zoom in a README while keeping the files ~100-300 kB


def save_figure(figure, path: str) -> None:
    atomic_write(path, lambda temporary: figure.savefig(temporary, format="png", dpi=FIGURE_DPI))


def training_curves_figure(new_figure, results: dict):
    """Every raw loss term and the total per epoch, and each modality's valid weighted F1 (its best
    epoch, whose checkpoint is kept, marked)."""
    from matplotlib.ticker import MaxNLocator  # only called when matplotlib_figure() found matplotlib

    history = results["history"]
    epochs = [h["epoch"] for h in history]
    weights = {term: results["config"].get(f"weight_{term}") for term in LOSS_TERMS}
    names = {"cl": "L_cl (task)", "aux": "L_aux (auxiliary)", "mod": "L_mod (modality)",
             "adv": "L_adv (adversarial)", "perp": "L_perp (orthogonality)", "total": "weighted total"}
    marker = "o" if len(epochs) <= 30 else None  # single epochs stay visible on short runs
    figure = new_figure(figsize=(13, 6))
    grid = figure.add_gridspec(2, 4)
    panels = []
    for i, term in enumerate(LOSS_TERMS + ("total",)):
        axes = figure.add_subplot(grid[i // 4, i % 4])
        axes.plot(epochs, [h["loss"][term] for h in history], color="0.15" if term == "total" else "C7",
                  marker=marker, markersize=3)
        if term in ("mod", "adv") and not results["config"].get("legacy_modality_targets"):
            # cross-entropy of a two-way classifier at chance: where L_adv settles when the invariant
            # part no longer tells the modalities apart
            axes.axhline(math.log(2), color="0.5", linestyle="--", linewidth=1, label="ln 2 (chance)")
            axes.legend(fontsize=8, loc="best")
        title = names[term] + (f", weight {weights[term]:g}" if weights.get(term) is not None else "")
        axes.set_title(title, fontsize=10)
        panels.append(axes)
    axes = figure.add_subplot(grid[1, 2:])
    for m, prefix in enumerate(p["prefix"] for p in results["data"]["modalities"]):
        colour = MODALITY_COLOURS[m % len(MODALITY_COLOURS)]
        axes.plot(epochs, [h[prefix]["valid"]["weighted_f1"] for h in history], color=colour, label=prefix,
                  marker=marker, markersize=3)
        best = results["final"].get(prefix, {}).get("best_epoch")
        if best:
            score = results["final"][prefix]["valid"]["weighted_f1"]
            axes.plot([best], [score], marker="*", markersize=14, color=colour, markeredgecolor="black",
                      linestyle="none", label=f"{prefix} best: epoch {best}, {score:.3f}")
    axes.set_title("validation weighted F1 (the best epoch's checkpoint is kept)", fontsize=10)
    axes.set_ylim(0, 1.05)  # room for a best-epoch star at 1.0
    axes.legend(fontsize=8, loc="lower right")
    panels.append(axes)
    for axes in panels:
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle(f"DisCoM-KD training ({len(epochs)} epochs)", fontsize=12)
    return figure


def confusion_figure(new_figure, labels: np.ndarray, predicted: np.ndarray, classes: np.ndarray, title: str):
    """Test confusion matrix: colour is the share of each true class, numbers are counts."""
    counts = confusion_matrix(labels, predicted, labels=np.arange(len(classes)))
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(4.5, 0.5 * len(classes) + 2.5)
    figure = new_figure(figsize=(size + 1, size))
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    if len(classes) <= 30:  # beyond that the numbers no longer fit in their cells
        for (i, j), n in np.ndenumerate(counts):
            if n:
                axes.text(j, i, str(n), ha="center", va="center", fontsize=11 if len(classes) <= 10 else 7,
                          color="white" if shares[i, j] > 0.5 else "black")
    ticks = np.arange(len(classes))
    axes.set_xticks(ticks, [str(c) for c in classes], rotation=90 if len(classes) > 12 else 0)
    axes.set_yticks(ticks, [str(c) for c in classes])
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axes, shrink=0.8, label="share of the true class")
    return figure


def tsne_embeddings(features: dict[str, dict[str, np.ndarray]], seed: int = 0, max_rows: int = TSNE_ROWS):
    """2-D t-SNE of each part, both modalities pooled (the same test rows, at most `max_rows` of them).

    Returns ({part: (2n, 2)}, modality index (2n,), class index (2n,)).
    """
    prefixes = list(features)
    count = min(len(features[p]["labels"]) for p in prefixes)
    chosen = np.sort(np.random.default_rng(seed).choice(count, min(count, max_rows), replace=False))
    modality = np.repeat(np.arange(len(prefixes)), len(chosen))
    labels = np.concatenate([features[p]["labels"][chosen] for p in prefixes])
    # perplexity must stay below the number of points; 30 is scikit-learn's default
    perplexity = min(30.0, (len(modality) - 1) / 3)
    embeddings = {}
    for part in PARTS:
        pooled = np.concatenate([features[p][part][chosen] for p in prefixes]).astype(np.float32)
        embeddings[part] = TSNE(n_components=2, perplexity=perplexity, init="pca",
                                random_state=seed).fit_transform(pooled)
    return embeddings, modality, labels


def tsne_figure(new_figure, embeddings: dict, modality: np.ndarray, labels: np.ndarray, prefixes, classes):
    """One column per part; top row coloured by modality, bottom row by class."""
    import matplotlib  # only called when matplotlib_figure() found matplotlib

    figure = new_figure(figsize=(14, 9))
    # drawn in a random order, so that neither modality hides the other
    order = np.random.default_rng(0).permutation(len(modality))
    size = 30 if len(modality) <= 200 else 8  # marker area in points^2: large for a few points, small for a cloud
    class_colours = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
    points = None  # the last class-coloured scatter, for the colour bar when there are too many classes to list
    for column, part in enumerate(PARTS):
        xy = embeddings[part][order]
        top = figure.add_subplot(2, 3, column + 1)
        for m, prefix in enumerate(prefixes):
            mask = modality[order] == m
            top.scatter(xy[mask, 0], xy[mask, 1], s=size, alpha=0.7, color=MODALITY_COLOURS[m % len(MODALITY_COLOURS)],
                        label=prefix, linewidths=0)
        top.set_title(f"{part}: coloured by modality", fontsize=10)
        bottom = figure.add_subplot(2, 3, column + 4)
        if len(classes) <= 20:
            for k, value in enumerate(classes):
                mask = labels[order] == k
                bottom.scatter(xy[mask, 0], xy[mask, 1], s=size, alpha=0.7, color=class_colours(k % class_colours.N),
                               label=str(value), linewidths=0)
        else:
            points = bottom.scatter(xy[:, 0], xy[:, 1], s=size, alpha=0.7, c=labels[order], cmap="viridis", linewidths=0)
        bottom.set_title(f"{part}: coloured by class", fontsize=10)
        for axes in (top, bottom):
            axes.set_xticks([])
            axes.set_yticks([])
    figure.axes[0].legend(title="modality", fontsize=8, markerscale=2.5, loc="best")
    if len(classes) <= 20:
        figure.axes[-1].legend(title="class", fontsize=8, markerscale=2.5, loc="center left", bbox_to_anchor=(1.0, 0.5))
    else:
        figure.colorbar(points, ax=figure.axes[-1], label="class index")
    figure.suptitle(f"t-SNE of the test features ({len(modality) // len(prefixes)} rows per modality)", fontsize=12)
    return figure


def draw_figures(new_figure, run_folder: str, results: dict, data: DataFolder,
                 features: dict[str, dict[str, np.ndarray]], seed: int = 0) -> list[str]:
    """Writes training_curves.png, confusion_<PREFIX>.png and tsne.png to RUN_FOLDER/figures; returns the paths."""
    folder = os.path.join(run_folder, FIGURES_FOLDER)
    os.makedirs(folder, exist_ok=True)
    written = []

    def save(figure, name):
        path = os.path.join(folder, name)
        save_figure(figure, path)
        written.append(path)

    save(training_curves_figure(new_figure, results), "training_curves.png")
    for prefix, parts in features.items():
        metrics = classification_metrics(parts["labels"], parts["predicted"])
        best = results["final"].get(prefix, {}).get("best_epoch", "?")
        title = (f"{prefix} alone, test set ({len(parts['labels'])} rows, best epoch {best})\n"
                 f"accuracy {metrics['accuracy']:.3f}, weighted F1 {metrics['weighted_f1']:.3f}")
        save(confusion_figure(new_figure, parts["labels"], parts["predicted"], data.classes, title),
             f"confusion_{prefix}.png")
    embeddings, modality, labels = tsne_embeddings(features, seed)
    save(tsne_figure(new_figure, embeddings, modality, labels, list(features), data.classes), "tsne.png")
    return written


# ----------------------------------------------------------------------------- command line
def inspect_run_folder(run_folder: str, figures: bool = True, probes: bool = True, data_directory: str | None = None,
            device: str = "auto", log=print) -> dict:
    """The whole job of the command line; raises `DataError`. Returns {"probes": ..., "figures": [paths]}."""
    if not figures and not probes:
        raise DataError("--no-figures --no-probes: nothing to do; drop one of them")
    results, data = load_run(run_folder, data_directory)
    if results.get("status") != "finished":
        # its checkpoints are the best epochs so far, not the final ones
        print(f"warning: {os.path.join(run_folder, RESULTS_FILE)}: the run's status is {results.get('status')}, "
              "not finished; inspecting its best checkpoints so far", file=sys.stderr)
    if folder_problem(run_folder) is not None:
        raise DataError(f"{run_folder}: {folder_problem(run_folder)}")
    new_figure = matplotlib_figure() if figures else None
    if figures and new_figure is None:
        log(MISSING_MATPLOTLIB)
    outcome = {"probes": None, "figures": []}
    if not probes and new_figure is None:
        return outcome
    features = feature_parts(run_folder, data, "test", resolve_device(device))
    if probes:
        outcome["probes"] = disentanglement_probes(features)
        write_json(os.path.join(run_folder, PROBES_FILE), outcome["probes"])
        log(probe_table(outcome["probes"]))
        log(f"(written to {os.path.join(run_folder, PROBES_FILE)})")
    if new_figure is not None:
        outcome["figures"] = draw_figures(new_figure, run_folder, results, data, features)
        log("figures: " + ", ".join(outcome["figures"]))
    return outcome


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Disentanglement probes and figures for a finished DisCoM-KD run folder.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("run_folder", metavar="RUN_FOLDER", help="output folder of main_DisCoM-KD.py")
    parser.add_argument("--no-figures", action="store_true", help="skip the figures (matplotlib not needed)")
    parser.add_argument("--no-probes", action="store_true", help="skip the probes")
    parser.add_argument("--data", metavar="DIR", help="data folder, if it moved since training "
                                                      "(default: the one recorded in results.json)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    return parser


def main(argv=None) -> int:
    line_buffered_stdout()
    args = build_parser().parse_args(argv)
    return command_status(lambda: inspect_run_folder(args.run_folder, not args.no_figures, not args.no_probes,
                                                     args.data, args.device), (DataError, OSError))


if __name__ == "__main__":
    sys.exit(main())
