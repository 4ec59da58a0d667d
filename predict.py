"""Classify one modality alone with a trained DisCoM-KD checkpoint.

    python predict.py CHECKPOINT INPUT.npy|FILES [--rows ROWS.npy] [--labels LABELS.npy] [--output PREFIX]

The command is `discomkd.commands.predict` (installed as `discomkd-predict`); this file runs it from a checkout.
"""
from discomkd.commands.predict import main

if __name__ == "__main__":
    raise SystemExit(main())
