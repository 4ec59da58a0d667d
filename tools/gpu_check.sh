#!/usr/bin/env bash
# The GPU check in one call (under 8 minutes on one H100/H200, nothing from the network):
#   bash tools/gpu_check.sh OUTDIR      -> OUTDIR/gpu_check.json and OUTDIR/verdict.txt
# Extra arguments go to tools/gpu_check.py (--skip-tests, --cpu-small).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE  # threads that spin between operations slow everything when cores are shared
exec python tools/gpu_check.py "$@"
