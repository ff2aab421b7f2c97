"""Training: the shared trainer, its cached features, the export of a trained network."""
