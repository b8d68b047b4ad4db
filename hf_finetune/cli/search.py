"""``hf-finetune search RECIPE.yaml --search_space SPACE.yaml [--n_trials 20] [--timeout S] [--output_dir DIR]
[--key value ...]``: Optuna through ``Trainer.hyperparameter_search`` (:mod:`hf_finetune.search.search`).

The arguments and the space are checked before anything is loaded, and a launch of several processes is refused
(:mod:`hf_finetune.search.one_process`); ``--help`` imports nothing heavy."""

from __future__ import annotations

import argparse

from hf_finetune.cli.arguments import COMMANDS, LightParser
from hf_finetune.errors import ConfigError

__all__ = ["build_parser", "run"]


def build_parser() -> argparse.ArgumentParser:
    parser = LightParser(
        prog="hf-finetune search",
        description=COMMANDS["search"] + ". Each trial builds a fresh model from the recipe with the trial's "
        "values (as `hf-finetune train` would), trains it and reports the validation metric "
        "(metric_for_best_model) after every epoch; Optuna's MedianPruner stops trials below the median. "
        "Trial 0 is the recipe as given. Written into the output folder: trials.csv, trials.png and "
        "best_recipe.yaml (the recipe with the best values, for `hf-finetune train`). Other --key value flags "
        "override the recipe for every trial. Runs in one process: train's --accelerate_config and launch flags are "
        "refused (train the best recipe under them). Needs optuna: pip install 'hf-finetune[search]'.",
    )
    parser.add_argument("recipe", metavar="RECIPE.yaml", help="the recipe to search around")
    parser.add_argument(
        "--search_space",
        "--search-space",
        required=True,
        metavar="SPACE.yaml",
        help="recipe keys and their ranges or choices, e.g. learning_rate: {low: 1.0e-5, high: 1.0e-1, log: true}; "
        "freeze_layers: {choices: [0, -1]}",
    )
    parser.add_argument("--n_trials", "--n-trials", type=int, default=20, help="trials at most (default 20)")
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds after which no new trial starts (default: none)"
    )
    parser.add_argument(
        "--output_dir",
        "--output-dir",
        default=None,
        help="where trials.csv, trials.png and best_recipe.yaml go; new or empty (default: the recipe's "
        "output_dir with -search added)",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="the sampler's seed (default: the recipe's seed)"
    )
    return parser


def run(argv: list[str]) -> int:
    args, rest = build_parser().parse_known_args(argv)
    from hf_finetune.search.one_process import refuse_launch_flags, refuse_several_processes

    refuse_several_processes("search")  # one Optuna study, one writer (docs/search.md)
    refuse_launch_flags("search", rest)
    if args.n_trials < 1:
        raise ConfigError(f"--n_trials: got {args.n_trials}; expected at least 1 trial")
    if args.timeout is not None and not args.timeout > 0:
        raise ConfigError(f"--timeout: got {args.timeout:g}; expected a positive number of seconds")
    import importlib.util

    if importlib.util.find_spec("optuna") is None:
        raise ConfigError("search needs optuna, which is not installed: pip install 'hf-finetune[search]'")
    from hf_finetune.config.parser import parse_train_args
    from hf_finetune.search.search import run_search
    from hf_finetune.search.space import load_space

    recipe_argv = [args.recipe, *rest]
    parse_train_args(list(recipe_argv))  # the recipe's own errors first, named as train names them
    space = load_space(args.search_space, recipe_argv)
    result = run_search(recipe_argv, space, args.n_trials, args.timeout, args.output_dir, args.seed)
    start = "pruned" if result.start_value is None else f"{result.start_value:.4f}"
    print(
        f"best trial {result.best_trial}: eval_{result.metric} {result.best_value:.4f} (trial 0, the recipe as "
        f"given: {start}); {len(result.trials)} trials in {result.seconds:.0f} s"
    )
    print(f"best recipe: {result.files['best_recipe']}  (hf-finetune train {result.files['best_recipe']})")
    return 0
