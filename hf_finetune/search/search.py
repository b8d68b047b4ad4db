"""``hf-finetune search``: ``Trainer.hyperparameter_search`` with Optuna over a recipe.

Each trial is a fresh model built exactly as ``hf-finetune train`` builds it (:func:`hf_finetune.run.build.
build_trainer`: the checkpoint loaded for the data's labels, the head's rows mapped, the layers frozen, the inputs
and callbacks the recipe asks for), from the recipe with the trial's values as flags. The Trainer's ``model_init``
path only returns a model, so the trainer's ``model_init`` here builds the whole trial and hands the trainer what
was built with the model (:func:`adopt_build`); the Trainer then sets the trial's training keys on its arguments
(``hp_space``), trains, reports the objective after every evaluation (each epoch) to Optuna, whose
``MedianPruner`` stops a trial whose best value so far is below the median of the earlier trials at that step.

Trial 0 is the recipe as given (its values of the space's keys), so the table shows where the search started.
The trials train in ``OUT/.trials`` (no checkpoints; caches only), removed at the end; ``OUT`` keeps
``trials.csv``, ``trials.png`` and ``best_recipe.yaml`` (:mod:`hf_finetune.search.report`).
"""

from __future__ import annotations

import logging
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_finetune.config.parser import parse_train_args
from hf_finetune.config.path_checks import check_writable_dir
from hf_finetune.errors import ConfigError, HfFinetuneError
from hf_finetune.run.build import build_trainer, load_data, set_up_process
from hf_finetune.search.one_process import refuse_several_processes
from hf_finetune.search.report import write_best_recipe, write_trials
from hf_finetune.search.space import SearchSpace, value_flag

__all__ = ["SEARCH_FLAGS", "SearchResult", "adopt_build", "run_search", "search_output_dir"]

logger = logging.getLogger("hf_finetune")

# What every trial runs with: evaluation after each epoch (the pruner's steps), nothing saved, no pushes
SEARCH_FLAGS = (
    "--eval_strategy", "epoch", "--save_strategy", "no", "--load_best_model_at_end", "false",
    "--eval_on_start", "false", "--report_to", "none", "--push_to_hub", "false",
)  # fmt: skip
TRIALS_DIR = ".trials"
# What build_trainer gives a trainer along with its model: the trial's inputs, head, losses and callbacks
PER_BUILD = (
    "train_dataset", "eval_dataset", "data_collator", "compute_metrics", "head_names", "optimizer_names",
    "pixel_normalizer", "feature_cache", "image_cache", "mixup", "class_weights", "sampler_weights",
    "class_balance", "ema", "label_smoother", "callback_handler",
)  # fmt: skip


@dataclass
class SearchResult:
    """The best trial (its number, objective and values), the metric and direction, the trials' table
    (``optuna.Study.trials_dataframe``), and the files written."""

    best_trial: int
    best_value: float
    best_params: dict[str, Any]
    start_value: float | None
    metric: str
    direction: str
    trials: Any
    files: dict[str, Path]
    seconds: float


def search_output_dir(recipe_output_dir: str) -> str:
    """The default folder of a search: the recipe's ``output_dir`` with ``-search`` added."""
    return str(Path(recipe_output_dir)).rstrip("/") + "-search"


def adopt_build(trainer, built) -> None:
    """Give ``trainer`` what ``built`` (a trainer from :func:`build_trainer`) was built with beside its model:
    datasets, collator, metrics, head names, caches, losses and callbacks (:data:`PER_BUILD`)."""
    for name in PER_BUILD:
        if name in vars(built):
            setattr(trainer, name, vars(built)[name])
        elif name in vars(trainer):
            delattr(trainer, name)


