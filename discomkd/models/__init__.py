"""The networks and their losses (torch only): the DisCoM-KD model, the baselines, the alignment terms, and the
table of methods."""
