"""Training speed of DisCoM-KD on synthetic data, with the real training code.

    python benchmark.py [--shape eurosat|cpu-small] [--end-to-end] [--compare-plain]

The command is `discomkd.commands.benchmark` (installed as `discomkd-benchmark`); this file runs it from a checkout.
"""
from discomkd.commands.benchmark import main

if __name__ == "__main__":
    raise SystemExit(main())
