"""The run pipeline: one training run from parsed arguments to a saved model, and what it may do to its output folder."""
