"""Data: sources (image folders, CSV/JSONL files, datasets), splits, reading and checking image files, transforms and the decoded-image cache."""
