"""hf_finetune: fine-tune timm and transformers image classifiers on the Hugging Face stack.

The Python API that the ``hf-finetune`` command line is a thin layer over::

    from hf_finetune import DataArguments, FinetuneTrainingArguments, ModelArguments, finetune
    result = finetune(ModelArguments(model_name_or_path="timm/resnet18.a1_in1k"),
                   DataArguments(train_dir="photos/"),
                   FinetuneTrainingArguments(output_dir="out", num_train_epochs=3))

Names are imported lazily, so ``import hf_finetune`` (and ``hf-finetune --help``) stays instant.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # configs and parsing
    "ModelArguments",
    "DataArguments",
    "FinetuneTrainingArguments",
    "parse_train_args",
    # errors
    "HfFinetuneError",
    "ConfigError",
    "DataError",
    "ModelLoadError",
    "HubError",
    "CheckpointWriteError",
    "TrainingInterrupted",
    # model and head
    "LoadedModel",
    "load_model_for_labels",
    "head_parameter_names",
    "reinitialize_head",
    "freeze_parameters",
    "configure_batchnorm",
    # data
    "LoadedData",
    "load_image_dataset",
    "build_transforms",
    "data_config_from_processor",
    "make_batch_transform",
    "collate_images",
    "split_normalize",
    "PixelNormalizer",
    # training
    "FinetuneTrainer",
    "parameter_groups",
    "build_compute_metrics",
    "classification_metrics",
    "build_trainer",
    "finetune",
    "TrainResult",
    # after training
    "predict_images",
    "evaluate_model",
    # the Hub
    "push_to_hub",
    "render_model_card",
]

_WHERE = {
    "ModelArguments": "config.arguments",
    "DataArguments": "config.arguments",
    "FinetuneTrainingArguments": "config.arguments",
    "parse_train_args": "config.parser",
    "HfFinetuneError": "errors",
    "ConfigError": "errors",
    "DataError": "errors",
    "ModelLoadError": "errors",
    "HubError": "errors",
    "CheckpointWriteError": "errors",
    "TrainingInterrupted": "errors",
    "LoadedModel": "models.loading",
    "load_model_for_labels": "models.loading",
    "head_parameter_names": "models.heads",
    "reinitialize_head": "models.heads",
    "freeze_parameters": "models.freezing",
    "configure_batchnorm": "models.freezing",
    "LoadedData": "data.loading",
    "load_image_dataset": "data.loading",
    "build_transforms": "data.transforms",
    "data_config_from_processor": "data.transforms",
    "make_batch_transform": "data.transforms",
    "collate_images": "data.transforms",
    "split_normalize": "data.transforms",
    "PixelNormalizer": "data.transforms",
    "FinetuneTrainer": "training.trainer",
    "parameter_groups": "training.trainer",
    "build_compute_metrics": "inference.metrics",
    "classification_metrics": "inference.metrics",
    "build_trainer": "run.build",
    "finetune": "run.train",
    "TrainResult": "run.result",
    "predict_images": "inference.predict",
    "evaluate_model": "inference.evaluation",
    "push_to_hub": "hub.push",
    "render_model_card": "hub.model_card",
}
_RENAMED = {"finetune": "main"}  # hf_finetune.run.train is the module; its main() is finetune()

if TYPE_CHECKING:  # pragma: no cover
    from hf_finetune.config.arguments import DataArguments, FinetuneTrainingArguments, ModelArguments  # noqa: F401


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'hf_finetune' has no attribute {name!r}")
    module = importlib.import_module(f".{_WHERE[name]}", __name__)
    value = getattr(module, _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
