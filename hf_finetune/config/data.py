"""Data keys: where the images come from and how they become tensors.

* the source, exactly one of ``dataset_name`` (a Hub dataset), ``train_dir`` (an image folder) or
  ``train_file`` (a CSV/JSONL file), with its validation split, columns and sample limits;
* the preprocessing: ``image_size``, ``augmentation``, ``crop_scale_min``, ``hflip_prob``, and timm's
  augmentations ``auto_augment`` (a policy string, checked by timm), ``random_erasing``, ``color_jitter``;
* ``strict``: whether a bad image file is an error or skipped and listed;
* ``streaming``, ``labels``, ``shuffle_buffer_size``: shards read as a stream while training (docs/streaming.md);
* the kind of labels: ``problem_type`` (one class per image, or a set of classes per image) and
  ``label_separator`` (how one text cell names several classes).

Read by :mod:`hf_finetune.data`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hf_finetune.config.ranges import check_recipe_values, require

__all__ = ["DataArguments", "AUGMENTATIONS", "PROBLEM_TYPES"]

AUGMENTATIONS = ("rrc_flip", "flip", "none")
PROBLEM_TYPES = ("auto", "single_label", "multi_label")


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
            "help": "The training data: a file, glob or folder of CSV/JSONL/parquet (image path, label) rows, "
            "or of parquet, Arrow, WebDataset .tar or save_to_disk data holding the images (docs/data.md); "
            "relative image paths are read from the file's folder."
        },
    )
    validation_file: str | None = field(
        default=None, metadata={"help": "The validation data, in any form train_file takes."}
    )
    test_file: str | None = field(
        default=None,
        metadata={
            "help": "Test data, in any form train_file takes, scored once by the final model after training; "
            "nothing the run chooses reads it."
        },
    )
    problem_type: str = field(
        default="auto",
        metadata={
            "help": "single_label (one class per image, softmax), multi_label (a set of classes per image, "
            "sigmoid and binary cross-entropy, an empty set allowed) or auto: multi_label when the label column "
            "holds lists, a Sequence feature or text with label_separator in it, else single_label.",
            "choices": list(PROBLEM_TYPES),
        },
    )
    label_separator: str = field(
        default=";",
        metadata={
            "help": "The character that separates class names in one text label (hotdog;food) of multi-label "
            "data; an empty string never splits."
        },
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
    auto_augment: str | None = field(
        default=None,
        metadata={
            "help": "A timm augmentation policy applied after random-resized-crop and flip (augmentation rrc_flip): "
            "RandAugment 'rand-m9-mstd0.5-inc1', TrivialAugment-like 'rand-n1-mstd101', AugMix 'augmix-m5-w4-d2', "
            "AutoAugment 'original' or 'v0', '3a' (DeiT III); unset: none. Passed to timm's create_transform."
        },
    )
    random_erasing: float = field(
        default=0.0,
        metadata={
            "help": "Probability of timm's RandomErasing on each training image (augmentation rrc_flip); 0: off."
        },
    )
    color_jitter: float = field(
        default=0.0,
        metadata={
            "help": "Brightness/contrast/saturation jitter strength of timm's training transform (augmentation "
            "rrc_flip; 0.4 is timm's usual); 0: off. timm skips it when auto_augment is set."
        },
    )
    strict: bool = field(
        default=False,
        metadata={
            "help": "Make any bad image file (no image extension, zero bytes, not an image, a decompression "
            "bomb, an aspect ratio beyond 50:1, or one that fails to decode) an error naming it; by default "
            "bad files are skipped and listed in OUTPUT/bad_images.json."
        },
    )

    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read the training data as a stream while training (datasets' streaming loaders): a Hub "
            "dataset, or train_file/validation_file parquet, arrow or WebDataset .tar shards (a file, a glob or a "
            "folder) or a save_to_disk folder; nothing is read before the first step. See docs/streaming.md."
        },
    )
    labels: list[str] | None = field(
        default=None,
        metadata={
            "help": "The class names, in id order, for a stream whose label column is not a ClassLabel (text "
            "names or integer ids); a label outside this list is an error naming the sample."
        },
    )
    shuffle_buffer_size: int = field(
        default=1000,
        metadata={
            "help": "streaming: examples held in the seeded shuffle buffer (the shard order is shuffled too); "
            "0: the stream's own order."
        },
    )

    def __post_init__(self):
        check_recipe_values(self)  # types and ranges of every numeric key (config.ranges.RANGES)
        self.check_data()

    def check_auto_augment(self) -> None:
        """``auto_augment`` is a policy timm's ``create_transform`` builds (asked on a 32 px transform), and only
        with the augmentation that applies it; ``random_erasing`` and ``color_jitter`` likewise."""
        for key in ("random_erasing", "color_jitter"):
            value = getattr(self, key)
            require(
                isinstance(value, (int, float)) and not isinstance(value, bool),
                key,
                value,
                "a number in [0, 1]",
            )
            require(
                value == 0 or self.augmentation == "rrc_flip",
                key,
                value,
                f"0 with augmentation {self.augmentation!r} (timm applies it in augmentation rrc_flip only)",
            )
        if self.auto_augment is None or self.auto_augment in ("", "none"):
            self.auto_augment = None
            return
        require(
            self.augmentation == "rrc_flip",
            "auto_augment",
            self.auto_augment,
            f"no policy with augmentation {self.augmentation!r} (timm applies it in augmentation rrc_flip only)",
        )
        policy = self.auto_augment
        expected = (
            "a timm auto_augment policy such as 'rand-m9-mstd0.5-inc1', 'rand-n1-mstd101', 'augmix-m5-w4-d2', "
            "'original', 'v0' or '3a'"
        )
        require(isinstance(policy, str), "auto_augment", policy, expected)
        from timm.data import create_transform

        try:
            create_transform(32, is_training=True, auto_augment=policy)
        except Exception as err:  # timm asserts or raises on any policy it does not know
            reason = str(err).strip() or type(err).__name__
            require(False, "auto_augment", policy, f"{expected} (timm: {reason})")

    def check_data(self) -> None:
        sources = {
            "dataset_name": self.dataset_name,
            "train_dir": self.train_dir,
            "train_file": self.train_file,
        }
        given = {k: v for k, v in sources.items() if v is not None}
        require(
            len(given) == 1,
            "dataset_name/train_dir/train_file",
            given or None,
            "exactly one of dataset_name (Hub id), train_dir (image folder) or train_file (CSV/JSONL)",
        )
        require(
            0.0 < self.train_val_split < 1.0, "train_val_split", self.train_val_split, "a fraction in (0, 1)"
        )
        for key in ("max_train_samples", "max_eval_samples", "image_size"):
            value = getattr(self, key)
            require(value is None or (isinstance(value, int) and value > 0), key, value, "a positive integer")
        require(
            self.augmentation in AUGMENTATIONS,
            "augmentation",
            self.augmentation,
            f"one of {list(AUGMENTATIONS)}",
        )
        require(
            0.0 < self.crop_scale_min <= 1.0, "crop_scale_min", self.crop_scale_min, "a fraction in (0, 1]"
        )
        require(0.0 <= self.hflip_prob <= 1.0, "hflip_prob", self.hflip_prob, "a probability in [0, 1]")
        self.check_auto_augment()
        require(
            self.problem_type in PROBLEM_TYPES,
            "problem_type",
            self.problem_type,
            f"one of {list(PROBLEM_TYPES)}",
        )
        require(
            isinstance(self.label_separator, str)
            and len(self.label_separator.strip()) <= 1
            and self.label_separator == self.label_separator.strip(),
            "label_separator",
            self.label_separator,
            "one character that is not a space, or an empty string",
        )
        self.check_streaming()
        require(
            self.test_file is None or self.train_file is not None,
            "test_file",
            self.test_file,
            "test_file with train_file (an image folder has test/, a dataset its test split)",
        )

    def check_streaming(self) -> None:
        """``labels``: distinct names; ``streaming``: a source a stream can read (not an image folder)."""
        if self.labels is not None:
            names = [str(name) for name in self.labels]
            require(
                len(names) > 0 and len(set(names)) == len(names) and all(n.strip() for n in names),
                "labels",
                self.labels,
                "a list of distinct, non-empty class names",
            )
            self.labels = names
        require(
            isinstance(self.shuffle_buffer_size, int) and self.shuffle_buffer_size >= 0,
            "shuffle_buffer_size",
            self.shuffle_buffer_size,
            "a count of examples (0: no shuffle buffer)",
        )
        if self.streaming:
            require(
                self.train_dir is None and self.validation_dir is None,
                "streaming",
                True,
                "dataset_name or train_file shards (parquet, arrow, WebDataset .tar, save_to_disk); an image "
                "folder (train_dir/validation_dir) is listed, not streamed: set streaming: false",
            )
