#!/usr/bin/env bash
# The GPU check in one call from a checkout (planned for under 8 minutes on one H100/H200, nothing from the
# network; docs/gpu-check.md gives the plan per step):
#   bash tools/gpu_check.sh OUTDIR      -> OUTDIR/gpu_check.json and OUTDIR/verdict.txt, rewritten after every step
# Extra arguments go to the command (discomkd-gpu-check where the package is installed): --cpu-small (toy sizes on
# a CPU), --steps a_end_to_end,... (rerun some steps), --tests (the test suite as well, on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE  # threads that spin between operations slow everything when cores are shared
exec python3 -m discomkd.commands.gpu_check "$@"
