"""See what a finished DisCoM-KD run learned: disentanglement probes and figures.

    python inspect_run.py RUN_FOLDER [--no-figures] [--no-probes] [--data DIR]

The command is `discomkd.commands.inspect_run` (installed as `discomkd-inspect`); this file runs it from a checkout.
"""
from discomkd.commands.inspect_run import main

if __name__ == "__main__":
    raise SystemExit(main())
