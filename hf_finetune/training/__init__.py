"""Training: the Trainer subclass, parameter groups and schedules, losses and regularisation, class balance, EMA, callbacks, checkpoints, the feature cache."""
