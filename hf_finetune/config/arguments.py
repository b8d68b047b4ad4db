"""Configuration dataclasses: what a recipe YAML (or the command line) may say.

Three dataclasses, parsed together by :func:`hf_finetune.config.parser.parse_train_args` through
transformers' ``HfArgumentParser``:

* :class:`ModelArguments`: which checkpoint to start from;
* :class:`DataArguments`: where the images come from and how they are prepared;
* :class:`FinetuneTrainingArguments`: ``transformers.TrainingArguments`` with fine-tuning defaults
  and the fine-tuning options (head learning-rate multiplier, freezing, BatchNorm handling).

Every field has ``metadata={"help": ...}``; checks live in ``__post_init__`` and raise
:class:`~hf_finetune.errors.ConfigError` naming the field, the bad value and the fix.
Keys follow the transformers example scripts where one exists.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from transformers import TrainingArguments

from hf_finetune.config.path_checks import check_writable_dir
from hf_finetune.config.ranges import check_recipe_values
from hf_finetune.errors import ConfigError

__all__ = [
    "ModelArguments",
    "DataArguments",
    "FinetuneTrainingArguments",
    "AUGMENTATIONS",
    "BATCHNORM_MODES",
    "UNFREEZE_SCHEDULES",
    "AUTO_KEYS",
]

AUGMENTATIONS = ("rrc_flip", "flip", "none")
BATCHNORM_MODES = ("auto", "train", "freeze")
UNFREEZE_SCHEDULES = ("none", "gradual")
# Training keys whose unset value means "chosen from the machine and the model"; `auto` spells that out.
AUTO_KEYS = (
    "bf16",
    "channels_last",
    "tune_depthwise_precision",
    "tune_inplace_activations",
    "static_same_padding",
    "keep_freed_memory",
    "dataloader_num_workers",
    "dataloader_persistent_workers",
    "dataloader_pin_memory",
    "cache_images",
    "normalize_on_device",
    "feature_cache",
)


def _check(condition: bool, key: str, value, expected: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: got {value!r}; expected {expected}")


@dataclass
class ModelArguments:
    """Which pretrained checkpoint to fine-tune."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Hub id (org/name) or local folder of a transformers image classifier or a timm checkpoint "
            "(config.json with 'architecture'), e.g. google/vit-base-patch16-224 or timm/resnet50.a1_in1k."
        },
    )
    model_revision: str = field(
        default="main", metadata={"help": "Branch, tag or commit of the checkpoint on the Hub."}
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Where downloaded checkpoints and datasets are cached."}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Run modelling code shipped inside the checkpoint. Off unless you trust its author; the run "
            "logs a warning when it is on."
        },
    )
    allow_pickle_weights: bool = field(
        default=False,
        metadata={
            "help": "Load a checkpoint whose weights are only in pickle files (pytorch_model.bin, *.pt, *.pth). "
            "Off: such a checkpoint is refused, since unpickling can run code; on: they load with "
            "torch.load(weights_only=True), which still refuses anything but tensors."
        },
    )
    label_mapping: str | None = field(
        default="auto",
        metadata={
            "help": "Reuse rows of the pretrained classifier for target labels that match source labels: auto "
            "(match by name, synonym, plural, ImageNet synset, head word and WordNet definition), none (a "
            "fresh head), a mapping {target: source label | [source labels or synsets] | none} that wins "
            "over automatic matching, or a path to a YAML/JSON file holding such a mapping."
        },
    )
    label_merge: str = field(
        default="lse",
        metadata={
            "help": "How a target that maps to several source rows gets its row: lse (mean row, bias + log n: "
            "approximates the log-sum-exp, i.e. the probability of the union) or balanced (mean row: "
            "approximates log-mean-exp, removing the source's prior for big groups).",
            "choices": ["lse", "balanced"],
        },
    )

    label_init_from_data: bool = field(
        default=False,
        metadata={
            "help": "Before training, let the pretrained model look at up to 32 training images per class: "
            "targets no name matched start from the source rows it predicts for them, and targets built from "
            "several rows get them weighted by those predictions (Co-Tuning-style; reported as kind 'data')."
        },
    )
    label_bias_from_data: bool = field(
        default=True,
        metadata={
            "help": "When some rows are reused, shift the head's biases before training so that its predictions "
            "on up to 32 training images per class fit their labels (maximum likelihood over the biases alone; "
            "weights untouched): the source's class prior (e.g. the 999 ImageNet classes behind a complement "
            "like not_hotdog) gives way to the data's. Reported in label_mapping.json; false keeps the rows' "
            "own biases."
        },
    )

    def __post_init__(self):
        if isinstance(self.label_mapping, dict):
            import json

            self.label_mapping = json.dumps(self.label_mapping)
        _check(self.label_merge in ("lse", "balanced"), "label_merge", self.label_merge, "lse or balanced")
        _check(
            self.model_name_or_path is not None and str(self.model_name_or_path).strip() != "",
            "model_name_or_path",
            self.model_name_or_path,
            "a Hub id like 'timm/resnet18.a1_in1k' or a local checkpoint folder",
        )


