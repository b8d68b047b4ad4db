"""Recipe YAML + flags -> (ModelArguments, DataArguments, FinetuneTrainingArguments), and every bad input
is a one-line ConfigError naming the key and the bad value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hf_finetune.config.arguments import DataArguments, FinetuneTrainingArguments, ModelArguments
from hf_finetune.config.parser import known_keys, load_recipe, parse_train_args
from hf_finetune.errors import ConfigError

BASE = {"model_name_or_path": "some/model", "train_dir": "some/images"}


def write_recipe(tmp_path: Path, content, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(
        content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False), encoding="utf-8"
    )
    return path


def parse(tmp_path: Path, recipe=None, *flags: str):
    argv = [str(write_recipe(tmp_path, recipe))] if recipe is not None else []
    return parse_train_args(argv + list(flags))


# --- recipe keys land in the right dataclass ----------------------------------------------------------

FULL_RECIPE = {
    # ModelArguments
    "model_name_or_path": "timm/resnet18.a1_in1k",
    "model_revision": "v1.0",
    "trust_remote_code": True,
    # DataArguments
    "train_dir": "data/pets",
    "image_size": 160,
    "augmentation": "flip",
    "crop_scale_min": 0.5,
    "max_train_samples": 100,
    "train_val_split": 0.2,
    # FinetuneTrainingArguments
    "output_dir": "outputs/pets",
    "learning_rate": 3.0e-4,
    "num_train_epochs": 2,
    "per_device_train_batch_size": 16,
    "head_lr_multiplier": 5,
    "freeze_layers": 2,
    "freeze_patterns": ["^stem", r"blocks\.0\."],
    "batchnorm": "freeze",
    "seed": 7,
    "use_cpu": True,
}


def test_recipe_keys_of_all_three_dataclasses(tmp_path):
    model_args, data_args, training_args = parsed = parse(tmp_path, FULL_RECIPE)
    assert isinstance(model_args, ModelArguments)
    assert isinstance(data_args, DataArguments)
    assert isinstance(training_args, FinetuneTrainingArguments)

    assert model_args.model_name_or_path == "timm/resnet18.a1_in1k"
    assert model_args.model_revision == "v1.0"
    assert model_args.trust_remote_code is True

    assert data_args.train_dir == "data/pets"
    assert data_args.dataset_name is None and data_args.train_file is None
    assert data_args.image_size == 160 and isinstance(data_args.image_size, int)
    assert data_args.augmentation == "flip"
    assert data_args.crop_scale_min == pytest.approx(0.5)
    assert data_args.max_train_samples == 100
    assert data_args.train_val_split == pytest.approx(0.2)

    assert training_args.output_dir == "outputs/pets"
    assert training_args.learning_rate == pytest.approx(3e-4)
    assert training_args.num_train_epochs == 2
    assert training_args.per_device_train_batch_size == 16
    assert isinstance(training_args.per_device_train_batch_size, int)
    assert training_args.head_lr_multiplier == 5
    assert training_args.freeze_layers == 2
    assert training_args.freeze_patterns == ["^stem", r"blocks\.0\."]
    assert training_args.batchnorm == "freeze"
    assert training_args.seed == 7
    assert training_args.use_cpu is True

    # keys the recipe does not name keep their (fine-tuning) defaults
    assert data_args.hflip_prob == pytest.approx(0.5)
    assert training_args.weight_decay == pytest.approx(0.01)
    assert str(getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type)) == "cosine"
    assert training_args.load_best_model_at_end is True
    assert training_args.remove_unused_columns is False

    # explicit: exactly the recipe keys, with their final values
    assert parsed.explicit == FULL_RECIPE
    assert parsed.recipe_path == str(tmp_path / "recipe.yaml")


def test_flags_override_the_recipe(tmp_path):
    parsed = parse(
        tmp_path,
        FULL_RECIPE,
        "--learning_rate",
        "1e-3",
        "--image_size",
        "96",
        "--model_revision",
        "v2",
        "--batchnorm",
        "train",
        "--max_eval_samples",
        "20",
        "--seed=11",
    )
    model_args, data_args, training_args = parsed
    assert training_args.learning_rate == pytest.approx(1e-3)
    assert data_args.image_size == 96
    assert model_args.model_revision == "v2"
    assert training_args.batchnorm == "train"
    assert data_args.max_eval_samples == 20
    assert training_args.seed == 11
    # untouched recipe keys stay as in the file
    assert training_args.per_device_train_batch_size == 16
    assert data_args.augmentation == "flip"

    expected = dict(FULL_RECIPE)
    expected.update(learning_rate=1e-3, image_size=96, model_revision="v2", batchnorm="train", seed=11)
    expected["max_eval_samples"] = 20
    assert parsed.explicit == expected
    assert set(parsed.explicit) == set(FULL_RECIPE) | {"max_eval_samples"}


def test_flags_alone_without_recipe(tmp_path):
    parsed = parse_train_args(
        [
            "--model_name_or_path",
            "m",
            "--train_file",
            "rows.csv",
            "--num_train_epochs",
            "1",
            "--augmentation",
            "none",
        ]
    )
    model_args, data_args, training_args = parsed
    assert model_args.model_name_or_path == "m"
    assert data_args.train_file == "rows.csv"
    assert training_args.num_train_epochs == 1
    assert data_args.augmentation == "none"
    assert parsed.recipe_path is None
    assert parsed.explicit == {
        "model_name_or_path": "m",
        "train_file": "rows.csv",
        "num_train_epochs": 1.0,
        "augmentation": "none",
    }


def test_yaml_scientific_notation_without_dot_is_a_float(tmp_path):
    # PyYAML reads `1e-4` as a string; it must still become the float 1e-4
    parsed = parse(tmp_path, "model_name_or_path: m\ntrain_dir: d\nlearning_rate: 1e-4\n")
    assert parsed[2].learning_rate == pytest.approx(1e-4)
    assert isinstance(parsed[2].learning_rate, float)
    assert parsed.explicit["learning_rate"] == pytest.approx(1e-4)


def test_freeze_patterns_from_yaml_list_and_from_flags(tmp_path):
    from_yaml = parse(tmp_path, dict(BASE, freeze_patterns=["^embed", "layer1"]))
    assert from_yaml[2].freeze_patterns == ["^embed", "layer1"]
    assert from_yaml.explicit["freeze_patterns"] == ["^embed", "layer1"]

    from_flags = parse(tmp_path, BASE, "--freeze_patterns", "a", "b")
    assert from_flags[2].freeze_patterns == ["a", "b"]
    assert from_flags.explicit["freeze_patterns"] == ["a", "b"]

    # a flag replaces the recipe's list, it does not append to it
    both = parse(tmp_path, dict(BASE, freeze_patterns=["^embed", "layer1"]), "--freeze_patterns", "x")
    assert both[2].freeze_patterns == ["x"]
    assert both.explicit["freeze_patterns"] == ["x"]

    # a single string in YAML is a one-element list
    single = parse(tmp_path, dict(BASE, freeze_patterns="^stem"))
    assert single[2].freeze_patterns == ["^stem"]

    # not given: empty list
    assert parse(tmp_path, BASE)[2].freeze_patterns == []


def test_int_field_given_as_integral_float_is_an_int_or_an_error(tmp_path):
    """`per_device_train_batch_size: 8.0` must become the int 8 (or be refused): a float batch size makes
    torch's DataLoader raise a traceback after the model has been loaded."""
    try:
        parsed = parse(tmp_path, dict(BASE, per_device_train_batch_size=8.0))
    except ConfigError as err:
        assert "per_device_train_batch_size" in str(err)
        return
    value = parsed[2].per_device_train_batch_size
    assert value == 8
    assert type(value) is int, f"per_device_train_batch_size stayed {value!r} ({type(value).__name__})"


