"""Runtime: the speed choices for this machine (precision, loader workers, channels-last, tuned kernels) and process placement under accelerate."""
