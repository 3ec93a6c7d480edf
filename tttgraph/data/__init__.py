"""Datasets for the examples; ``synthetic`` is the embedded default (no downloads)."""