@dataclass
class DataArguments:
    """Where the images come from and how they become tensors."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A dataset on the Hub (or a local dataset folder) loaded by datasets."},
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "The configuration of dataset_name, if it has several."}
    )
    train_split: str = field(
        default="train", metadata={"help": "Name of the training split of dataset_name."}
    )
    validation_split: str | None = field(
        default=None,
        metadata={
            "help": "Name of the validation split; by default the first of validation, val, valid, test that "
            "exists, else a stratified split of train (see train_val_split)."
        },
    )
    train_dir: str | None = field(
        default=None,
        metadata={
            "help": "An image folder: CLASS/*.jpg, or with train/ and val/ (or validation/, test/) subfolders "
            "each holding CLASS/*.jpg."
        },
    )
    validation_dir: str | None = field(
        default=None, metadata={"help": "An image folder CLASS/*.jpg used as the validation split."}
    )
    train_file: str | None = field(
        default=None,
        metadata={
            "help": "A CSV or JSONL file of (image path, label) rows; relative paths are read from its folder."
        },
    )
    validation_file: str | None = field(
        default=None, metadata={"help": "A CSV or JSONL file of (image path, label) rows for validation."}
    )
    image_column_name: str | None = field(
        default=None,
        metadata={"help": "The image column; found automatically (image, img, path, ...) if unset."},
    )
    label_column_name: str | None = field(
        default=None,
        metadata={"help": "The label column; found automatically (label, labels, target, ...) if unset."},
    )
    train_val_split: float = field(
        default=0.15,
        metadata={
            "help": "Fraction of train held out (stratified, seeded) when there is no validation split."
        },
    )
    max_train_samples: int | None = field(
        default=None,
        metadata={"help": "Keep only this many training images (seeded shuffle); for quick runs."},
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only this many validation images (seeded shuffle)."}
    )
    image_size: int | None = field(
        default=None,
        metadata={
            "help": "Train and evaluate at this square size instead of the checkpoint's own input size."
        },
    )
    augmentation: str = field(
        default="rrc_flip",
        metadata={
            "help": "Training augmentation: rrc_flip (random-resized-crop + horizontal flip), flip (resize, "
            "center crop, flip) or none (the evaluation transform).",
            "choices": list(AUGMENTATIONS),
        },
    )
    crop_scale_min: float = field(
        default=0.6,
        metadata={
            "help": "Smallest area fraction of random-resized-crop (ImageNet training from scratch uses 0.08; a "
            "short fine-tune keeps most of each image)."
        },
    )
    hflip_prob: float = field(default=0.5, metadata={"help": "Probability of a horizontal flip in training."})
    strict: bool = field(
        default=False,
        metadata={
            "help": "Make any bad image file (no image extension, zero bytes, not an image, a decompression "
            "bomb, an aspect ratio beyond 50:1, or one that fails to decode) an error naming it; by default "
            "bad files are skipped and listed in OUTPUT/bad_images.json."
        },
    )

    def __post_init__(self):
        check_recipe_values(self)  # types and ranges of every numeric key (config_ranges.RANGES)
        sources = [self.dataset_name, self.train_dir, self.train_file]
        _check(
            sum(s is not None for s in sources) == 1,
            "dataset_name/train_dir/train_file",
            {
                k: v
                for k, v in zip(("dataset_name", "train_dir", "train_file"), sources, strict=True)
                if v is not None
            }
            or None,
            "exactly one of dataset_name (Hub id), train_dir (image folder) or train_file (CSV/JSONL)",
        )
        _check(
            0.0 < self.train_val_split < 1.0, "train_val_split", self.train_val_split, "a fraction in (0, 1)"
        )
        for key in ("max_train_samples", "max_eval_samples", "image_size"):
            value = getattr(self, key)
            _check(value is None or (isinstance(value, int) and value > 0), key, value, "a positive integer")
        _check(
            self.augmentation in AUGMENTATIONS,
            "augmentation",
            self.augmentation,
            f"one of {list(AUGMENTATIONS)}",
        )
        _check(
            0.0 < self.crop_scale_min <= 1.0, "crop_scale_min", self.crop_scale_min, "a fraction in (0, 1]"
        )
        _check(0.0 <= self.hflip_prob <= 1.0, "hflip_prob", self.hflip_prob, "a probability in [0, 1]")


# Fine-tuning defaults that differ from TrainingArguments' own. Applied as field defaults below, so
# a recipe or flag still overrides each of them.
_FINETUNE_DEFAULTS = {
    "output_dir": "outputs/hf-finetune",
    "num_train_epochs": 3.0,
    "learning_rate": 1e-4,
    "weight_decay": 0.01,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 64,
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "logging_steps": 10,
    "save_total_limit": 2,
    "load_best_model_at_end": True,
    "metric_for_best_model": "accuracy",
    "eval_on_start": True,
    "remove_unused_columns": False,
}


@dataclass
class FinetuneTrainingArguments(TrainingArguments):
    """``TrainingArguments`` with fine-tuning defaults and the fine-tuning options.

    Defaults that differ from transformers': 3 epochs, lr 1e-4 with cosine decay,
    evaluation and checkpoint every epoch, best model (validation accuracy) restored at the end,
    evaluation before the first step (epoch 0: the accuracy before fine-tuning), no reporting service.
    """

    output_dir: str | None = field(
        default=_FINETUNE_DEFAULTS["output_dir"],
        metadata={"help": "Where the fine-tuned model, its processor, metrics and checkpoints are written."},
    )
    num_train_epochs: float = field(
        default=3.0, metadata={"help": "Number of passes over the training images."}
    )
    learning_rate: float = field(
        default=1e-4,
        metadata={
            "help": "Learning rate of the pretrained body; the new head gets head_lr_multiplier x this."
        },
    )
    weight_decay: float = field(
        default=0.01, metadata={"help": "AdamW weight decay (not applied to norms and biases)."}
    )
    lr_scheduler_type: str = field(
        default="cosine", metadata={"help": "Learning-rate schedule after warm-up."}
    )
    warmup_steps: float = field(
        default=0,
        metadata={
            "help": "Warm-up length: steps (an integer >= 1) or a ratio of all steps (in [0, 1)). None by "
            "default: with reused classifier rows a warm-up only slowed the first epoch (bench/label_mapping.py)."
        },
    )
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Training batch size per device."})
    per_device_eval_batch_size: int = field(
        default=64, metadata={"help": "Evaluation batch size per device."}
    )
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate: no, steps or epoch."})
    save_strategy: str = field(
        default="epoch", metadata={"help": "When to write a checkpoint: no, steps, epoch or best."}
    )
    logging_steps: float = field(
        default=10, metadata={"help": "Log the training loss every this many steps."}
    )
    save_total_limit: int | None = field(
        default=2, metadata={"help": "Keep at most this many checkpoints (the best one is always kept)."}
    )
    load_best_model_at_end: bool = field(
        default=True,
        metadata={"help": "Restore the checkpoint with the best metric_for_best_model at the end."},
    )
    metric_for_best_model: str | None = field(
        default="accuracy", metadata={"help": "Validation metric that picks the best checkpoint."}
    )
    eval_on_start: bool = field(
        default=True,
        metadata={"help": "Evaluate before the first step: the accuracy before fine-tuning (epoch 0)."},
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Must stay false: images are transformed on the fly from their column."},
    )

    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Allow a fresh run into an output_dir that holds an earlier run (its model and checkpoints "
            "are deleted first) or files of the user's (they are kept: a run never replaces or deletes a file "
            "it did not write, and is refused when it would write one of the same name)."
        },
    )
    resume_allow_changes: list[str] = field(
        default_factory=list,
        metadata={
            "help": "On --resume, the recipe keys that may differ from the checkpoint's recipe (e.g. "
            "num_train_epochs to train longer); any other difference, and other labels, refuse to resume. "
            "model_name_or_path can never change."
        },
    )

    # --- speed: unset (or "auto") means chosen from the machine and the model (hf_finetune.runtime.performance) ---
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "bfloat16 mixed precision (autocast). Unset/auto: on for GPUs with bfloat16 and CPUs with "
            "AVX512-BF16 or AMX (1.5x faster with channels_last on such a CPU, bench/throughput.py); false "
            "turns it off."
        },
    )
    channels_last: bool | None = field(
        default=None,
        metadata={
            "help": "Run the model in channels_last (NHWC) memory format. Unset/auto: on a CPU, on when most "
            "weights are 2-D convolutions (CNNs), off otherwise (ViTs); off on a GPU, where NHWC measured slower "
            "(bench/gpu_check.sh)."
        },
    )
    tune_depthwise_precision: bool | None = field(
        default=None,
        metadata={
            "help": "With bf16 on a CPU, time every depthwise convolution shape in bf16 and fp32 once before "
            "training (about 2 s) and run the ones that are faster in fp32 there (oneDNN's bf16 depthwise "
            "kernels were 2-11x slower for strided and 5x5 shapes on an AVX512-BF16 CPU). Unset/auto: on with bf16 on a CPU."
        },
    )
    tune_inplace_activations: bool | None = field(
        default=None,
        metadata={
            "help": "With bf16 on a CPU, time each in-place activation (timm builds ReLU6, ReLU, SiLU ... in "
            "place) in place and out of place at its shape once before training, and run out of place the "
            "ones faster so (in-place bf16 ReLU6 took twice as long on an AVX512-BF16 CPU). The same "
            "function bit for bit. Unset/auto: on with bf16 on a CPU."
        },
    )
    static_same_padding: bool | None = field(
        default=None,
        metadata={
            "help": "transformers' MobileNet V1/V2 (config.tf_padding) pad every convolution's input with "
            "F.pad, 1x1 convolutions included (a copy of the activation); for stride-1 convolutions, where "
            "that padding does not depend on the input size, let the convolution pad instead. Bit-identical "
            "outputs; the saved model is unchanged. Unset/auto: on."
        },
    )
    keep_freed_memory: bool | None = field(
        default=None,
        metadata={
            "help": "glibc only: memory the process frees stays mapped for its next allocations (mallopt "
            "M_MMAP_MAX=0, M_TRIM_THRESHOLD=-1) instead of each step's activations being mapped and "
            "page-faulted in anew. Unset/auto: on when training on a CPU (1.4-1.5x faster training on a 2-core "
            "CPU, bench/throughput.py); off on a GPU. The process keeps its peak memory until it exits."
        },
    )
    dataloader_num_workers: int | None = field(
        default=None,
        metadata={
            "help": "Processes that decode and augment images. Unset/auto: on a GPU up to 8 (with pinned "
            "memory, persistent workers, prefetch 4); on a CPU only the logical CPUs the compute threads "
            "leave free (the model's arithmetic needs the cores)."
        },
    )
    dataloader_persistent_workers: bool | None = field(
        default=None,
        metadata={
            "help": "Keep loader workers alive between epochs. Unset/auto: on whenever there are workers."
        },
    )
    dataloader_pin_memory: bool | None = field(
        default=None,
        metadata={
            "help": "Page-locked batches for faster copies to a GPU. Unset/auto: on with a GPU, off on a CPU."
        },
    )
    cache_images: bool | None = field(
        default=None,
        metadata={
            "help": "Decode and resize every image once into a memory-mapped datasets cache (validation: the "
            "final crop; training: no larger than random-resized-crop needs). Unset/auto: on when training "
            "on a GPU, where the data pipeline is the bottleneck; off on a CPU."
        },
    )
    normalize_on_device: bool | None = field(
        default=None,
        metadata={
            "help": "The loader hands over 8-bit images (the augmentation's output before ToTensor) and each "
            "batch is converted to float and normalised on the device it trains on: the same float32 "
            "tensors bit for bit, with a quarter of the bytes to stack, pass between processes, pin and copy, "
            "and no per-image float work in the loader. Unset/auto: on."
        },
    )
    feature_cache: bool | None = field(
        default=None,
        metadata={
            "help": "When the whole body is frozen (linear probe), compute its features once (validation "
            "transform, no augmentation) and train the head on them. Unset/auto: on when the whole body is "
            "frozen and one process trains; false keeps augmenting every epoch through the frozen body."
        },
    )

    # --- fine-tuning options -------------------------------------------------------------------------
    head_lr_multiplier: float = field(
        default=10.0,
        metadata={"help": "The re-initialised head learns this many times faster than the pretrained body."},
    )
    freeze_layers: int = field(
        default=0,
        metadata={
            "help": "Freeze the stem and the first N stages/blocks of the body (found from the model's "
            "structure); -1 freezes the whole body (linear probe)."
        },
    )
    freeze_patterns: list[str] = field(
        default_factory=list,
        metadata={"help": "Also freeze parameters whose name matches any of these regular expressions."},
    )
    batchnorm: str = field(
        default="auto",
        metadata={
            "help": "BatchNorm running statistics: auto (freeze, at any batch size; a network trained from scratch "
            "wants train), freeze (keep the pretrained "
            "statistics; affine weights still learn), train (the statistics follow the training batches; momentum "
            "written in TensorFlow's convention, such as transformers' MobileNet 0.997, is converted to "
            "PyTorch's 1-0.997 first).",
            "choices": list(BATCHNORM_MODES),
        },
    )
    lora_r: int = field(
        default=0,
        metadata={
            "help": "LoRA rank (peft; hf_finetune.models.lora): 0 trains the model itself; N > 0 trains rank-N adapters "
            "on the body's layers plus the whole head (modules_to_save), with the base weights and BatchNorm "
            "statistics frozen. Saves OUTPUT/adapter/ and the merged model."
        },
    )
    lora_alpha: float | None = field(
        default=None,
        metadata={
            "help": "LoRA scale numerator (updates are scaled by lora_alpha / lora_r); unset: 2 x lora_r."
        },
    )
    lora_dropout: float = field(
        default=0.0, metadata={"help": "Dropout on the input of the LoRA adapters, in [0, 1)."}
    )
    lora_target_modules: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Layers that get LoRA adapters: full module names or their last parts (e.g. query value). "
            "Unset: every nn.Linear and ungrouped nn.Conv2d of the body not frozen by freeze_layers/"
            "freeze_patterns."
        },
    )
    probe_epochs: int = field(
        default=0,
        metadata={
            "help": "Probe, then fine-tune (LP-FT): for the first N epochs only the head trains (the body "
            "frozen, its BatchNorm layers on their running statistics), then the body unfreezes to what "
            "freeze_layers/freeze_patterns leave trainable; 0 is off."
        },
    )
    unfreeze_schedule: str = field(
        default="none",
        metadata={
            "help": "none (after probe_epochs the whole trainable body unfreezes at once) or gradual (from the "
            "top: the epoch after the probe, or epoch 1 without one, trains the head and the last block, and "
            "each further epoch unfreezes the next block down, the stem with the first block).",
            "choices": list(UNFREEZE_SCHEDULES),
        },
    )
    body_warmup_epochs: float | None = field(
        default=None,
        metadata={
            "help": "Head first, then the body: the pretrained body's learning rate ramps linearly from 0 over "
            "this many epochs while the head trains at its full rate from the first step (on top of the "
            "learning-rate schedule), so early gradients through a new or still miscalibrated head do not "
            "distort the pretrained features; 0 is off. Unset: 1 when some classifier rows are reused, else 0 "
            "(a fresh head measured better without it); 0 with probe_epochs, unfreeze_schedule gradual or LoRA "
            "(they hold the body back already), with lr_scheduler_type reduce_lr_on_plateau and freeze_layers -1. "
            "Used directly, FinetuneTrainer treats unset as 0."
        },
    )
    layer_decay: float | None = field(
        default=None,
        metadata={
            "help": "Layer-wise learning-rate decay (BEiT/timm): a body layer i learns at learning_rate x "
            "layer_decay ** (L - i), the stem being layer 0 and the head layer L (at learning_rate x "
            "head_lr_multiplier); e.g. 0.75; unset is off."
        },
    )
    # --- regularisation, class imbalance, early stopping (hf_finetune.training.regularization, .ema, .imbalance) ---
    mixup_alpha: float = field(
        default=0.0,
        metadata={
            "help": "Mixup: blend each training batch with itself reversed, by a weight drawn from "
            "Beta(alpha, alpha), and train on the blended soft targets (timm's Mixup); 0 is off."
        },
    )
    cutmix_alpha: float = field(
        default=0.0,
        metadata={
            "help": "CutMix: paste a box of the reversed batch into each training image (area from "
            "Beta(alpha, alpha)); targets weighted by area (timm's Mixup); 0 is off."
        },
    )
    mixup_prob: float = field(
        default=1.0,
        metadata={"help": "Probability that a training batch is mixed at all (mixup or cutmix on)."},
    )
    mixup_switch_prob: float = field(
        default=0.5,
        metadata={"help": "With both mixup and cutmix on: probability that a mixed batch uses cutmix."},
    )
    mixup_off_epoch: int = field(
        default=0,
        metadata={
            "help": "From this epoch on (counted from 0, as timm does) batches are no longer mixed; 0 never "
            "switches mixing off."
        },
    )
    drop_path_rate: float | None = field(
        default=None,
        metadata={
            "help": "Stochastic depth: the drop-path rate of the last block (timm models and transformers "
            "models whose config has drop_path_rate: ConvNeXt, Swin, BEiT, ...); unset keeps the checkpoint's; "
            "a rate above 0 for a model without drop path is an error."
        },
    )
    ema_decay: float | None = field(
        default=None,
        metadata={
            "help": "Keep an exponential moving average of the weights (timm's ModelEmaV3), updated after "
            "every optimizer step with this decay (e.g. 0.999); unset is off. Its state is saved in each "
            "checkpoint (ema.safetensors) and restored on resume."
        },
    )
    ema_eval: bool = field(
        default=True,
        metadata={
            "help": "With ema_decay: evaluate (and pick the best checkpoint) with the EMA weights; the live "
            "weights' metrics are logged beside them as eval_live_*."
        },
    )
    ema_save: bool = field(
        default=True,
        metadata={
            "help": "With ema_decay: the saved final model holds the EMA weights (false: the live ones)."
        },
    )
    class_balance: str = field(
        default="auto",
        metadata={
            "help": "Class imbalance: weighted_loss (cross-entropy weighted n / (k * count) per class), sampler "
            "(draw training images with probability 1 / count of their class), none, or auto (weighted_loss "
            "when the largest training class has more than 3x the images of the smallest, else none).",
            "choices": ["auto", "none", "weighted_loss", "sampler"],
        },
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={
            "help": "Stop training after this many evaluations without improvement of metric_for_best_model "
            "(transformers' EarlyStoppingCallback; needs load_best_model_at_end and an eval_strategy); unset "
            "is off."
        },
    )
    early_stopping_threshold: float = field(
        default=0.0,
        metadata={
            "help": "With early_stopping_patience: the least change of the metric that counts as improvement."
        },
    )

    def __post_init__(self):
        check_recipe_values(self)  # types and ranges of every numeric key (config_ranges.RANGES)
        if self.output_dir is not None:  # "", a path under a file, an unwritable parent: before any work
            check_writable_dir(self.output_dir, "output_dir")
        _check(
            self.head_lr_multiplier > 0, "head_lr_multiplier", self.head_lr_multiplier, "a positive number"
        )
        _check(
            self.freeze_layers >= -1, "freeze_layers", self.freeze_layers, "-1 (whole body) or a count >= 0"
        )
        _check(
            self.batchnorm in BATCHNORM_MODES, "batchnorm", self.batchnorm, f"one of {list(BATCHNORM_MODES)}"
        )
        _check(
            isinstance(self.probe_epochs, int) and self.probe_epochs >= 0,
            "probe_epochs",
            self.probe_epochs,
            "a number of epochs >= 0 (0: no probe phase)",
        )
        _check(
            self.unfreeze_schedule in UNFREEZE_SCHEDULES,
            "unfreeze_schedule",
            self.unfreeze_schedule,
            f"one of {list(UNFREEZE_SCHEDULES)}",
        )
        _check(
            self.layer_decay is None or 0.0 < self.layer_decay <= 1.0,
            "layer_decay",
            self.layer_decay,
            "a factor in (0, 1], e.g. 0.75 (unset: off)",
        )
        scheduled = self.probe_epochs > 0 or self.unfreeze_schedule != "none"
        plateau = (
            str(getattr(self.lr_scheduler_type, "value", self.lr_scheduler_type)) == "reduce_lr_on_plateau"
        )
        held = scheduled or self.lora_r > 0  # the body is held back already
        off = held or plateau or self.freeze_layers == -1
        if self.body_warmup_epochs is None and off:
            self.body_warmup_epochs = 0.0  # else unset until the model is loaded (train.build_trainer)
        _check(
            self.body_warmup_epochs is None
            or (isinstance(self.body_warmup_epochs, (int, float)) and self.body_warmup_epochs >= 0),
            "body_warmup_epochs",
            self.body_warmup_epochs,
            "a number of epochs >= 0 (0: off)",
        )
        warmup = self.body_warmup_epochs or 0
        _check(
            not (held and warmup > 0),
            "body_warmup_epochs",
            self.body_warmup_epochs,
            "0 together with probe_epochs, unfreeze_schedule gradual or LoRA (they hold the body back already)",
        )
        _check(
            not (warmup > 0 and plateau),
            "body_warmup_epochs",
            self.body_warmup_epochs,
            "0 with lr_scheduler_type reduce_lr_on_plateau (the warm-up multiplies a step-wise schedule)",
        )
        _check(
            not (scheduled and self.freeze_layers == -1),
            "probe_epochs/unfreeze_schedule",
            {"probe_epochs": self.probe_epochs, "unfreeze_schedule": self.unfreeze_schedule},
            "no schedule with freeze_layers: -1 (the body never unfreezes)",
        )
        _check(
            self.max_steps > 0 or self.probe_epochs < self.num_train_epochs,
            "probe_epochs",
            self.probe_epochs,
            f"fewer than num_train_epochs ({self.num_train_epochs:g}), so that the body unfreezes",
        )
        _check(self.learning_rate > 0, "learning_rate", self.learning_rate, "a positive number")
        _check(self.num_train_epochs > 0, "num_train_epochs", self.num_train_epochs, "a positive number")
        for key in ("per_device_train_batch_size", "per_device_eval_batch_size"):
            _check(getattr(self, key) > 0, key, getattr(self, key), "a positive integer")
        _check(not (self.bf16 and self.fp16), "bf16/fp16", "both true", "at most one mixed-precision mode")
        self._check_regularization()
        self._resolve_speed_defaults()
        if isinstance(self.freeze_patterns, str):
            self.freeze_patterns = [self.freeze_patterns]
        import re

        for pattern in self.freeze_patterns:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ConfigError(
                    f"freeze_patterns: {pattern!r} is not a valid regular expression ({err})"
                ) from None
        from hf_finetune.models.lora import check_lora_keys

        check_lora_keys(self)  # lora_r, lora_alpha, lora_dropout, lora_target_modules and their combinations
        from hf_finetune.run.output_dir import check_allowed_changes

        self.resume_allow_changes = check_allowed_changes(self.resume_allow_changes)
        if self.output_dir is None:  # transformers would write into ./trainer_output
            default = _FINETUNE_DEFAULTS["output_dir"]
            raise ConfigError(f"output_dir: got null; expected a folder (leave the key out for {default})")
        _check(
            self.dataloader_num_workers >= 0,
            "dataloader_num_workers",
            self.dataloader_num_workers,
            "0 (load in the training process) or a positive count",
        )
        try:
            super().__post_init__()
        except ConfigError:
            raise
        except (ValueError, TypeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"training arguments: {first}") from None

    def _check_regularization(self) -> None:
        """Mixup/CutMix, drop path, EMA, class balance and early stopping keys."""
        for key in ("mixup_alpha", "cutmix_alpha"):
            _check(getattr(self, key) >= 0, key, getattr(self, key), "a number >= 0 (0 is off)")
        for key in ("mixup_prob", "mixup_switch_prob"):
            _check(0.0 <= getattr(self, key) <= 1.0, key, getattr(self, key), "a probability in [0, 1]")
        _check(
            isinstance(self.mixup_off_epoch, int) and self.mixup_off_epoch >= 0,
            "mixup_off_epoch",
            self.mixup_off_epoch,
            "an epoch number >= 0 (0: never switch mixing off)",
        )
        _check(
            0.0 <= self.label_smoothing_factor < 1.0,
            "label_smoothing_factor",
            self.label_smoothing_factor,
            "a number in [0, 1)",
        )
        _check(
            self.drop_path_rate is None or 0.0 <= self.drop_path_rate < 1.0,
            "drop_path_rate",
            self.drop_path_rate,
            "a rate in [0, 1) or unset",
        )
        _check(
            self.ema_decay is None or 0.0 < self.ema_decay < 1.0,
            "ema_decay",
            self.ema_decay,
            "a decay in (0, 1) such as 0.999, or unset (no EMA)",
        )
        choices = ("auto", "none", "weighted_loss", "sampler")
        _check(self.class_balance in choices, "class_balance", self.class_balance, f"one of {list(choices)}")
        if self.early_stopping_patience is None:
            return
        _check(
            isinstance(self.early_stopping_patience, int) and self.early_stopping_patience >= 1,
            "early_stopping_patience",
            self.early_stopping_patience,
            "a count of evaluations >= 1, or unset (off)",
        )
        _check(
            self.early_stopping_threshold >= 0,
            "early_stopping_threshold",
            self.early_stopping_threshold,
            "a number >= 0",
        )
        _check(
            str(getattr(self.eval_strategy, "value", self.eval_strategy)) != "no",
            "eval_strategy",
            "no",
            "epoch or steps when early_stopping_patience is set (it watches the evaluations)",
        )
        _check(
            bool(self.load_best_model_at_end) and bool(self.metric_for_best_model),
            "load_best_model_at_end",
            self.load_best_model_at_end,
            "true, with a metric_for_best_model, when early_stopping_patience is set (the best checkpoint is "
            "the one restored after the stop)",
        )

    def _resolve_speed_defaults(self) -> None:
        """Turn unset speed keys into values for this machine; ``auto_choices`` says what was chosen and why."""
        from hf_finetune.runtime.performance import bf16_supported, device_kind, loader_settings

        for key in AUTO_KEYS:  # strings come from Python callers; the parser already dropped "auto"
            value = getattr(self, key)
            if not isinstance(value, str):
                continue
            lowered = value.strip().lower()
            if lowered == "auto":
                setattr(self, key, None)
            elif key == "dataloader_num_workers" and lowered.isascii() and lowered.isdigit():
                setattr(self, key, int(lowered))
            elif key != "dataloader_num_workers" and lowered in ("true", "false", "yes", "no", "1", "0"):
                setattr(self, key, lowered in ("true", "yes", "1"))
            else:
                expected = "a count or auto" if key == "dataloader_num_workers" else "true, false or auto"
                raise ConfigError(f"{key}: got {value!r}; expected {expected}")
        self.auto_choices: dict[str, str] = {}
        kind = device_kind(self.use_cpu)
        if self.bf16 is None:
            if self.fp16:
                self.bf16 = False
            else:
                self.bf16, why = bf16_supported(kind)
                self.auto_choices["bf16"] = f"{'on' if self.bf16 else 'off'} ({why})"
        if self.bf16 and kind == "cpu":
            self.use_cpu = True  # transformers accepts bf16 without a GPU only with use_cpu
        if self.keep_freed_memory is not False:
            from hf_finetune.runtime.performance import glibc_malloc_available

            glibc = glibc_malloc_available()
            _check(
                glibc or self.keep_freed_memory is None,
                "keep_freed_memory",
                True,
                "false or auto: it sets glibc's malloc, and this process's C library is not glibc",
            )
        if self.keep_freed_memory is None:
            self.keep_freed_memory = kind == "cpu" and glibc
            if self.keep_freed_memory:
                why = (
                    "on (CPU training: each step's activations reuse freed pages instead of new page faults)"
                )
            else:
                why = "off (not training on a CPU)" if kind != "cpu" else "off (the C library is not glibc)"
            self.auto_choices["keep_freed_memory"] = why
        if self.dataloader_num_workers is None:
            local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
            settings = loader_settings(kind, local_processes=local)
            self.dataloader_num_workers = settings["num_workers"]
            if settings["prefetch_factor"] is not None and self.dataloader_prefetch_factor is None:
                self.dataloader_prefetch_factor = settings["prefetch_factor"]
            self.auto_choices["dataloader_num_workers"] = (
                f"{self.dataloader_num_workers} ({settings['reason']})"
            )
        if self.dataloader_pin_memory is None:
            self.dataloader_pin_memory = kind == "cuda"
        if self.dataloader_persistent_workers is None:
            self.dataloader_persistent_workers = self.dataloader_num_workers > 0
        if self.channels_last is None and kind != "cpu":
            # Measured on an H200 (bench/gpu_check.sh, EfficientNet-Lite0, batch 32): the compute ceiling ran at
            # 1416 images/s NCHW and 1306 NHWC, and the whole run at 616-672 NCHW against 197-268 NHWC.
            self.channels_last = False
            self.auto_choices["channels_last"] = "off (on a GPU NHWC was slower for these networks)"
        if self.normalize_on_device is None:
            self.normalize_on_device = True
            self.auto_choices["normalize_on_device"] = (
                "on (8-bit batches from the loader, converted to float and normalised on the training device)"
            )
        if self.cache_images is None:
            self.cache_images = kind == "cuda"
            self.auto_choices["cache_images"] = (
                "on (GPU training: decoding would be the bottleneck)"
                if self.cache_images
                else "off (CPU training: decoding is a few percent of a step)"
            )