def test_known_keys_cover_all_three_dataclasses():
    keys = set(known_keys())
    assert {
        "model_name_or_path",
        "train_dir",
        "augmentation",
        "learning_rate",
        "freeze_patterns",
        "batchnorm",
        "head_lr_multiplier",
        "output_dir",
        "seed",
    } <= keys


def test_empty_recipe_is_an_empty_mapping(tmp_path):
    assert load_recipe(write_recipe(tmp_path, "# only a comment\n")) == {}


# --- bad input: a ConfigError naming the key and the bad value ----------------------------------------

# (id, recipe (dict, text or None), flags, substrings the message must contain)
BAD_INPUTS = [
    (
        "unknown-yaml-key",
        dict(BASE, lerning_rate=1e-3),
        [],
        ["lerning_rate", "did you mean", "'learning_rate'"],
    ),
    ("unknown-flag", BASE, ["--lerning_rate", "1e-3"], ["--lerning_rate", "did you mean", "'learning_rate'"]),
    (
        "unknown-flag-no-recipe",
        None,
        ["--model_name_or_path", "m", "--train_dri", "d"],
        ["train_dri", "'train_dir'"],
    ),
    (
        "epochs-word",
        dict(BASE, num_train_epochs="three"),
        [],
        ["num_train_epochs: got 'three'; expected a number"],
    ),
    (
        "epochs-word-flag",
        BASE,
        ["--num_train_epochs", "three"],
        ["num_train_epochs", "three", "expected a number"],
    ),
    ("resume-word", BASE, ["--resume", "maybe"], ["--resume: got 'maybe'; expected no value, true or false"]),
    (
        "batch-fraction",
        dict(BASE, per_device_train_batch_size=2.5),
        [],
        ["per_device_train_batch_size", "2.5"],
    ),
    (
        "batch-fraction-flag",
        BASE,
        ["--per_device_train_batch_size", "2.5"],
        ["per_device_train_batch_size", "2.5"],
    ),
    ("list-for-scalar", dict(BASE, learning_rate=[1e-3, 1e-4]), [], ["learning_rate", "list"]),
    ("bool-for-float", dict(BASE, num_train_epochs=True), [], ["num_train_epochs", "True"]),
    ("mapping-for-scalar", dict(BASE, output_dir={"a": 1}), [], ["output_dir", "mapping"]),
    ("augmentation-choice", dict(BASE, augmentation="foo"), [], ["augmentation", "foo", "rrc_flip"]),
    ("augmentation-choice-flag", BASE, ["--augmentation", "foo"], ["augmentation", "foo", "rrc_flip"]),
    ("batchnorm-choice", dict(BASE, batchnorm="maybe"), [], ["batchnorm", "maybe", "freeze"]),
    ("batchnorm-choice-flag", BASE, ["--batchnorm", "maybe"], ["batchnorm", "maybe", "freeze"]),
    (
        "batch-zero",
        dict(BASE, per_device_train_batch_size=0),
        [],
        ["per_device_train_batch_size", "0", "positive"],
    ),
    ("batch-negative", dict(BASE, per_device_train_batch_size=-4), [], ["per_device_train_batch_size", "-4"]),
    ("eval-batch-zero", BASE, ["--per_device_eval_batch_size", "0"], ["per_device_eval_batch_size", "0"]),
    ("image-size-zero", dict(BASE, image_size=0), [], ["image_size", "0", "positive"]),
    ("image-size-negative", BASE, ["--image_size", "-32"], ["image_size", "-32"]),
    ("max-train-samples-negative", dict(BASE, max_train_samples=-5), [], ["max_train_samples", "-5"]),
    ("epochs-zero", dict(BASE, num_train_epochs=0), [], ["num_train_epochs", "0"]),
    ("lr-negative", dict(BASE, learning_rate=-0.1), [], ["learning_rate", "-0.1"]),
    ("freeze-layers", dict(BASE, freeze_layers=-2), [], ["freeze_layers", "-2"]),
    ("train-val-split", dict(BASE, train_val_split=1.5), [], ["train_val_split", "1.5"]),
    ("bf16-and-fp16", dict(BASE, bf16=True, fp16=True), [], ["bf16", "fp16"]),
    ("bf16-and-fp16-flags", BASE, ["--bf16", "true", "--fp16", "true"], ["bf16", "fp16"]),
    ("workers-negative", dict(BASE, dataloader_num_workers=-1), [], ["dataloader_num_workers", "-1"]),
    ("cache-images-word", dict(BASE, cache_images="sometimes"), [], ["cache_images", "sometimes"]),
    ("missing-model", {"train_dir": "d"}, [], ["model_name_or_path", "None"]),
    ("missing-model-flags", None, ["--train_dir", "d"], ["model_name_or_path"]),
    (
        "no-data-source",
        {"model_name_or_path": "m"},
        [],
        ["dataset_name", "train_dir", "train_file", "exactly one"],
    ),
    (
        "two-data-sources",
        dict(BASE, dataset_name="org/pets"),
        [],
        ["dataset_name", "train_dir", "org/pets", "some/images"],
    ),
    ("two-data-sources-flag", BASE, ["--train_file", "rows.csv"], ["train_dir", "train_file", "rows.csv"]),
    (
        "bad-regex-yaml",
        dict(BASE, freeze_patterns=["(unclosed"]),
        [],
        ["freeze_patterns", "(unclosed", "regular expression"],
    ),
    (
        "bad-regex-flag",
        BASE,
        ["--freeze_patterns", "ok", "[x"],
        ["freeze_patterns", "[x", "regular expression"],
    ),
    ("stray-positional", BASE, ["--seed", "1", "extra"], ["extra"]),
]


