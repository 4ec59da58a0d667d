"""A run's output folder: the files it writes (results, checkpoints, state), one writer at a time, the background
writer."""
