"""The wall time of the paper's comparison grid on N GPUs with the Ray executor, from per-model times.

    python tools/grid_projection.py

Ray's scheduling is modelled as list scheduling: every task is submitted at once, and a free GPU takes the first
ready task in submission order; kd and dkd are ready once their run's teacher has finished. The per-model times
are the embedded example's comparison in README.md (2-core CPU, 30 epochs, training times summed over 5 runs);
the ablation's five models are taken to cost what discomkd costs.
"""
RUNS = 5
SUMMED = {"mono": 7 * 60 + 48, "teacher": 8 * 60 + 36, "kd": 17 * 60 + 24, "dkd": 17 * 60 + 20,
          "discomkd": 14 * 60 + 25, "discomkd-legacy": 14 * 60 + 48}  # seconds over 5 runs; kd/dkd include the teacher
PER_MODEL = {"mono": SUMMED["mono"] / (2 * RUNS), "teacher": SUMMED["teacher"] / RUNS,
             "kd": (SUMMED["kd"] - SUMMED["teacher"]) / (2 * RUNS), "dkd": (SUMMED["dkd"] - SUMMED["teacher"]) / (2 * RUNS),
             "discomkd": SUMMED["discomkd"] / RUNS, "discomkd-legacy": SUMMED["discomkd-legacy"] / RUNS}
ABLATIONS = ("no-adv", "no-mod", "no-aux", "no-perp", "invariant-only")


def grid(runs: int, ablation: bool) -> list[tuple[int, str, float]]:
    """(run, method, seconds) per model, in the order the Ray executor submits them."""
    tasks = []
    for run in range(runs):
        models = ["mono", "mono", "teacher", "kd", "kd", "dkd", "dkd", "discomkd", "discomkd-legacy"]
        tasks += [(run, m, PER_MODEL[m]) for m in models]
        tasks += [(run, f"discomkd-{a}", PER_MODEL["discomkd"]) for a in ABLATIONS] if ablation else []
    return tasks


def wall_time(tasks, gpus: int) -> float:
    pending, running, now, teacher_done = list(tasks), [], 0.0, {}
    while pending or running:
        while len(running) < gpus:
            ready = [t for t in pending if t[1] not in ("kd", "dkd") or teacher_done.get(t[0], float("inf")) <= now]
            if not ready:
                break
            pending.remove(ready[0])
            running.append((now + ready[0][2], ready[0]))
        running.sort(key=lambda entry: entry[0])
        now, (run, method, _) = running.pop(0)
        if method == "teacher":
            teacher_done[run] = now
    return now


if __name__ == "__main__":
    print({m: round(s) for m, s in PER_MODEL.items()})
    for ablation in (False, True):
        tasks = grid(RUNS, ablation)
        serial = sum(t[2] for t in tasks)
        for gpus in (1, 2, 4, 8):
            wall = wall_time(tasks, gpus)
            print(f"ablation {ablation!s:5}  {len(tasks)} models  {gpus} GPU(s): {wall / 60:6.1f} min, "
                  f"speed-up {serial / wall:.2f}")
