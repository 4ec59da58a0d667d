"""The comparison's figure (comparison.png beside comparison.md): each method's test weighted F1 per modality,
every run a dot and the mean with its standard deviation a bar; and beside it discomkd's paired differences with
each other method, every run a dot and the mean with its confidence interval. Drawn by `figures.matplotlib_figure`
(matplotlib optional)."""
from __future__ import annotations

from discomkd.analysis.figures import MODALITY_COLOURS, save_figure
from discomkd.models.methods import FUSED

FUSED_COLOUR = "#555555"


def comparison_figure(new_figure, results: dict, labels: dict[str, str] | None = None):
    """The figure of comparison.json's contents `results` (its runs, aggregates and paired differences); `labels`
    name the rows (`tuning_space.row_label`)."""
    labels = labels or {}
    prefixes = results["prefixes"]
    done = {m: a for m, a in results["aggregated"].items() if a["status"] == "done"}
    paired = results.get("paired") or {}
    height = 1.2 + 0.42 * max(len(done), len(paired), 1)
    figure = new_figure(figsize=(13, height))
    scores, differences = figure.subplots(1, 2, width_ratios=(1, 1) if paired else (1, 0.01))
    offsets = {prefixes[0]: -0.17, prefixes[1]: 0.17, FUSED: 0.0}
    colours = {prefixes[0]: MODALITY_COLOURS[0], prefixes[1]: MODALITY_COLOURS[1], FUSED: FUSED_COLOUR}
    names = list(done)
    for row, method in enumerate(names):
        for column, summary in done[method]["columns"].items():
            values, y = summary["weighted_f1"]["values"], row + offsets[column]
            scores.scatter(values, [y] * len(values), s=14, color=colours[column], alpha=0.6, zorder=3)
            mean, std = summary["weighted_f1"]["mean"], summary["weighted_f1"]["std"] or 0.0
            scores.errorbar(mean, y, xerr=std, fmt="|", markersize=12, capsize=3, color=colours[column], zorder=4)
    scores.set_yticks(range(len(names)), [labels.get(m, m) for m in names])
    scores.invert_yaxis()
    scores.set_xlabel("test weighted F1 (dots: runs; bar: mean ± std)")
    for column in (*prefixes, FUSED):
        if any(column in done[m]["columns"] for m in names):
            scores.scatter([], [], color=colours[column], label="teacher (both modalities)" if column == FUSED
                           else column)
    scores.legend(loc="best", fontsize="small")
    scores.grid(axis="x", alpha=0.3)
    if not paired:
        differences.set_axis_off()
        return figure
    names = list(paired)
    for row, method in enumerate(names):
        for prefix, summary in paired[method].items():
            y = row + offsets[prefix]
            differences.scatter(summary["values"], [y] * len(summary["values"]), s=14, color=colours[prefix],
                                alpha=0.6, zorder=3)
            low, high = summary.get("ci") or (summary["mean"], summary["mean"])
            differences.errorbar(summary["mean"], y, xerr=[[summary["mean"] - low], [high - summary["mean"]]],
                                 fmt="|", markersize=12, capsize=3, color=colours[prefix], zorder=4)
    differences.axvline(0.0, color="black", linewidth=0.8)
    differences.set_yticks(range(len(names)), [labels.get(m, m) for m in names])
    differences.invert_yaxis()
    confidence = next((s.get("confidence") for p in paired.values() for s in p.values()), 0.95)
    reference = labels.get("discomkd", "discomkd")
    differences.set_xlabel(f"{reference} minus the row, paired by run (dots: runs; bar: mean, "
                           f"{confidence:.0%} interval)")
    differences.grid(axis="x", alpha=0.3)
    return figure


def draw_comparison_figure(new_figure, results: dict, path: str, labels: dict[str, str] | None = None) -> None:
    """comparison_figure written to `path` (atomically)."""
    save_figure(comparison_figure(new_figure, results, labels), path)
