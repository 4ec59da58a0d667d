"""The comparison's numbers over runs and its table: per method and column, test weighted F1 and
accuracy summarised over the runs (`aggregate`), with the end-of-run invariance probe and cross-modal
transfer of the methods that have invariant parts, then one row per method (`format_table`); and
DisCoM-KD against each other method run by run (`paired_differences`, `format_paired`)."""
from __future__ import annotations

import numpy as np

from discomkd.evaluation.probes import INVARIANCE_MEANING, TRANSFER_DIRECTIONS
from discomkd.models.methods import FUSED, METHODS
from discomkd.utils.console import format_duration

STD_DDOF = 1  # sample standard deviation over runs: with few runs the population formula understates the spread
CONFIDENCE = 0.95  # of the paired differences' interval
REFERENCE = "discomkd"  # the method the others are paired against, run by run


def _summary(values: list[float]) -> dict:
    return {"values": values, "mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=STD_DDOF)) if len(values) > STD_DDOF else None}


def aggregate(runs: list[dict], methods) -> dict[str, dict]:
    """Per method and column: test weighted F1 and accuracy over the runs (values, mean, std with
    ddof=STD_DDOF) and the training seconds summed over runs; for methods with invariant parts, the
    invariance probe's accuracy and the cross-modal transfer (`_transfer_summary`) over the runs."""
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
        transfer = _transfer_summary([e.get("cross_modal_transfer") for e in done])
        if transfer:
            table[method]["cross_modal_transfer"] = transfer
    return table


def _transfer_summary(transfers: list[dict | None]) -> dict:
    """Per direction that every run measured: {"from", "to", "transfer" and "within": {"accuracy",
    "weighted_f1"} summarised over the runs, "chance": the mean majority-class share of the rows scored}."""
    summary = {}
    for name, _, _ in TRANSFER_DIRECTIONS:
        directions = [t[name] for t in transfers if t is not None]
        if len(directions) < len(transfers) or not directions or any(d["transfer"] is None for d in directions):
            continue
        summary[name] = {"from": directions[0]["from"], "to": directions[0]["to"],
                         **{where: {metric: _summary([d[where][metric] for d in directions])
                                    for metric in ("accuracy", "weighted_f1")} for where in ("transfer", "within")},
                         "chance": float(np.mean([t["chance"][directions[0]["to"]] for t in transfers]))}
    return summary


def _cell(summary: dict, plus_minus: str) -> str:
    std = "" if summary["std"] is None else f" {plus_minus} {summary['std']:.3f}"
    return f"{summary['mean']:.3f}{std}"


def format_table(aggregated: dict, prefixes, runs: int, seeds, split_note: str, markdown: bool,
                 extra_notes=(), settings_from: dict | None = None, labels: dict | None = None) -> str:
    """The comparison table: one row per method, one column per modality (test wF1 / accuracy, mean and
    std over runs), the training time; the best mean test wF1 of each column marked (bold, or `*`).
    `extra_notes` are appended to the footnotes; `settings_from` (per row: where its settings came from,
    `tuning_space.settings_source`) adds a column "settings" before the time; `labels` names rows otherwise
    named by their method (`tuning_space.row_label`: the DisCoM-KD terms their settings switch off)."""
    plus_minus = "±" if markdown else "+-"
    probed = any("invariance_probe" in a for a in aggregated.values())
    transferred = [name for name, _, _ in TRANSFER_DIRECTIONS
                   if any(name in a.get("cross_modal_transfer", {}) for a in aggregated.values())]
    header = (["method"] + [f"{p} test wF1 / acc" for p in prefixes] + ["invariant modality probe [i]"] * probed
              + [f"transfer {_direction(name, prefixes)} / within [x]" for name in transferred]
              + ["settings"] * bool(settings_from) + ["training time"])
    best = _best_means(aggregated, prefixes)
    rows = [_row((labels or {}).get(method, method), a, prefixes, best, probed, transferred, plus_minus, markdown)
            for method, a in aggregated.items()]
    if settings_from:
        rows = [row[:-1] + [settings_from.get(method, "-"), row[-1]] for row, method in zip(rows, aggregated)]
    notes = _notes(aggregated, runs, seeds, split_note, probed, transferred, plus_minus, markdown) + list(extra_notes)
    notes += [f"{method}: {a['note']}" for method, a in aggregated.items() if a["status"] != "done"]
    alignment = ["---"] + [":---:"] * (len(prefixes) + probed + len(transferred)) + ["---"] * bool(settings_from) \
        + ["---:"]
    return render(header, rows, alignment, notes, markdown)


def render(header: list[str], rows: list[list[str]], alignment: list[str], notes: list[str], markdown: bool) -> str:
    """A table and its notes: markdown (`alignment`, one marker per column, e.g. ":---:"; each note ends
    its line), or text columns padded to their widest cell under a rule."""
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(alignment) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines + [""] + [f"{note}  " for note in notes]) + "\n"
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header] + rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines + [""] + notes)


