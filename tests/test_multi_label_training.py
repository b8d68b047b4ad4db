"""Multi-label training: sigmoid head and BCE, mixed multi-hot targets, pos_weight, sigmoid biases fitted to the
data for reused rows, thresholds chosen on validation and saved, and the same commands as single-label."""

from __future__ import annotations

import json
import math

import datasets
import numpy as np
import pytest
import torch
from conftest import SOURCE_LABELS, run_hf_finetune
from PIL import Image
from safetensors.torch import load_file

from hf_finetune import DataArguments, FinetuneTrainingArguments, ModelArguments, finetune
from hf_finetune.data.loading import LoadedData
from hf_finetune.data.multi_label import multi_hot, multi_hot_features
from hf_finetune.errors import ConfigError
from hf_finetune.models.head_init import fit_sigmoid_bias_shift
from hf_finetune.run.build import build_trainer
from hf_finetune.training.imbalance import MAX_POS_WEIGHT, positive_weights
from hf_finetune.training.regularization import MultiHotMixup, mix_batch, multi_label_loss

CLASSES = ["cat", "dog", "zebra"]
COLOURS = {"cat": (230, 40, 40), "dog": (40, 230, 40), "zebra": (40, 40, 230)}
SETTINGS = {"per_device_train_batch_size": 8, "learning_rate": 3e-3, "seed": 3, "logging_steps": 2}


def _mosaic(classes: list[str], rng: np.random.Generator) -> Image.Image:
    """A 32x32 image of four 16x16 tiles; each class of the set fills at least one tile, grey fills the rest."""
    tiles = list(classes) + [None] * (4 - len(classes))
    rng.shuffle(tiles)
    pixels = np.zeros((32, 32, 3), dtype=np.float64)
    for index, name in enumerate(tiles):
        colour = COLOURS[name] if name is not None else (128, 128, 128)
        y, x = divmod(index, 2)
        pixels[16 * y : 16 * y + 16, 16 * x : 16 * x + 16] = colour
    pixels += rng.normal(0, 12, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype("uint8"))


def _label_sets(count: int, rng: np.random.Generator) -> list[list[str]]:
    sets = []
    for _ in range(count):
        size = int(rng.integers(0, 4))  # 0 to 3 classes: an image with none is allowed
        sets.append(sorted(rng.choice(CLASSES, size=size, replace=False).tolist()))
    return sets


def write_split(folder, name: str, count: int, seed: int) -> tuple:
    """``folder/NAME.csv`` (image,label with ';'-joined sets) and its images; returns (path, label sets)."""
    rng = np.random.default_rng(seed)
    images = folder / name
    images.mkdir(parents=True, exist_ok=True)
    sets = _label_sets(count, rng)
    lines = ["image,label"]
    for index, classes in enumerate(sets):
        _mosaic(classes, rng).save(images / f"{index:03d}.png")
        lines.append(f"{name}/{index:03d}.png,{';'.join(classes)}")
    path = folder / f"{name}.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, sets


def loaded_data(folder, train: int = 48, validation: int = 16) -> LoadedData:
    """A multi-label LoadedData built by hand (the contract of hf_finetune.data.multi_label)."""
    splits = {}
    for name, count, seed in (("train", train, 1), ("validation", validation, 2)):
        _, sets = write_split(folder, name, count, seed)
        ids = [[CLASSES.index(c) for c in classes] for classes in sets]
        splits[name] = datasets.Dataset.from_dict(
            {
                "image": [str(folder / name / f"{i:03d}.png") for i in range(count)],
                "label": multi_hot(ids, len(CLASSES)).tolist(),
            },
            features=multi_hot_features(CLASSES),
        )
    return LoadedData(datasets.DatasetDict(splits), list(CLASSES), f"mosaics {folder}")


def _build(checkpoint, folder, out, data=None, **settings):
    training = FinetuneTrainingArguments(output_dir=str(out), **{**SETTINGS, **settings})
    return build_trainer(
        ModelArguments(model_name_or_path=str(checkpoint)),
        DataArguments(train_dir=str(folder)),
        training,
        loaded_data=data if data is not None else loaded_data(folder),
    )


