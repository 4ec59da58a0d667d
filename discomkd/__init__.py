"""DisCoM-KD (Ienco & Dantas, BMVC 2024): both single-modality classifiers trained at once, cross-modal
knowledge distilled through invariant, informative and irrelevant feature parts.

The package's rooms, from the ground up (each imports only those below it; docs/layout.md draws them):
utils, models, data, evaluation, runs, training, preparing, analysis, comparison, commands.
"""
