"""DisCoM-KD (Ienco & Dantas, BMVC 2024): both single-modality classifiers trained at once, cross-modal
knowledge distilled through invariant, informative and irrelevant feature parts.

The package's rooms, from the ground up (each imports only those below it; docs/layout.md draws them):
utils, models, data, evaluation, runs, training, preparing, analysis, comparison, commands.
"""
import os

# PyTorch's OpenMP threads spin between operations by default: on a CPU shared with another job (a comparison
# beside the tests, two trainings) a small model then trains 7-9x slower (docs/performance.md, "A CPU shared with
# other jobs"). They wait passively instead, unless the user chose otherwise; this must happen before torch is
# imported, and every command imports this package first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
