"""Turn folders of image files (two modalities) into a DisCoM-KD data folder.

    python prepare_data.py OUTPUT --modality RGB=photos --modality DEPTH=depth [--resize DEPTH=64x64]

The command is `discomkd.commands.prepare` (installed as `discomkd-prepare`); this file runs it from a checkout.
"""
from discomkd.commands.prepare import main

if __name__ == "__main__":
    raise SystemExit(main())
