"""Training one method on one data folder: the settings, the setup, an epoch, the scores, the one loop, resuming."""