def run_search(
    recipe_argv: list[str],
    space: SearchSpace,
    n_trials: int,
    timeout: float | None = None,
    output_dir: str | None = None,
    seed: int | None = None,
) -> SearchResult:
    """Search ``space`` over the recipe ``recipe_argv`` (``[RECIPE.yaml, --key value ...]``) for ``n_trials`` trials
    or ``timeout`` seconds (no new trial starts after it), writing the table, plot and best recipe into
    ``output_dir`` (default :func:`search_output_dir`). ``seed``: the sampler's (default: the recipe's seed)."""
    import optuna

    refuse_several_processes("search")  # each rank would run a study of its own (one_process.py)
    if n_trials < 1:
        raise ConfigError(f"n_trials: got {n_trials}; expected at least 1 trial")
    if timeout is not None and not timeout > 0:
        raise ConfigError(f"timeout: got {timeout}; expected a positive number of seconds")
    base = parse_train_args(list(recipe_argv))
    out = Path(output_dir or search_output_dir(base[2].output_dir))
    check_writable_dir(str(out), "output_dir")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"output_dir: {out} is not empty; a search writes into a new or empty folder")
    start, existed = time.time(), out.exists()
    trial_root = out / TRIALS_DIR
    trial_argv = [*recipe_argv, *SEARCH_FLAGS, "--output_dir", str(trial_root)]
    model_args, data_args, training_args = parse_train_args(trial_argv)
    set_up_process(model_args, training_args)
    data = load_data(data_args, training_args)
    try:
        trainer, _, _ = build_trainer(model_args, data_args, training_args, loaded_data=data)
        start_values = {p.name: getattr(_owner(base, p.name), p.name) for p in space.params}
        fixed = {k: v for k, v in start_values.items() if _enqueueable(space, k, v)}
        trainer.model_init = _model_init(trainer, trial_argv, space, data, trial_root, fixed)
        metric = trainer.args.metric_for_best_model.removeprefix("eval_")
        direction = "maximize" if trainer.args.greater_is_better is not False else "minimize"
        storage, name = optuna.storages.InMemoryStorage(), "hf-finetune-search"
        study = optuna.create_study(storage=storage, study_name=name, direction=direction)
        study.enqueue_trial(fixed)  # trial 0: the recipe as given
        logger.info(
            "search: %d trials over %s; objective: eval_%s (%s)",
            n_trials,
            space.describe(),
            metric,
            direction,
        )
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range")
            trainer.hyperparameter_search(
                hp_space=lambda trial: _training_keys(space.suggest(trial), trainer.args),
                compute_objective=lambda metrics: float(metrics[f"eval_{metric}"]),
                n_trials=n_trials,
                direction=direction,
                backend="optuna",
                timeout=timeout,
                storage=storage,
                study_name=name,
                load_if_exists=True,
                sampler=optuna.samplers.TPESampler(seed=training_args.seed if seed is None else seed),
                pruner=optuna.pruners.MedianPruner(n_startup_trials=2),
                catch=(
                    HfFinetuneError,
                ),  # a combination the recipe refuses: that trial fails, the search goes on
            )
    finally:
        shutil.rmtree(trial_root, ignore_errors=True)
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a search that failed leaves no folder it created
    study = optuna.load_study(study_name=name, storage=storage)
    return _finish(study, base, space, out, metric, direction, time.time() - start)


def _finish(
    study, base, space: SearchSpace, out: Path, metric: str, direction: str, seconds: float
) -> SearchResult:
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise ConfigError("search: no trial finished (all pruned or failed); nothing to write")
    best = study.best_trial
    first = study.trials[0]
    files = write_trials(study, out, metric)
    files["best_recipe"] = write_best_recipe(base, best.params, out / "best_recipe.yaml", best, metric)
    result = SearchResult(
        best.number, float(best.value), dict(best.params), first.value, metric, direction,
        study.trials_dataframe(), files, seconds,
    )  # fmt: skip
    logger.info(
        "search: best trial %d of %d, eval_%s %.4f (trial 0, the recipe as given: %s) with %s; written: %s",
        best.number,
        len(study.trials),
        metric,
        best.value,
        "pruned" if first.value is None else f"{first.value:.4f}",
        ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in best.params.items()),
        ", ".join(str(p) for p in files.values()),
    )
    return result


def _model_init(trainer, trial_argv: list[str], space: SearchSpace, data, trial_root: Path, start: dict):
    """The trainer's ``model_init``: the trial's recipe built as ``train`` builds it; the trainer adopts the
    build and the model is returned. Trial 0, the recipe as given (``start``: its values), trains the model the
    trainer was built with (built the same way, from the same seed), once. Without a trial, the recipe as given."""
    unused = [trainer.model]

    def model_init(trial=None):
        params = space.suggest(trial) if trial is not None else {}
        if unused and params == start and len(start) == len(space.params):
            return unused.pop()
        unused.clear()
        flags = [flag for key, value in params.items() for flag in value_flag(key, value)]
        number = trial.number if trial is not None else "base"
        folder = ["--output_dir", str(trial_root / f"run-{number}")]
        model_args, data_args, training_args = parse_train_args([*trial_argv, *flags, *folder])
        built, _, _ = build_trainer(model_args, data_args, training_args, loaded_data=data)
        adopt_build(trainer, built)
        if trial is not None:
            logger.info("trial %d: %s", trial.number, ", ".join(f"{k}={v}" for k, v in params.items()))
        return built.model

    return model_init


def _training_keys(params: dict[str, Any], args) -> dict[str, Any]:
    """The values the Trainer sets on its arguments (``_hp_search_setup``): those of training keys only; the
    others shaped the trial's build (model_init)."""
    return {k: v for k, v in params.items() if hasattr(args, k)}


def _owner(parsed, key: str):
    return next(obj for obj in parsed if hasattr(obj, key))


def _enqueueable(space: SearchSpace, key: str, value: Any) -> bool:
    """A start value Optuna can fix: any number for a range (out of range is allowed), one of the choices."""
    param = next(p for p in space.params if p.name == key)
    if param.choices is not None:
        return param.contains(value)
    return isinstance(value, (int, float)) and not isinstance(value, bool)
