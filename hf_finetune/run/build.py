"""Building a run's Trainer: load the data, load the model for its labels, make the model ready, and put the
Trainer together with its inputs and callbacks. Nothing is written yet.

The parsed arguments are never changed here: what the run derives from the loaded model and the machine
(``body_warmup_epochs`` unset, ``data_seed`` under several processes) is recorded in the run's
:class:`~hf_finetune.runtime.plan.RunPlan`, and the Trainer runs with a copy of the arguments that carries it
(:func:`trainer_arguments`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging

from transformers import set_seed

from hf_finetune.data import loading
from hf_finetune.data.multi_label import is_multi_label
from hf_finetune.data.streaming import load_streamed_data, refuse_unstreamable
from hf_finetune.errors import ConfigError
from hf_finetune.inference.metrics import build_compute_metrics
from hf_finetune.models.loading import load_model_for_labels
from hf_finetune.models.lora import apply_lora
from hf_finetune.models.zero_shot import load_zero_shot_model
from hf_finetune.run.inputs import TrainingInputs, training_inputs
from hf_finetune.run.prepare import head_from_data, lora_on, prepare_model, preprocessing
from hf_finetune.runtime import performance
from hf_finetune.runtime.log_filters import quiet_known_noise
from hf_finetune.runtime.plan import RunPlan
from hf_finetune.runtime.speed_plan import resolve_speed
from hf_finetune.training.regularization import configure_regularization
from hf_finetune.training.schedules import build_freeze_schedule
from hf_finetune.training.start_point import StartingPointCallback
from hf_finetune.training.stream_state import StreamStateCallback, stream_accelerator_config
from hf_finetune.training.trainer import FinetuneTrainer

__all__ = ["DERIVED_KEYS", "build_trainer", "set_up_process", "load_data", "load_model", "trainer_arguments"]

logger = logging.getLogger("hf_finetune")

# The training keys whose value build_trainer derives (from the loaded model and data, from the processes)
DERIVED_KEYS = ("body_warmup_epochs", "data_seed", "metric_for_best_model", "ignore_data_skip")
# Single-label metrics that a multi-label run cannot compute: metric_for_best_model becomes "map" instead
SINGLE_LABEL_METRICS = ("accuracy", "macro_f1", "top5_accuracy")
# A stream's first examples that fit the head's biases before training (label_bias_from_data)
HEAD_SAMPLE = 1024


def build_trainer(
    model_args,
    data_args,
    training_args,
    loaded_data=None,
    callbacks=None,
    plan=None,
    loaded_model=None,
    checkpoint_recipe=None,
):
    """Load data and model and return ``(trainer, loaded_model, loaded_data)``; nothing is written yet.

    ``loaded_data``: the data, already loaded. ``loaded_model``: the model, already loaded (with its
    ``loaded_data``), after :func:`set_up_process`, as :func:`hf_finetune.run.train.main` does in steps of its own.
    ``plan``: the run's :class:`~hf_finetune.runtime.plan.RunPlan` (a new one when None); the settings derived here
    are recorded in it, and the Trainer's arguments carry them (:func:`trainer_arguments`), with the speed keys'
    ``auto`` values chosen for this machine (:func:`hf_finetune.runtime.speed_plan.resolve_speed`).
    ``checkpoint_recipe``: what each checkpoint records (``RunFolder.checkpoint_recipe``, run/output_dir.py)."""

    plan = RunPlan() if plan is None else plan
    refuse_unstreamable(model_args, data_args, training_args, plan)  # keys a stream cannot serve
    training_args = resolve_speed(training_args, plan)  # a copy, when an auto value is left to choose
    if loaded_model is None:  # set up the process, then load what the caller has not
        set_up_process(model_args, training_args)
        loaded_data = load_data(data_args, training_args, loaded_data)
        loaded_model = load_model(
            model_args,
            training_args,
            loaded_data.labels,
            multi_label=is_multi_label(loaded_data.dataset["train"]),
        )
    elif loaded_data is None:
        raise ValueError("build_trainer: loaded_model comes with the loaded_data it was loaded for")
    data, loaded = loaded_data, loaded_model
    # The model made ready: BatchNorm policy, frozen parameters, this machine's speed settings
    freeze, channels_last = prepare_model(loaded.model, training_args, plan)
    # Preprocessing: image size, normalisation, training augmentation
    data_config, train_transform, eval_transform = preprocessing(
        loaded, data_args, training_args, channels_last
    )
    # Head rows from the data (label_init_from_data, label_bias_from_data)
    head_from_data(loaded, _head_data(data), eval_transform, model_args, training_args)
    # body_warmup_epochs unset: chosen from the rows reused, into the plan
    _plan_body_warmup(loaded, training_args, plan)
    # What the Trainer trains: images on the fly, images decoded once, or cached features
    inputs = training_inputs(
        loaded.model,
        data,
        data_args,
        training_args,
        freeze,
        data_config,
        train_transform,
        eval_transform,
        channels_last,
    )
    # LoRA: after the head is mapped (and its rows chosen from data), peft wraps the model in place
    if lora_on(training_args):
        _wrap_lora(inputs, training_args, freeze)
    # data_seed under several processes, and the multi-label metric that picks the best model, into the plan
    _plan_data_seed(training_args, plan)
    _plan_best_metric(data, training_args, plan)
    _plan_stream(data, plan)
    # The Trainer, with the arguments and the plan's values
    trainer = _new_trainer(
        inputs, loaded, data, trainer_arguments(training_args, plan), callbacks, checkpoint_recipe
    )
    # Callbacks: the starting point as a best-model candidate, regularization, the freezing schedule
    _add_callbacks(trainer, inputs, freeze, len(data.labels))
    if getattr(data, "streaming", False):  # set_epoch each epoch, the stream position in each checkpoint
        trainer.add_callback(
            StreamStateCallback(inputs.train_dataset, training_args.seed, data_args.shuffle_buffer_size)
        )
    # Processes: say how many, and give each rank its own augmentation seed
    _set_up_ranks(trainer.args)
    return trainer, loaded, data


def set_up_process(model_args, training_args) -> None:
    """The global seed, ``keep_freed_memory`` (before the data and the model are loaded, so that their buffers are
    served the same way), and the warnings about code or pickles the run will load."""

    set_seed(training_args.seed)
    quiet_known_noise()  # three transformers messages a user cannot act on (runtime/log_filters.py)
    _keep_freed_memory(training_args)
    if model_args.allow_pickle_weights:
        logger.warning(
            "allow_pickle_weights is on: pickle weight files load with torch.load(weights_only=True)"
        )
    if model_args.trust_remote_code:
        logger.warning(
            "trust_remote_code is on: Python code from %s will run on this machine",
            model_args.model_name_or_path,
        )


def load_data(data_args, training_args, loaded=None):
    """The image dataset, split (:func:`hf_finetune.data.loading.load_image_dataset`), described in the log;
    ``loaded``: the data already loaded (a benchmark reusing it), only described."""

    if loaded is not None:
        data = loaded
    elif getattr(data_args, "streaming", False):
        data = load_streamed_data(
            data_args, training_args.seed, training_args.process_index, training_args.world_size
        )
        if data.rank_size is None and training_args.max_steps <= 0:
            raise ConfigError(
                f"max_steps: unset, and the size of the stream {data.source} is not in its metadata (or each "
                "process's share of it is not); set max_steps (num_train_epochs needs the size)"
            )
    else:
        data = loading.load_image_dataset(data_args, seed=training_args.seed)
    logger.info("data: %s\n%s", data.source, data.summary())
    return data


def load_model(model_args, training_args, labels: list[str], multi_label: bool = False):
    """The pretrained model with a head for ``labels`` (:func:`hf_finetune.models.loading.load_model_for_labels`);
    ``multi_label``: a sigmoid head (the data has a set of classes per image)."""

    loaded = load_zero_shot_model(model_args, labels, multi_label, training_args) or load_model_for_labels(
        model_args.model_name_or_path,
        labels,
        revision=model_args.model_revision,
        cache_dir=model_args.cache_dir,
        trust_remote_code=model_args.trust_remote_code,
        label_mapping=model_args.label_mapping,
        label_merge=model_args.label_merge,
        keep_source_head=model_args.label_init_from_data,
        allow_pickle_weights=model_args.allow_pickle_weights,
        drop_path_rate=getattr(training_args, "drop_path_rate", None),
        multi_label=multi_label,
    )
    logger.info("%s", loaded.describe())
    if loaded.mapping is not None and not model_args.label_init_from_data:
        logger.info("label mapping (source rows that start each target class):\n%s", loaded.mapping.table())
    return loaded


def trainer_arguments(training_args, plan: RunPlan):
    """The arguments the Trainer runs with: a copy of ``training_args`` that carries the values the plan holds for
    the keys derived here (:data:`DERIVED_KEYS`); ``training_args`` itself stays as it was given."""

    args = copy.copy(training_args)
    for key in DERIVED_KEYS:
        if key in plan:
            setattr(args, key, plan.get(key))
    if plan.get("ignore_data_skip", False) is True:  # a stream: the loader is the rank's own
        args.accelerator_config = stream_accelerator_config(training_args.accelerator_config)
    return args


def _keep_freed_memory(training_args) -> None:
    """``keep_freed_memory``: freed memory stays in the process
    (:func:`hf_finetune.runtime.performance.keep_freed_memory`)."""
    if not getattr(training_args, "keep_freed_memory", False):
        return

    if not performance.keep_freed_memory():  # glibc was checked with the arguments; this is mallopt saying no
        logger.warning(
            "keep_freed_memory: glibc's mallopt refused the settings; freed memory goes back to the OS"
        )


def _plan_body_warmup(loaded, training_args, plan: RunPlan) -> None:
    """``body_warmup_epochs`` unset: on when classifier rows are reused (bench/label_mapping.py)."""

    if training_args.body_warmup_epochs is not None:
        return
    reused = loaded.mapping is not None and bool(loaded.mapping.reused)
    why = (
        "classifier rows are reused; the head trains at its full rate from step 1"
        if reused
        else "no classifier row is reused: a fresh head trains the body from step 1"
    )
    value = plan.record("body_warmup_epochs", 1.0 if reused else 0.0, why)
    logger.info("body_warmup_epochs: %s", f"{value:g} ({why})")


def _plan_data_seed(training_args, plan: RunPlan) -> None:
    """The sampler's order must be the same on every rank (each takes its own share of it); accelerate seeds it
    from ``data_seed``, else from the global seed, which differs per rank (:func:`_set_up_ranks`)."""

    if training_args.world_size > 1 and training_args.data_seed is None:
        plan.record("data_seed", training_args.seed, "the same sampler order on every rank: the global seed")


def _plan_best_metric(data, training_args, plan: RunPlan) -> None:
    """Multi-label data has no accuracy: a single-label ``metric_for_best_model`` becomes ``map`` (the macro mean
    average precision on validation, which needs no threshold)."""

    metric = (training_args.metric_for_best_model or "").removeprefix("eval_")
    if is_multi_label(data.dataset["train"]) and metric in SINGLE_LABEL_METRICS:
        why = f"multi-label data: {metric} is a single-label metric; the macro mean average precision picks the model"
        plan.record("metric_for_best_model", "map", why)
        logger.info("metric_for_best_model: map (%s)", why)


def _head_data(data):
    """What the head's rows and biases are fitted to before training: a stream's first images, map-style."""
    if not getattr(data, "streaming", False):
        return data
    return dataclasses.replace(data, dataset={**data.dataset, "train": data.head_sample(HEAD_SAMPLE)})


def _plan_stream(data, plan: RunPlan) -> None:
    """A stream resumes from the position in its checkpoint (training/stream_state.py), not by the Trainer's
    fast-forward through decoded batches."""
    if getattr(data, "streaming", False):
        plan.record(
            "ignore_data_skip",
            True,
            "streaming: --resume skips the stream's raw examples from the position saved in the checkpoint",
        )


def _wrap_lora(inputs: TrainingInputs, training_args, freeze) -> None:
    lora = apply_lora(inputs.model, training_args, frozen=freeze.frozen)
    logger.info("%s", lora.describe())
    inputs.model, inputs.head_names = lora.model, lora.head_names


def _new_trainer(inputs: TrainingInputs, loaded, data, args, callbacks, checkpoint_recipe) -> FinetuneTrainer:
    return FinetuneTrainer(
        model=inputs.model,
        args=args,
        train_dataset=inputs.train_dataset,
        eval_dataset=inputs.eval_dataset,
        data_collator=inputs.collator,
        compute_metrics=build_compute_metrics(
            len(data.labels), args.metrics, multi_label=is_multi_label(data.dataset["train"])
        ),
        processing_class=loaded.processor,
        callbacks=callbacks,
        head_names=inputs.head_names,
        pixel_normalizer=inputs.pixel_normalizer,
        checkpoint_recipe=checkpoint_recipe,
        feature_cache=inputs.feature_cache,
        image_cache=inputs.image_cache,
    )


def _add_callbacks(trainer, inputs: TrainingInputs, freeze, num_labels: int) -> None:
    """The epoch-0 state as a best-model candidate, mixup, class balance, EMA, early stopping, and the freezing
    schedule (``probe_epochs``, ``unfreeze_schedule``)."""

    args = trainer.args
    _keep_starting_point(trainer, inputs.model, args)
    configure_regularization(trainer, args, num_labels)  # mixup, class balance, EMA, stopping
    schedule = build_freeze_schedule(inputs.model, args, freeze.trainable, inputs.head_names)
    if schedule is not None:  # the trainer puts what it unfreezes later in the optimizer from the start
        trainer.add_callback(schedule)


def _keep_starting_point(trainer, model, training_args) -> None:
    """The epoch-0 state is a candidate for the best model (:mod:`hf_finetune.training.start_point`)."""

    if not (training_args.load_best_model_at_end and training_args.eval_on_start):
        return
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        logger.info(
            "the epoch-0 state is not a best-model candidate under FSDP or DeepSpeed (sharded weights)"
        )
        return
    trainer.add_callback(StartingPointCallback(model))


def _set_up_ranks(args) -> None:
    if args.world_size > 1:
        logger.info(
            "processes: %d (%s, this is rank %d); per-device batch %d, global batch %d",
            args.world_size,
            args.distributed_state.distributed_type,
            args.process_index,
            args.per_device_train_batch_size,
            args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps,
        )
    if args.process_index > 0:
        # Every rank built the same model from the same seed (DDP also broadcasts rank 0's weights); the
        # sampler has its own seeded generator, so the data order stays shared. Augmentation draws from
        # the global generators: give each rank its own, derived from the seed, so runs stay reproducible.
        set_seed(args.seed + args.process_index)
