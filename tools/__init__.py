"""Maintenance tools of a checkout, not installed: the architecture figure, the GPU-hours projection of a comparison,
the GPU check's and the results' shell commands. Imported by nothing but their tests."""
