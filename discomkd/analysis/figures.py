"""Figures of a finished run (inspect_run.py): its training curves, each modality's test confusion
matrix, and a t-SNE of the test features of every part. Drawn with matplotlib's Agg canvas (no display,
no pyplot global state); matplotlib is optional, `matplotlib_figure()` says whether it is there.
"""
from __future__ import annotations

import math
import os

import numpy as np

from discomkd.data.folder import DataFolder
from discomkd.evaluation.metrics import classification_metrics
from discomkd.evaluation.probes import PARTS
from discomkd.models.discomkd import LOSS_TERMS
from discomkd.runs.outputs import FIGURES_FOLDER
from discomkd.utils.files import atomic_write

TSNE_ROWS = 1000  # rows per modality in the t-SNE figure: enough to see clusters, seconds to compute
MISSING_MATPLOTLIB = "matplotlib is not installed, figures skipped: pip install matplotlib to draw them"
# Modalities get dark blue and vermilion, far from each other for colour-blind readers too.
MODALITY_COLOURS = ("#1f4e9c", "#d55e00")
FIGURE_DPI = 130  # readable at 100% zoom in a README while keeping the files ~100-300 kB


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
    from sklearn.metrics import confusion_matrix  # imported when used: about a second

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
    from sklearn.manifold import TSNE  # imported when used: about a second
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


def draw_figures(new_figure, output: str, results: dict, data: DataFolder,
                 features: dict[str, dict[str, np.ndarray]], seed: int = 0) -> list[str]:
    """Writes training_curves.png, confusion_<PREFIX>.png and tsne.png to OUTPUT/figures (OUTPUT: the run folder
    unless the user chose another); returns the paths."""
    folder = os.path.join(output, FIGURES_FOLDER)
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
