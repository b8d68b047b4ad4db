"""The training entry point: :func:`main` runs one fine-tuning as titled steps of one call each.

check the Hub keys -> set up the process -> load data -> load model -> build the trainer -> train -> evaluate
-> thresholds (multi-label) -> test -> save -> summarize -> push.

A test split (a ``test/`` folder, a Hub dataset's ``test`` split) is scored once, by the final model, after
everything is chosen (:mod:`hf_finetune.run.test_split`); nothing before that step reads it.

The output folder only looks like a finished model at the very end: checkpoints live in ``checkpoint-*``
subfolders while training, and the final files (the model card ``README.md`` and the per-class validation
figures ``eval_per_class.json`` among them) are written into a hidden temporary folder and moved into place
with the weights file last (:mod:`hf_finetune.run.save`).

``push_to_hub: true`` (with ``hub_model_id``) pushes that final folder once, at the very end, from the main
process only (:func:`hf_finetune.hub.push.push_to_hub`); transformers' own pushes of every checkpoint are off. The Hub
keys are checked before anything is trained.

The steps live beside this module: :mod:`hf_finetune.run.build` (data, model and Trainer),
:mod:`hf_finetune.run.prepare` (the model made ready to train), :mod:`hf_finetune.run.inputs` (what the Trainer
trains on), :mod:`hf_finetune.run.save` (the final save), :mod:`hf_finetune.run.result` (:class:`TrainResult`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hf_finetune.config.arguments import DataArguments, FinetuneTrainingArguments, ModelArguments
from hf_finetune.data.image_cache import cache_root as image_cache_root
from hf_finetune.data.image_check import write_bad_image_report
from hf_finetune.data.multi_label import is_multi_label
from hf_finetune.data.streaming import refuse_unstreamable
from hf_finetune.errors import TrainingInterrupted
from hf_finetune.hub import push as hub_push
from hf_finetune.hub.push import check_hub_arguments
from hf_finetune.inference.extra_metrics import load_extra_metrics
from hf_finetune.run.build import build_trainer, load_data, load_model, set_up_process
from hf_finetune.run.output_dir import run_folder
from hf_finetune.run.result import TrainResult, new_result, summarize_run
from hf_finetune.run.save import STAGING, final_model_in_place, save_run
from hf_finetune.run.test_split import score_test_split
from hf_finetune.run.thresholds import choose_thresholds
from hf_finetune.runtime.plan import RunPlan
from hf_finetune.runtime.speed_plan import resolve_speed
from hf_finetune.training.checkpoints import is_finished_model_dir, last_checkpoint
from hf_finetune.training.feature_cache import CACHE_DIR as FEATURE_CACHE_DIR
from hf_finetune.training.interrupt import GracefulStop, interrupting_final_save

__all__ = ["main", "TrainResult", "is_finished_model_dir", "build_trainer", "STAGING", "last_checkpoint"]

logger = logging.getLogger("hf_finetune")


def main(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: FinetuneTrainingArguments,
    explicit: dict[str, Any] | None = None,
    callbacks=None,
    plan: RunPlan | None = None,
) -> TrainResult:
    """Fine-tune ``model_args.model_name_or_path`` on the data of ``data_args``; returns a :class:`TrainResult`.

    The output folder is checked and locked for the whole run first (:mod:`hf_finetune.run.output_dir`).
    ``plan``: the :class:`~hf_finetune.runtime.plan.RunPlan` the run records what it resolves in (a new one when
    None); ``training_args`` stays as parsed."""

    with run_folder(model_args, data_args, training_args, explicit) as folder:
        start, out, stopper = time.time(), Path(training_args.output_dir), GracefulStop()
        plan = RunPlan() if plan is None else plan
        # Check the Hub keys: before any training, a bad Hub setting loses nothing
        push_repo = check_hub_arguments(training_args)
        load_extra_metrics(training_args.metrics)  # the extra metrics: one that cannot load stops here
        # Choose the speed keys' auto values for this machine, into the plan (a copy of the parsed arguments)
        training_args = resolve_speed(training_args, plan)
        with _final_push_only(training_args):
            with _nothing_left_on_failure(out, image_cache_root(out, training_args.image_cache_dir)):
                # Set up the process: the seed, freed memory, warnings about code and pickles it will load
                set_up_process(model_args, training_args)
                # Load data (streamed: keys that need a pass over it first are refused)
                refuse_unstreamable(model_args, data_args, training_args, plan)
                data = load_data(data_args, training_args)
                # Load model, with a head for the data's labels
                loaded = load_model(
                    model_args, training_args, data.labels, multi_label=is_multi_label(data.dataset["train"])
                )
                # Build the trainer
                trainer, loaded, data = build_trainer(
                    model_args,
                    data_args,
                    training_args,
                    loaded_data=data,
                    callbacks=[*(callbacks or []), stopper],
                    plan=plan,
                    loaded_model=loaded,
                    checkpoint_recipe=folder.checkpoint_recipe(data.labels),
                )
                # Check the output folder against the data (--resume's labels); list the images skipped; the plan
                _prepare_output(folder, trainer, data, out, plan)
                # Train
                train_metrics = _train(trainer, stopper, folder.resume, data, out)
            # a stop signal from here on abandons the final save and says so, in one line
            newest = functools.partial(_newest_checkpoint, trainer, out)
            with interrupting_final_save(trainer.state.max_steps, newest):
                # Evaluate
                evaluation = _evaluate(trainer, data)
                # Thresholds: a multi-label model's, chosen on the validation split, saved with the model
                choose_thresholds(trainer, loaded, data, training_args.threshold, evaluation)
                # The final weights in place (EMA, the whole model after cached features); caches removed
                result = _final_result(trainer, loaded, data, training_args, train_metrics, evaluation)
                # Test: the final model scored once on the test split, when the data has one
                result.test_metrics = score_test_split(trainer, data)
                # Save the final model (the weights last) with its metrics, figures and model card
                _save(trainer, loaded, data, training_args, data_args, explicit, result, evaluation)
        # Summarize: the best epoch, the files saved, one summary in the log
        _summarize(result, trainer, training_args, start)
        # Push the finished folder to the Hub (push_to_hub), from the main process only
        result.hub_commit_url = _push(out, push_repo, trainer, training_args)
        return result


@contextlib.contextmanager
def _final_push_only(training_args):
    """transformers' Trainer pushes at its start and at every save when ``push_to_hub`` is set: switch that off
    while training (the finished folder is pushed once, at the end), and give the caller its arguments back."""
    flag = training_args.push_to_hub
    training_args.push_to_hub = False
    try:
        yield
    finally:
        training_args.push_to_hub = flag


@contextlib.contextmanager
def _nothing_left_on_failure(out: Path, image_cache: Path) -> Iterator[None]:
    """A run that fails before its final save removes its caches, and the output folder when the Trainer created
    it and nothing was written (a bad input, or a failure before any write, leaves nothing)."""
    existed = out.exists()
    try:
        yield
    except BaseException:
        for cache_dir in (out / FEATURE_CACHE_DIR, image_cache):
            shutil.rmtree(cache_dir, ignore_errors=True)
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def _prepare_output(folder, trainer, data, out: Path, plan: RunPlan) -> None:
    """``--resume``: the labels the checkpoint was trained on;
    ``OUT/bad_images.json``, the files skipped by the scan or the decoder; and ``OUT/run_plan.json``, what the run
    chose for this machine and model, and why."""
    folder.check_labels(data.labels)
    write_bad_image_report(out, data)
    if trainer.is_world_process_zero():
        plan.save(out)


def _newest_checkpoint(trainer, out: Path) -> str | None:
    return trainer.last_saved_checkpoint or last_checkpoint(out)


def _train(trainer, stopper: GracefulStop, resume, data, out: Path) -> dict[str, Any]:
    """``trainer.train()`` with the stop signals handled; the training metrics. A run stopped by a signal before
    its last step ends in :class:`~hf_finetune.errors.TrainingInterrupted`, naming the checkpoint to resume."""
    with stopper.handling_signals():
        train_output = trainer.train(resume_from_checkpoint=resume)
    if stopper.stopped_at is not None and stopper.stopped_at < trainer.state.max_steps:
        raise TrainingInterrupted(
            stopper.signum, stopper.stopped_at, trainer.state.max_steps, _newest_checkpoint(trainer, out)
        )
    train_metrics = dict(train_output.metrics)
    train_metrics["train_samples"] = (
        data.train_size if getattr(data, "streaming", False) else len(data.dataset["train"])
    )
    return train_metrics


def _evaluate(trainer, data) -> tuple[dict[str, Any], Any]:
    """The final evaluation's metrics, and its predictions (kept for the per-class figures)."""
    captured: dict[str, Any] = {}
    compute_metrics = trainer.compute_metrics
    if compute_metrics is not None:

        def capture(prediction):
            captured["prediction"] = prediction
            return compute_metrics(prediction)

        trainer.compute_metrics = capture
    try:
        eval_metrics = trainer.evaluate()
    finally:
        trainer.compute_metrics = compute_metrics
    eval_metrics["eval_samples"] = len(data.dataset["validation"])
    return eval_metrics, captured.get("prediction")