def test_the_head_is_sigmoid_and_the_loss_is_bce(tiny_hf_checkpoint, tmp_path):
    trainer, loaded, _ = _build(tiny_hf_checkpoint, tmp_path / "data", tmp_path / "out")
    assert loaded.model.config.problem_type == "multi_label_classification"
    assert trainer.args.metric_for_best_model == "map"
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["labels"].dtype == torch.float32 and batch["labels"].shape[1] == 3
    batch = trainer.prepare_batch(batch)
    trainer.model.eval()
    loss = trainer.compute_loss(trainer.model, batch)
    logits = trainer.model(pixel_values=batch["pixel_values"]).logits
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), batch["labels"])
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)


def test_mixup_mixes_multi_hot_targets_with_the_images_weight():
    torch.manual_seed(0)
    mixup = MultiHotMixup(
        mixup_alpha=0.8, cutmix_alpha=0.0, prob=1.0, mode="batch", label_smoothing=0.0, num_classes=3
    )
    x = torch.rand(4, 3, 8, 8)
    y = torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 1, 1]], dtype=torch.float32)
    mixed, targets = mixup(x.clone(), y)
    lam = float(((mixed - x.flip(0)) / (x - x.flip(0)))[0, 0, 0, 0])  # mixed = lam x + (1 - lam) x.flip(0)
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x.flip(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(targets, lam * y + (1 - lam) * y.flip(0), rtol=1e-5, atol=1e-5)
    # an odd batch: the last image keeps its own targets
    _, odd = mix_batch(mixup, torch.rand(3, 3, 8, 8), y[:3])
    assert odd[2].tolist() == [0.0, 0.0, 0.0] and odd.shape == (3, 3)


def test_pos_weight_is_negatives_over_positives_capped():
    weights = positive_weights(np.array([10, 50, 0, 1]), num_images=200)
    assert weights.tolist() == pytest.approx([19.0, 3.0, 1.0, MAX_POS_WEIGHT])
    logits, targets = torch.randn(6, 4), torch.randint(0, 2, (6, 4)).float()
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, pos_weight=weights)
    assert float(multi_label_loss(logits, targets, weights)) == pytest.approx(float(expected), rel=1e-6)


def test_weighted_loss_on_multi_label_data_uses_pos_weight(tiny_hf_checkpoint, tmp_path):
    trainer, _, data = _build(
        tiny_hf_checkpoint, tmp_path / "data", tmp_path / "out", class_balance="weighted_loss"
    )
    counts = np.asarray(data.dataset["train"]["label"]).sum(0)
    expected = np.minimum((48 - counts) / counts, MAX_POS_WEIGHT)
    assert trainer.class_weights.tolist() == pytest.approx(expected.tolist(), rel=1e-6)
    batch = trainer.prepare_batch(next(iter(trainer.get_train_dataloader())))
    trainer.model.eval()
    logits = trainer.model(pixel_values=batch["pixel_values"]).logits
    loss = trainer.compute_loss(trainer.model, batch)
    reference = torch.nn.functional.binary_cross_entropy_with_logits(
        logits.float(), batch["labels"], pos_weight=trainer.class_weights
    )
    assert float(loss.detach()) == pytest.approx(float(reference.detach()), rel=1e-5)


def test_the_sampler_and_label_init_from_data_refuse_multi_label_data(tiny_hf_checkpoint, tmp_path):
    data = loaded_data(tmp_path / "data")
    with pytest.raises(ConfigError, match="class_balance: sampler"):
        _build(tiny_hf_checkpoint, tmp_path / "data", tmp_path / "a", data=data, class_balance="sampler")
    with pytest.raises(ConfigError, match="label_init_from_data"):
        build_trainer(
            ModelArguments(model_name_or_path=str(tiny_hf_checkpoint), label_init_from_data=True),
            DataArguments(train_dir=str(tmp_path / "data")),
            FinetuneTrainingArguments(output_dir=str(tmp_path / "b"), **SETTINGS),
            loaded_data=data,
        )


