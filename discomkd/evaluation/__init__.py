"""Scores of predictions and features: the classification metrics, and the linear probes of learned parts."""