def paired_differences(runs: list[dict], methods, prefixes, reference: str = REFERENCE) -> dict:
    """`reference`'s test weighted F1 minus each other method's, run by run (the same split and seed),
    per modality column both have of their own, over the runs where both finished: {method: {prefix:
    {"values", "mean", "std", "ahead": the runs where `reference` is ahead}}}; {} without `reference`."""
    paired = {}
    for method in [m for m in methods if m != reference and reference in methods]:
        columns = {}
        for prefix in prefixes:
            both = [(ours["columns"][prefix], theirs["columns"][prefix])
                    for ours, theirs in ((run["methods"].get(reference), run["methods"].get(method)) for run in runs)
                    if ours and theirs and ours["status"] == theirs["status"] == "done"
                    and prefix in ours["columns"] and prefix in theirs["columns"]]
            differences = [ours["test"]["weighted_f1"] - theirs["test"]["weighted_f1"] for ours, theirs in both]
            if differences:
                columns[prefix] = {**_summary(differences), "ahead": sum(d > 0 for d in differences),
                                   **_across_runs(differences)}
        if columns:
            paired[method] = columns
    return paired


def _across_runs(differences: list[float]) -> dict:
    """Whether paired differences over runs are beyond their spread: the CONFIDENCE interval of their mean
    (Student's t with n-1 degrees of freedom; None for one run) and the two-sided p-value of the Wilcoxon
    signed-rank test (exact for small n; None for one run or when every difference is 0). With 5 runs the
    Wilcoxon p is at least 0.0625: the interval says more."""
    from scipy import stats  # scipy comes with scikit-learn; imported where it is used
    n = len(differences)
    if n < 2:
        return {"ci": None, "confidence": CONFIDENCE, "wilcoxon_p": None}
    mean, sem = float(np.mean(differences)), float(np.std(differences, ddof=1)) / np.sqrt(n)
    half = float(stats.t.ppf((1 + CONFIDENCE) / 2, n - 1)) * sem
    p = None if not any(differences) else float(stats.wilcoxon(differences).pvalue)
    return {"ci": [float(mean - half), float(mean + half)], "confidence": CONFIDENCE, "wilcoxon_p": p}


def format_paired(paired: dict, prefixes, markdown: bool, reference: str = REFERENCE, labels: dict | None = None) -> str:
    """`paired_differences` as a table (one row per method, named by `labels` where given, one column per
    modality: mean difference, its standard deviation, runs ahead); '' when there is nothing to pair."""
    if not paired:
        return ""
    plus_minus = "±" if markdown else "+-"

    def cell(d: dict | None) -> str:
        if d is None:
            return "-"
        std = "" if d["std"] is None else f" {plus_minus} {d['std']:.3f}"
        interval = "" if d.get("ci") is None else f" [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"
        return f"{d['mean']:+.3f}{std}{interval} ({d['ahead']} of {len(d['values'])})"

    labels = labels or {}
    header = [f"{labels.get(reference, reference)} minus"] + list(prefixes)
    rows = [[labels.get(method, method)] + [cell(columns.get(prefix)) for prefix in prefixes] for method, columns in paired.items()]
    note = (f"Paired by run (the same split and seed): {reference}'s test weighted F1 minus the row's, mean "
            f"{plus_minus} sample standard deviation over the runs both finished, its {CONFIDENCE:.0%} confidence "
            f"interval in square brackets (Student's t, runs - 1 degrees of freedom: an interval holding 0 is a "
            f"difference within the runs' spread; the Wilcoxon signed-rank p-value is in comparison.json), and in "
            f"parentheses the runs where {reference} is ahead.")
    return render(header, rows, ["---"] + [":---:"] * len(prefixes), [note], markdown)


