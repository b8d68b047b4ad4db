"""``hf-finetune lr-find RECIPE.yaml [--key value ...] [--start_lr 1e-7] [--end_lr 10] [--num_steps 100]
[--plot PATH]``: a learning-rate range test (:mod:`hf_finetune.search.lr_find`), in one process
(:mod:`hf_finetune.search.one_process`). ``--help`` imports nothing heavy."""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_finetune.cli.arguments import COMMANDS, LightParser

__all__ = ["build_parser", "run", "default_plot_path"]


def default_plot_path(recipe: str) -> str:
    """``lr_find-<recipe name>.png`` in the current folder."""
    return f"lr_find-{Path(recipe).stem}.png"


def build_parser() -> argparse.ArgumentParser:
    parser = LightParser(
        prog="hf-finetune lr-find",
        description=COMMANDS["lr-find"]
        + ". The learning rate (the body's; every optimizer group keeps its ratio "
        "to it) ramps exponentially from --start_lr to --end_lr over --num_steps training steps; the test stops "
        "once the smoothed loss exceeds 4x its best. Suggested: the rate where the smoothed loss falls fastest "
        "(steepest slope against log lr, before the minimum); the minimum's rate / 10 is printed too. The model "
        "and the recipe's output folder are left untouched. Other --key value flags override the recipe. Runs in one process: train's "
        "--accelerate_config and launch flags are refused.",
    )
    parser.add_argument("recipe", metavar="RECIPE.yaml", help="the recipe whose run is tested")
    parser.add_argument(
        "--start_lr", "--start-lr", type=float, default=1e-7, help="first rate (default 1e-7)"
    )
    parser.add_argument("--end_lr", "--end-lr", type=float, default=10.0, help="last rate (default 10)")
    parser.add_argument(
        "--num_steps",
        "--num-steps",
        type=int,
        default=100,
        help="training steps of the ramp, 2 to 500 (default 100)",
    )
    parser.add_argument(
        "--plot",
        default=None,
        help="the loss-vs-rate plot, a .png outside the recipe's output folder (default: lr_find-<recipe>.png "
        "in the current folder, replaced by a later lr-find of the same recipe)",
    )
    return parser


def run(argv: list[str]) -> int:
    args, rest = build_parser().parse_known_args(argv)
    from hf_finetune.search.one_process import refuse_launch_flags, refuse_several_processes

    refuse_several_processes("lr-find")  # one ramp of one model (docs/search.md)
    refuse_launch_flags("lr-find", rest)
    from hf_finetune.search.lr_find import check_ramp, find_learning_rate

    check_ramp(args.start_lr, args.end_lr, args.num_steps)
    plot = args.plot or default_plot_path(args.recipe)
    result = find_learning_rate([args.recipe, *rest], args.start_lr, args.end_lr, args.num_steps, plot)
    stopped = f", stopped at step {len(result.lrs)}: the loss diverged" if result.diverged else ""
    print(
        f"lr-find: {len(result.lrs)} steps from {result.lrs[0]:.1e} to {result.lrs[-1]:.1e}{stopped}; "
        f"minimum of the smoothed loss at {result.minimum_tenth * 10:.2e}"
    )
    print(
        f"suggested learning_rate: {result.suggestion:.2e} ({result.rule}); minimum / 10: {result.minimum_tenth:.2e}"
    )
    print(f"plot: {plot}")
    return 0
