"""The wall time of a comparison on N GPUs with the Ray executor, projected from a finished comparison's own
per-model training times.

    python tools/grid_projection.py OUTPUT/comparison.json [--gpus 1 2 4 8] [--as-ablation]

Ray's scheduling is modelled as list scheduling: every task is submitted at once, and a free GPU takes the first
ready task in submission order; kd and dkd are ready once their run's teacher has finished. Each model costs what it
cost in the comparison read (its `part_seconds`); `--as-ablation` adds the loss ablation's five models per run at
the cost of that run's discomkd model, for a comparison that did not train them.
"""
from __future__ import annotations

import argparse
import json
import sys

from discomkd.utils.errors import EXIT_BAD_INPUT

ABLATIONS = ("no-adv", "no-mod", "no-aux", "no-perp", "invariant-only")
NEEDS_TEACHER = ("kd", "dkd")


def tasks_of(comparison: dict, as_ablation: bool) -> list[tuple[int, str, float]]:
    """(run, method, seconds) per model, in the order the Ray executor submits them (the teacher first)."""
    tasks = []
    for run, result in enumerate(comparison["results"]):
        entries = {m: e for m, e in result["methods"].items() if e.get("status") == "done" and "part_seconds" in e}
        teacher = next((e["seconds"] - sum(e["part_seconds"]) for m, e in entries.items() if m in NEEDS_TEACHER),
                       None)
        if "teacher" in entries:
            teacher = entries["teacher"]["part_seconds"][0]
        if teacher is not None:
            tasks.append((run, "teacher", teacher))
        for method, entry in entries.items():
            if method != "teacher":
                tasks += [(run, method, seconds) for seconds in entry["part_seconds"]]
        if as_ablation and "discomkd" in entries:
            tasks += [(run, f"discomkd-{a}", entries["discomkd"]["part_seconds"][0]) for a in ABLATIONS
                      if f"discomkd-{a}" not in entries]
    return tasks


def wall_time(tasks: list[tuple[int, str, float]], gpus: int) -> float:
    """Seconds until the last task ends on `gpus` GPUs, one task per GPU."""
    pending, running, now, teacher_done = list(tasks), [], 0.0, {}
    while pending or running:
        while len(running) < gpus:
            ready = [t for t in pending if t[1] not in NEEDS_TEACHER or teacher_done.get(t[0], float("inf")) <= now]
            if not ready:
                break
            pending.remove(ready[0])
            running.append((now + ready[0][2], ready[0]))
        running.sort(key=lambda entry: entry[0])
        now, (run, method, _) = running.pop(0)
        if method == "teacher":
            teacher_done[run] = now
    return now


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Project a comparison's wall time on N GPUs with the Ray executor.")
    parser.add_argument("comparison", metavar="COMPARISON_JSON", help="a finished compare.py run's comparison.json")
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4, 8], help="GPU counts to project")
    parser.add_argument("--as-ablation", action="store_true", help="add the loss ablation's models to every run")
    args = parser.parse_args(argv)
    try:
        with open(args.comparison) as handle:
            tasks = tasks_of(json.load(handle), args.as_ablation)
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"error: {args.comparison}: not a readable comparison.json ({error})", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not tasks:
        print(f"error: {args.comparison}: no trained model to project", file=sys.stderr)
        return EXIT_BAD_INPUT
    serial = sum(t[2] for t in tasks)
    print(f"{len(tasks)} models, {serial / 60:.1f} min one after the other")
    for gpus in args.gpus:
        wall = wall_time(tasks, gpus)
        print(f"{gpus} GPU(s): {wall / 60:6.1f} min, speed-up {serial / wall:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