def test_sigmoid_bias_shift_matches_each_class_frequency():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(400, 3, generator=generator) * 2 + torch.tensor([6.0, -4.0, 0.0])
    targets = (torch.rand(400, 3, generator=generator) < torch.tensor([0.2, 0.7, 0.5])).float()
    shift = fit_sigmoid_bias_shift(logits, targets)
    fitted = torch.sigmoid(logits.double() + shift).mean(0)
    # at the optimum the gradient vanishes: mean sigmoid = mean target, up to the weak prior's pull
    assert fitted.tolist() == pytest.approx(targets.double().mean(0).tolist(), abs=2e-3)


def test_reused_rows_become_sigmoid_rows_with_fitted_biases(tiny_hf_checkpoint, tmp_path):
    trainer, loaded, _ = _build(tiny_hf_checkpoint, tmp_path / "data", tmp_path / "out")
    source = load_file(str(tiny_hf_checkpoint / "model.safetensors"))
    weight, bias = source["classifier.1.weight"], source["classifier.1.bias"]
    head = dict(loaded.model.named_parameters())
    for target, name in ((0, "cat"), (1, "dog")):
        row = SOURCE_LABELS.index(name)
        assert torch.equal(head["classifier.1.weight"][target], weight[row])  # bit for bit
    calibration = loaded.mapping.bias_calibration
    assert calibration is not None and calibration["loss_after"] < calibration["loss_before"]
    shift = head["classifier.1.bias"][0] - bias[SOURCE_LABELS.index("cat")]
    assert float(shift) == pytest.approx(calibration["shift"]["cat"], abs=1e-5)


@pytest.fixture(scope="module")
def csv_run(tiny_hf_checkpoint, tmp_path_factory):
    """One multi-label run from CSV files, through the same API as single-label."""
    folder = tmp_path_factory.mktemp("ml_csv")
    train, _ = write_split(folder, "train", 64, seed=1)
    validation, _ = write_split(folder, "validation", 24, seed=2)
    test, _ = write_split(folder, "test", 24, seed=3)
    out = folder / "out"
    result = finetune(
        ModelArguments(model_name_or_path=str(tiny_hf_checkpoint)),
        DataArguments(
            train_file=str(train), validation_file=str(validation), test_file=str(test), image_size=32
        ),
        FinetuneTrainingArguments(output_dir=str(out), num_train_epochs=3, **SETTINGS),
    )
    return result, out, folder


def test_a_multi_label_run_saves_thresholds_and_reports_map(csv_run):
    result, out, _ = csv_run
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert sorted(config["label_thresholds"]) == CLASSES
    assert all(0.0 < t < 1.0 for t in config["label_thresholds"].values())
    metrics = json.loads((out / "eval_results.json").read_text())
    assert 0.0 <= metrics["eval_map"] <= 1.0 and "eval_accuracy" not in metrics
    plan = json.loads((out / "run_plan.json").read_text())
    assert "map" in json.dumps(plan)
    test = json.loads((out / "test_results.json").read_text())
    assert test["test_samples"] == 24 and 0.0 <= test["test_map"] <= 1.0
    # the tiles' colours are easy: three epochs learn them
    assert result.metrics_after["eval_map"] > result.metrics_before["eval_map"]
    assert test["test_map"] > 0.8


def test_pipeline_applies_the_sigmoid(csv_run):
    from transformers import pipeline

    _, out, folder = csv_run
    classify = pipeline("image-classification", model=str(out), device="cpu")
    scores = classify(str(folder / "test" / "000.png"), top_k=None)
    assert len(scores) == 3 and all(0.0 < s["score"] < 1.0 for s in scores)
    assert not math.isclose(sum(s["score"] for s in scores), 1.0, abs_tol=1e-3)  # not a softmax


