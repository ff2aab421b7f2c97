"""Training data: the readers of each layout, the data specs' meaning, checks, data steps, synthesis, score tables."""
