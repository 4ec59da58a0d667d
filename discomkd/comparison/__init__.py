"""Methods compared over repeated runs: jobs, executors (local, Ray), the table, the classical baselines, tuning."""
