"""Models: loading a pretrained classifier for a new label set, its head and head initialisation, freezing and BatchNorm, LoRA, drop path."""
