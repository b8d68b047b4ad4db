"""``make demo`` / ``python -m hf_finetune.demo``: a real fine-tune on real digit scans, built offline."""
