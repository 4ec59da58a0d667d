#!/usr/bin/env bash
# docs/results.md's tables re-derived with today's code, one command after the other, into results/ (git-ignored),
# each printed in the form the page shows it:
#   bash tools/results.sh          (or make results)
# About 4 h 45 min on a 2-core CPU (the fair table needs Ray), nothing else running (the page says how long it took); a comparison stopped
# midway continues with its line plus --resume (without --overwrite). PYTHON names the
# interpreter (default .venv/bin/python, which make creates), OUT the folder (default results).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-results}
export OMP_WAIT_POLICY=PASSIVE  # threads that spin between operations slow everything when cores are shared
test -f example_digits/labels.npy || "$PYTHON" make_example.py example_digits
started=$(date +%s)
echo "== the quick-start run (make demo's training)"
"$PYTHON" main_DisCoM-KD.py example_digits IMAGE PROJ --epochs 30 --augment-first none --quiet \
    --output "$OUT/quick_start" --overwrite
"$PYTHON" inspect_run.py "$OUT/quick_start"
echo "== DisCoM-KD, the baselines, the loss ablation and the remedies for a fooled discriminator: 5 runs"
"$PYTHON" compare.py example_digits IMAGE PROJ --runs 5 --resplit --epochs 30 --augment-first none --ablation \
    --methods mono,teacher,kd,dkd,dml,discomkd,discomkd-legacy,svm,logreg,discomkd-dann,discomkd-mlp-disc,discomkd-fast-disc,discomkd-remedies \
    --output "$OUT/comparison" --overwrite
echo "== the fair table: every method's settings searched on validation, 8 trials each, then 3 runs (needs Ray)"
if "$PYTHON" -c "import ray.tune" 2>/dev/null; then
    "$PYTHON" compare.py example_digits IMAGE PROJ --tune 8 --runs 3 --epochs 30 --augment-first none \
        --methods mono,teacher,kd,dkd,dml,discomkd,svm --executor ray --output "$OUT/fair" --overwrite
else
    echo "skipped: Ray is not installed (pip install -r requirements-ray.txt)"
fi
echo "== re-derived in $(( ($(date +%s) - started) / 60 )) minutes"
