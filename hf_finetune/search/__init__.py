"""Choosing a recipe's settings by measurement: ``hf-finetune search`` (Optuna through
``Trainer.hyperparameter_search``, each trial a fresh model built as ``train`` builds it) and ``hf-finetune lr-find``
(a learning-rate range test that leaves the model and the output folder as they were)."""
