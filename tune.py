"""Tune a method's training settings on validation with Ray Tune, then test them beside the paper's.

    python tune.py DIR FIRST SECOND [--method discomkd] --trials N --runs K [options as compare.py]

The command is `discomkd.commands.tune` (installed as `discomkd-tune`); this file runs it from a checkout.
"""
from discomkd.commands.tune import main

if __name__ == "__main__":
    raise SystemExit(main())