def test_train_eval_predict_and_push_a_multi_label_csv_with_the_single_label_commands(
    tiny_hf_checkpoint, tmp_path, monkeypatch, capsys
):
    from test_hub import RecordedHubClient

    from hf_finetune.cli import main as cli_main
    from hf_finetune.hub import push as hub_module

    train, _ = write_split(tmp_path, "train", 24, seed=1)
    validation, _ = write_split(tmp_path, "validation", 12, seed=2)
    test, test_sets = write_split(tmp_path, "test", 10, seed=3)
    out = tmp_path / "cli_out"
    data = ["--train_file", train, "--validation_file", validation, "--test_file", test, "--image_size", "32"]
    done = run_hf_finetune(
        "train",
        "--model_name_or_path",
        tiny_hf_checkpoint,
        *data,
        "--num_train_epochs",
        "1",
        "--bf16",  # fp32, as eval computes: the two test mAPs are compared to 4 decimals
        "false",
        "--output_dir",
        out,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    test_map = json.loads((out / "test_results.json").read_text())["test_map"]

    done = run_hf_finetune("eval", out, *data, "--split", "test")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{test_map:.4f}" in done.stdout  # the same test mAP as the run's, one process, the saved folder

    predictions = tmp_path / "predictions.jsonl"
    done = run_hf_finetune("predict", out, tmp_path / "test", "--output", predictions)
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(records) == len(test_sets)
    thresholds = config["label_thresholds"]
    for record in records:
        scores = {p["label"]: p["score"] for p in record["predictions"]}
        assert set(record["labels"]) == {name for name, score in scores.items() if score >= thresholds[name]}

    client = RecordedHubClient()
    monkeypatch.setattr(hub_module, "hub_client", lambda: client)
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 34)
    assert cli_main(["push", str(out), "--repo-id", "someone/multi-label"]) == 0
    files = client.calls[-1][1]["files"]
    assert json.loads(files["config.json"])["label_thresholds"] == thresholds
    assert "precision_recall.png" in files and "mean_average_precision" in files["README.md"].decode()


def _csv_run(checkpoint, folder, out, **settings):
    train, _ = write_split(folder, "train", 48, seed=1)
    validation, _ = write_split(folder, "validation", 16, seed=2)
    return finetune(
        ModelArguments(model_name_or_path=str(checkpoint)),
        DataArguments(train_file=str(train), validation_file=str(validation), image_size=32),
        FinetuneTrainingArguments(output_dir=str(out), **{**SETTINGS, **settings}),
    )


def test_lora_mixup_and_early_stopping_on_map(tiny_hf_checkpoint, tmp_path):
    out = tmp_path / "out"
    _csv_run(
        tiny_hf_checkpoint,
        tmp_path,
        out,
        num_train_epochs=3,
        lora_r=4,
        mixup_alpha=0.4,
        early_stopping_patience=1,
        bf16=False,
    )
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification" and len(config["label_thresholds"]) == 3
    assert (out / "adapter").is_dir()
    state = json.loads(next(out.glob("checkpoint-*/trainer_state.json")).read_text())
    scores = [e["eval_map"] for e in state["log_history"] if "eval_map" in e]
    assert state["best_metric"] == pytest.approx(max(scores))  # the checkpoint is picked by mAP
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert losses and all(math.isfinite(loss) for loss in losses)


def test_the_head_trains_alone_on_cached_features(tiny_hf_checkpoint, tmp_path):
    out = tmp_path / "out"
    result = _csv_run(
        tiny_hf_checkpoint, tmp_path, out, num_train_epochs=2, freeze_layers=-1, feature_cache=True
    )
    assert result.feature_cache_seconds is not None
    saved = load_file(str(out / "model.safetensors"))
    source = load_file(str(tiny_hf_checkpoint / "model.safetensors"))
    body = [name for name in source if not name.startswith("classifier")]
    assert all(torch.equal(saved[name], source[name]) for name in body)  # the frozen body is unchanged
    cat = SOURCE_LABELS.index("cat")  # the cat row started as the source's row: training moved it
    assert (saved["classifier.1.weight"][0] - source["classifier.1.weight"][cat]).abs().max() > 1e-4
    assert 0.0 < json.loads((out / "eval_results.json").read_text())["eval_map"] <= 1.0