@pytest.mark.parametrize(
    "recipe, flags, expected", [case[1:] for case in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_is_a_one_line_config_error(tmp_path, recipe, flags, expected):
    with pytest.raises(ConfigError) as info:
        parse(tmp_path, recipe, *flags)
    message = str(info.value)
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"
    assert "\n" not in message.strip()


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--resume"], "last"),
        (["--resume", "true"], "last"),
        (["--resume=yes", "--seed", "3"], "last"),
        (["--resume", "--seed", "3"], "last"),
        (["--resume", "false"], None),
        (["--resume_from_checkpoint", "out/checkpoint-7"], "out/checkpoint-7"),
    ],
)
def test_resume_flag_means_the_last_checkpoint_and_stays_out_of_the_recipe(tmp_path, flags, expected):
    parsed = parse(tmp_path, BASE, *flags)
    assert parsed[2].resume_from_checkpoint == expected
    assert "resume_from_checkpoint" not in parsed.explicit and "resume" not in parsed.explicit
    if "--seed" in flags:
        assert parsed[2].seed == 3 and parsed.explicit["seed"] == 3


def test_recipe_that_does_not_exist(tmp_path):
    missing = tmp_path / "nope" / "recipe.yaml"
    with pytest.raises(ConfigError) as info:
        parse_train_args([str(missing), "--seed", "1"])
    assert str(missing) in str(info.value)
    assert "does not exist" in str(info.value)


