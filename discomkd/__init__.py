"""DisCoM-KD's library: data folders, the training engine, methods and baselines, run files, the
comparison and its executors, tuning, image folders and inference.

The model and its losses are `model_pytorch` (torch only); the single run behind `main_DisCoM-KD.py`
is `functions`. Imports run one way: commands -> functions -> discomkd -> model_pytorch.
"""
