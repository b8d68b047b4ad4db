"""The ``hf-finetune`` command line, a thin layer over the Python API; heavy imports happen inside the commands so ``--help`` stays fast."""

from hf_finetune.cli.commands import build_parser, console_main, main

__all__ = ["build_parser", "console_main", "main"]