def _logits_of_saved_model(out, csv_path) -> tuple[np.ndarray, np.ndarray]:
    """One process, the saved folder, the evaluation transform: (logits, multi-hot targets) of a CSV's rows."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from hf_finetune.data.transforms import build_transforms, data_config_from_processor

    model = AutoModelForImageClassification.from_pretrained(str(out)).eval()
    processor = AutoImageProcessor.from_pretrained(str(out))
    _, transform = build_transforms(data_config_from_processor(processor), augmentation="none")
    rows = [line.split(",") for line in csv_path.read_text().splitlines()[1:]]
    pixels = torch.stack([transform(Image.open(csv_path.parent / path).convert("RGB")) for path, _ in rows])
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits.numpy()
    names = model.config.id2label
    ids = [[CLASSES.index(c) for c in label.split(";") if c] for _, label in rows]
    assert [names[i] for i in range(3)] == CLASSES
    return logits, multi_hot(ids, 3)


def test_two_processes_count_every_validation_and_test_image_once(tiny_hf_checkpoint, tmp_path):
    """2 CPU processes (gloo), odd split sizes (the last batch is padded on one rank): the run's validation and
    test mAP equal one process's on the saved model, every image counted once."""
    import yaml
    from test_distributed import _env

    from hf_finetune.inference.multi_label_metrics import multi_label_metrics

    train, _ = write_split(tmp_path, "train", 32, seed=1)
    validation, _ = write_split(tmp_path, "validation", 15, seed=2)
    test, _ = write_split(tmp_path, "test", 13, seed=3)
    out = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    keys = {
        "model_name_or_path": str(tiny_hf_checkpoint),
        "train_file": str(train),
        "validation_file": str(validation),
        "test_file": str(test),
        "image_size": 32,
        "bf16": False,
        "num_train_epochs": 1,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 4,
        "output_dir": str(out),
        "report_to": "none",
        "disable_tqdm": True,
    }
    recipe.write_text(yaml.safe_dump(keys))
    done = run_hf_finetune(
        "train", recipe, "--accelerate_config", "cpu_ddp", env=_env(), cwd=tmp_path, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "this is rank 1" in done.stdout
    thresholds = json.loads((out / "config.json").read_text())["label_thresholds"]
    at = np.array([thresholds[name] for name in CLASSES])
    for split, path in (("eval", validation), ("test", test)):
        saved = json.loads((out / f"{split}_results.json").read_text())
        logits, targets = _logits_of_saved_model(out, path)
        assert saved[f"{split}_samples"] == len(targets)
        single = multi_label_metrics(logits, targets, at)
        assert saved[f"{split}_map"] == pytest.approx(single["map"], abs=1e-6)
        assert saved[f"{split}_f1_micro"] == pytest.approx(single["f1_micro"], abs=1e-6)


def test_an_interrupted_multi_label_run_resumes_to_the_end(tiny_hf_checkpoint, tmp_path):
    import os
    import signal

    from transformers import TrainerCallback

    from hf_finetune.errors import TrainingInterrupted
    from hf_finetune.run.train import main

    class StopAtStep4(TrainerCallback):  # the middle of epoch 2 (3 steps an epoch)
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 4:
                os.kill(os.getpid(), signal.SIGTERM)

    train, _ = write_split(tmp_path, "train", 24, seed=1)
    validation, _ = write_split(tmp_path, "validation", 12, seed=2)

    def arguments(out, **extra):
        return (
            ModelArguments(model_name_or_path=str(tiny_hf_checkpoint)),
            DataArguments(train_file=str(train), validation_file=str(validation), image_size=32),
            FinetuneTrainingArguments(
                output_dir=str(out), num_train_epochs=3, bf16=False, **SETTINGS, **extra
            ),
        )

    reference = main(*arguments(tmp_path / "reference"))
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        main(*arguments(out), callbacks=[StopAtStep4()])
    assert not (out / "config.json").exists() and (out / "checkpoint-4").is_dir()
    resumed = main(*arguments(out, resume_from_checkpoint="last"))
    assert resumed.metrics_after["epoch"] == 3
    # measured: equal (the batches of the first 4 steps are bit-identical; the later crops may differ)
    assert resumed.metrics_after["eval_map"] == pytest.approx(reference.metrics_after["eval_map"], abs=0.02)
    assert len(json.loads((out / "config.json").read_text())["label_thresholds"]) == 3
