"""Evaluation: generation, suites, the one evaluation path, images made elsewhere, metric-vs-step curves."""
