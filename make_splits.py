"""Write stratified train/valid/test split files for a data folder.

    python make_splits.py DIR [--seed S] [--fractions TRAIN VALID TEST] [--overwrite]

The command is `discomkd.commands.make_splits` (installed as `discomkd-splits`); this file runs it from a checkout.
"""
from discomkd.commands.make_splits import main

if __name__ == "__main__":
    raise SystemExit(main())