def _best_means(aggregated: dict, prefixes) -> dict:
    """Per modality column, the best mean test wF1 among the methods with a result of their own there."""
    best = {}
    for prefix in prefixes:
        means = [a["columns"][prefix]["weighted_f1"]["mean"] for a in aggregated.values()
                 if a["status"] == "done" and prefix in a["columns"]]
        best[prefix] = max(means) if means else None
    return best


def _direction(name: str, prefixes) -> str:
    """A transfer direction of probes.TRANSFER_DIRECTIONS named by its modalities, e.g. IMG->VEC."""
    source, target = {n: (s, t) for n, s, t in TRANSFER_DIRECTIONS}[name]
    return f"{prefixes[source]}->{prefixes[target]}"


def _row(method: str, a: dict, prefixes, best: dict, probed: bool, transferred: list[str], plus_minus: str,
         markdown: bool) -> list[str]:
    """A method's row: its cells per modality (the fused result, marked [f], where it has none of its own),
    the probe's cell when any row has one, a cell per transfer direction any row has (transfer accuracy /
    within-modality accuracy), the training time."""
    if a["status"] != "done":
        return [method] + ["skipped (needs paired rows)"] * len(prefixes) + ["-"] * (probed + len(transferred)) + ["-"]
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
    for name in transferred:
        direction = a.get("cross_modal_transfer", {}).get(name)
        cells.append("-" if direction is None else f"{_cell(direction['transfer']['accuracy'], plus_minus)} / "
                                                    f"{_cell(direction['within']['accuracy'], plus_minus)}")
    return [method] + cells + [format_duration(a["seconds"]) + (" [t]" if a["includes_teacher_seconds"] else "")]


def _notes(aggregated: dict, runs: int, seeds, split_note: str, probed: bool, transferred: list[str],
           plus_minus: str, markdown: bool) -> list[str]:
    """The table's footnotes: what the numbers are, the splits, and the marks the rows use."""
    spread = (f"mean {plus_minus} sample standard deviation (ddof=1) over {runs} runs" if runs > STD_DDOF
              else "a single run (no standard deviation)")
    notes = [f"Test weighted F1 / accuracy at each model's best validation epoch (best validation C for svm "
             f"and logreg): {spread}, seeds {', '.join(map(str, seeds))}. "
             f"Best mean test wF1 per column {'in bold' if markdown else 'marked *'}.",
             f"Splits: {split_note}."]
    if any(a["status"] == "done" and FUSED in a["columns"] for a in aggregated.values()):
        notes.append("[f] The teacher reads both modalities at test time: one fused result, shown in every column; "
                     "a reference, not a candidate for best.")
    if any(a["status"] == "done" and a["includes_teacher_seconds"] for a in aggregated.values()):
        notes.append("[t] Includes the teacher's training time (one teacher per run serves both kd and dkd).")
    if probed:
        notes.append(f"[i] Validation rows, each modality's best epoch; {INVARIANCE_MEANING}.")
    if transferred:
        chance = {d["to"]: f"{d['chance']:.3f}" for a in aggregated.values()
                  for d in a.get("cross_modal_transfer", {}).values()}
        # one value where, as data/folder.py has it, both modalities share their validation rows
        chance = (next(iter(chance.values())) if len(set(chance.values())) == 1
                  else ", ".join(f"{prefix} {value}" for prefix, value in sorted(chance.items())))
        notes.append("[x] Cross-modal transfer: accuracy of a logistic regression fitted on the invariant part of the "
                     "first-named modality's training rows, scored on the other modality's validation rows (transfer) "
                     f"and on its own (within), each modality's best epoch, mean {plus_minus} std over runs; a "
                     "modality-free invariant part transfers as well as it classifies within; chance (the majority "
                     f"class's share of the validation rows) {chance}.")
    notes.append("Training time: wall time summed over runs, per-epoch evaluation included.")
    return notes
