"""Train DisCoM-KD on two modalities and print each modality's test F1 and accuracy.

    python main_DisCoM-KD.py DIR FIRST_PREFIX SECOND_PREFIX [options]

The command is `discomkd.commands.train` (installed as `discomkd-train`); this file runs it from a checkout.
"""
from discomkd.commands.train import main

if __name__ == "__main__":
    raise SystemExit(main())
