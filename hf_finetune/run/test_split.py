"""The test split, scored once: after the final evaluation, by the final model, and by nothing before.

A run whose data has a test split (a ``test/`` folder beside ``train/``, a Hub dataset's ``test`` split) scores the
model it is about to save on it once, with the validation's metrics, under the prefix ``test_``
(``test_accuracy``, ``test_macro_f1``, ...). The figures go to ``OUTPUT/test_results.json``, a line of the run's
summary and the model card; nothing the run chooses (the best checkpoint, early stopping, the epoch-0 candidate,
head rows or biases from data, class balance, the caches) reads the test split: those see ``train`` and
``validation`` only (:mod:`hf_finetune.run.inputs`, :mod:`hf_finetune.run.prepare`).
"""

from __future__ import annotations

import logging
from typing import Any

from hf_finetune.data.transforms import (
    build_transforms,
    collate_images,
    data_config_from_processor,
    make_batch_transform,
)

__all__ = ["TEST_RESULTS", "score_test_split"]

logger = logging.getLogger("hf_finetune")

TEST_RESULTS = "test_results.json"


def score_test_split(trainer, data) -> dict[str, Any]:
    """The final model's metrics on ``data``'s test split (``{}`` when it has none), through
    ``trainer.predict``: no callback's evaluation hook and no log-history entry sees them.

    The images go through the evaluation transform of the processor that is saved with the model (what
    ``hf-finetune eval`` uses), collated as images even when the head trained on cached features."""

    if "test" not in data.dataset:
        return {}
    test = data.dataset["test"]
    _, transform = build_transforms(data_config_from_processor(trainer.processing_class), augmentation="none")
    collator = trainer.data_collator
    trainer.data_collator = collate_images
    try:
        output = trainer.predict(
            test.with_transform(make_batch_transform(transform)), metric_key_prefix="test"
        )
    finally:
        trainer.data_collator = collator
    metrics = {k: v for k, v in output.metrics.items() if k.startswith("test_")}
    metrics["test_samples"] = len(test)
    if trainer.is_world_process_zero():
        key = "map" if "test_map" in metrics else "accuracy"
        logger.info(
            "test split: %d images scored once by the final model (%s %.4f)",
            len(test),
            "mean average precision" if key == "map" else key,
            float(metrics.get(f"test_{key}", float("nan"))),
        )
    return metrics
