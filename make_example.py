"""Write the embedded example: two modalities of scikit-learn's handwritten digits.

    python make_example.py [FOLDER] [--overwrite]     (default: example_digits)

The command is `discomkd.commands.make_example` (installed as `discomkd-example`); this file runs it from a checkout.
"""
from discomkd.commands.make_example import main

if __name__ == "__main__":
    raise SystemExit(main())
