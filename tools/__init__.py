"""Maintenance commands, run from the repository root (`python -m tools.gpu_check OUTDIR`). Like the
commands beside the package, they are imported by nothing but tests."""