def _final_result(trainer, loaded, data, training_args, train_metrics, evaluation) -> TrainResult:
    """The run's :class:`TrainResult`, with the final weights in ``trainer.model`` (:mod:`hf_finetune.run.save`);
    ``evaluation``: ``(metrics, prediction)`` of the final evaluation (:func:`_evaluate`)."""
    eval_metrics, _ = evaluation
    result = new_result(trainer, loaded, data, Path(training_args.output_dir), train_metrics, eval_metrics)
    final_model_in_place(trainer, loaded, training_args, result)
    return result


def _save(trainer, loaded, data, training_args, data_args, explicit, result: TrainResult, evaluation) -> None:
    """The final save (:func:`hf_finetune.run.save.save_run`): metrics, figures, card, the weights last."""
    eval_metrics, prediction = evaluation
    metrics = {"train": result.train_metrics, "eval": eval_metrics, "test": result.test_metrics}
    save_run(trainer, loaded, data, training_args, data_args, explicit, metrics, prediction)


def _summarize(result: TrainResult, trainer, training_args, start: float) -> None:
    result.seconds = time.time() - start
    summarize_run(result, trainer, training_args, Path(training_args.output_dir))
    if trainer.is_world_process_zero():
        logger.info("%s", result.summary())


def _push(out: Path, push_repo, trainer, training_args) -> str | None:
    """The commit URL of the push (``push_to_hub``), from the main process once the folder is complete; else None."""
    if push_repo is None or not trainer.is_world_process_zero():
        return None
    pushed = hub_push.push_to_hub(
        out, push_repo, private=training_args.hub_private_repo, revision=training_args.hub_revision
    )
    return pushed.commit_url