def test_recipe_that_is_a_folder(tmp_path):
    with pytest.raises(ConfigError) as info:
        parse_train_args([str(tmp_path)])
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("- model_name_or_path\n- train_dir\n", ["mapping", "list"]),
        ("just a sentence\n", ["mapping", "str"]),
        ("42\n", ["mapping", "int"]),
    ],
    ids=["list", "string", "number"],
)
def test_recipe_that_is_not_a_mapping(tmp_path, text, expected):
    path = write_recipe(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        parse_train_args([str(path)])
    message = str(info.value)
    assert str(path) in message
    for part in expected:
        assert part in message


@pytest.mark.parametrize(
    "text, line",
    [("model_name_or_path: m\nfreeze_patterns: [a,\n", 3), ("model_name_or_path: m\ntrain_dir: : d\n", 2)],
    ids=["unclosed-list", "double-colon"],
)
def test_invalid_yaml(tmp_path, text, line):
    path = write_recipe(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        parse_train_args([str(path)])
    message = str(info.value)
    assert str(path) in message
    assert "YAML" in message
    assert f"line {line}" in message
    assert "\n" not in message


# --- round trip: explicit -> YAML -> parse gives the same configuration -------------------------------

VOLATILE = {"logging_dir"}  # derived from the run time


def _as_dicts(parsed) -> list[dict]:
    out = []
    for obj in parsed:
        data = obj.to_dict() if hasattr(obj, "to_dict") else dict(vars(obj))
        out.append({k: v for k, v in data.items() if k not in VOLATILE})
    return out


ROUND_TRIPS = {
    "plain": (FULL_RECIPE, ["--learning_rate", "2e-4", "--freeze_patterns", "a", "b", "--hflip_prob", "0"]),
    "data-and-eval": (
        {
            "model_name_or_path": "m",
            "train_file": "rows.csv",
            "validation_file": "val.jsonl",
            "image_column_name": "img",
            "label_column_name": "y",
            "max_eval_samples": 5,
            "augmentation": "none",
            "per_device_eval_batch_size": 8,
            "eval_on_start": False,
            "save_total_limit": 1,
            "warmup_steps": 3,
        },
        ["--weight_decay", "0.05"],
    ),
    "enum-valued-keys": (
        dict(
            BASE,
            lr_scheduler_type="linear",
            eval_strategy="steps",
            eval_steps=5,
            save_strategy="steps",
            save_steps=5,
            optim="adamw_torch",
        ),
        [],
    ),
    "report_to-none": (dict(BASE, report_to="none"), []),
}


@pytest.mark.parametrize("recipe, flags", list(ROUND_TRIPS.values()), ids=list(ROUND_TRIPS))
def test_round_trip_through_explicit(tmp_path, recipe, flags):
    first = parse(tmp_path, recipe, *flags)
    # explicit is what the output folder's recipe.yaml records: it must be plain YAML ...
    dumped = yaml.safe_dump(first.explicit, sort_keys=False)
    second = parse_train_args([str(write_recipe(tmp_path, dumped, "again.yaml"))])
    # ... that parses back to the same configuration and the same explicit keys
    assert second.explicit == first.explicit
    for a, b in zip(_as_dicts(first), _as_dicts(second), strict=True):
        assert a == b
