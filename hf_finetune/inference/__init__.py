"""Inference: predicting labels for image files, scoring a saved model on a split, metrics and the reports a person reads."""
