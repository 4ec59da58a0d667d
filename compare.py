"""The paper's comparison on one data folder: DisCoM-KD against its baselines, over repeated runs.

    python compare.py DIR FIRST SECOND [--runs K] [--methods mono,teacher,...] [--resplit] [options]

The command is `discomkd.commands.compare` (installed as `discomkd-compare`); this file runs it from a checkout.
"""
from discomkd.commands.compare import main

if __name__ == "__main__":
    raise SystemExit(main())
