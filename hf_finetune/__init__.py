"""hf_finetune."""
