"""The plan: presets, recipes and locations resolved once into a frozen plan of models and jobs."""
