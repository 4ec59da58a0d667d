"""The comparison's numbers over runs and its table: per method and column, test weighted F1 and
accuracy summarised over the runs (`aggregate`), then one row per method (`format_table`)."""
from __future__ import annotations

import numpy as np

from discomkd.methods import FUSED, METHODS
from discomkd.probes import INVARIANCE_MEANING
from discomkd.training import format_duration

STD_DDOF = 1  # sample standard deviation over runs: with few runs the population formula understates the spread


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
    probed = any("invariance_probe" in a for a in aggregated.values())
    header = (["method"] + [f"{p} test wF1 / acc" for p in prefixes] + ["invariant modality probe [i]"] * probed
              + ["training time"])
    best = _best_means(aggregated, prefixes)
    rows = [_row(method, a, prefixes, best, probed, plus_minus, markdown) for method, a in aggregated.items()]
    notes = _notes(aggregated, runs, seeds, split_note, probed, plus_minus, markdown) + list(extra_notes)
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


def _best_means(aggregated: dict, prefixes) -> dict:
    """Per modality column, the best mean test wF1 among the methods with a result of their own there."""
    best = {}
    for prefix in prefixes:
        means = [a["columns"][prefix]["weighted_f1"]["mean"] for a in aggregated.values()
                 if a["status"] == "done" and prefix in a["columns"]]
        best[prefix] = max(means) if means else None
    return best


def _row(method: str, a: dict, prefixes, best: dict, probed: bool, plus_minus: str, markdown: bool) -> list[str]:
    """A method's row: its cells per modality (the fused result, marked [f], where it has none of its own),
    the probe's cell when any row has one, the training time."""
    if a["status"] != "done":
        return [method] + ["skipped (needs paired rows)"] * len(prefixes) + ["-"] * probed + ["-"]
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
    return [method] + cells + [format_duration(a["seconds"]) + (" [t]" if a["includes_teacher_seconds"] else "")]


def _notes(aggregated: dict, runs: int, seeds, split_note: str, probed: bool, plus_minus: str, markdown: bool
           ) -> list[str]:
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
    notes.append("Training time: wall time summed over runs, per-epoch evaluation included.")
    return notes
