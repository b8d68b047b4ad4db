"""The speed defaults keep results correct: bf16/loader choices from the machine, channels_last, the image
cache and the linear-probe feature cache (the speed itself is measured by bench/throughput.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hf_finetune.config.arguments import DataArguments, FinetuneTrainingArguments, ModelArguments
from hf_finetune.errors import ConfigError
from hf_finetune.runtime import performance, same_padding, tuning
from hf_finetune.runtime.plan import RunPlan
from hf_finetune.runtime.speed_plan import resolve_speed


def _args(tmp_path: Path, **kwargs) -> FinetuneTrainingArguments:
    base = dict(output_dir=str(tmp_path / "out"), report_to=[], disable_tqdm=True)
    return FinetuneTrainingArguments(**{**base, **kwargs})


def _resolved(tmp_path: Path, **kwargs) -> tuple[FinetuneTrainingArguments, RunPlan]:
    """The arguments as the run uses them (speed ``auto`` values chosen for the machine), and the plan that
    records each choice (``plan.describe(key)``: ``on (why)``)."""
    plan = RunPlan()
    return resolve_speed(_args(tmp_path, **kwargs), plan), plan


# --- choices from the machine ----------------------------------------------------------------------------


@pytest.mark.parametrize("supported", [True, False])
def test_bf16_auto_follows_the_cpu(tmp_path, monkeypatch, supported):
    monkeypatch.setattr(performance, "device_kind", lambda use_cpu=False: "cpu")
    monkeypatch.setattr(performance, "cpu_supports_bf16", lambda: supported)
    args, plan = _resolved(tmp_path)
    assert args.bf16 is supported
    assert plan.describe("bf16").startswith("on" if supported else "off")
    if supported:
        assert args.use_cpu is True  # what transformers needs to accept bf16 without a GPU
        assert args.mixed_precision == "bf16"


def test_bf16_explicit_values_win(tmp_path, monkeypatch):
    monkeypatch.setattr(performance, "device_kind", lambda use_cpu=False: "cpu")
    monkeypatch.setattr(performance, "cpu_supports_bf16", lambda: True)
    assert _resolved(tmp_path, bf16=False)[0].bf16 is False
    assert "bf16" not in _resolved(tmp_path, bf16=False)[1]
    assert _resolved(tmp_path, bf16="auto")[0].bf16 is True


def test_auto_is_accepted_in_recipes_and_flags(tmp_path, tiny_image_folder, tiny_hf_checkpoint, monkeypatch):
    from hf_finetune.config.parser import parse_train_args

    monkeypatch.setattr(performance, "cpu_supports_bf16", lambda: False)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model_name_or_path: {tiny_hf_checkpoint}\ntrain_dir: {tiny_image_folder}\n"
        f"output_dir: {tmp_path / 'out'}\nbf16: auto\nchannels_last: auto\ndataloader_num_workers: auto\n"
    )
    _, _, parsed = parse_train_args([str(recipe), "--cache_images", "auto", "--feature_cache=auto"])
    training_args = resolve_speed(parsed, RunPlan())
    assert training_args.bf16 is False and training_args.channels_last is None
    assert training_args.cache_images is False and training_args.feature_cache is None
    assert isinstance(training_args.dataloader_num_workers, int)
    _, _, flagged = parse_train_args([str(recipe), "--bf16", "true", "--dataloader_num_workers", "3"])
    assert flagged.bf16 is True and flagged.dataloader_num_workers == 3
    with pytest.raises(ConfigError, match="bf16"):
        parse_train_args([str(recipe), "--bf16", "sometimes"])


def test_loader_settings_from_the_machine():
    two_core = performance.loader_settings("cpu", cpu_count=2, compute_threads=2)
    assert two_core["num_workers"] == 0 and two_core["persistent_workers"] is False
    hyperthreaded = performance.loader_settings("cpu", cpu_count=32, compute_threads=16)
    assert hyperthreaded["num_workers"] == 4 and hyperthreaded["persistent_workers"] is True
    gpu = performance.loader_settings("cuda", cpu_count=16, local_processes=2)
    assert gpu == {**gpu, "num_workers": 7, "persistent_workers": True, "prefetch_factor": 4}
    assert performance.loader_settings("cuda", cpu_count=1)["num_workers"] == 1


def test_pin_memory_only_with_a_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(performance, "device_kind", lambda use_cpu=False: "cpu")
    assert _resolved(tmp_path)[0].dataloader_pin_memory is False
    monkeypatch.setattr(performance, "device_kind", lambda use_cpu=False: "cuda")
    monkeypatch.setattr(performance, "bf16_supported", lambda kind: (False, "test"))
    args, _ = _resolved(tmp_path)
    assert (
        args.dataloader_pin_memory is True and args.cache_images is True and args.dataloader_num_workers >= 1
    )


def test_channels_last_auto_is_off_on_a_gpu_and_chosen_from_the_model_on_a_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(performance, "bf16_supported", lambda kind: (False, "test"))
    monkeypatch.setattr(performance, "device_kind", lambda use_cpu=False: "cuda")
    gpu, plan = _resolved(tmp_path)
    assert gpu.channels_last is False and plan.describe("channels_last").startswith("off")
    assert _resolved(tmp_path, channels_last=True)[0].channels_last is True  # an explicit value wins
    monkeypatch.setattr(performance, "device_kind", lambda use_cpu=False: "cpu")
    assert _resolved(tmp_path)[0].channels_last is None  # left to train.py, which looks at the model


def test_channels_last_choice_and_same_logits(tiny_hf_checkpoint):
    from transformers import AutoModelForImageClassification, ViTConfig, ViTForImageClassification

    model = AutoModelForImageClassification.from_pretrained(tiny_hf_checkpoint).eval()
    assert performance.wants_channels_last(model)
    vit = ViTForImageClassification(
        ViTConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=32,
            patch_size=4,
        )
    )
    assert not performance.wants_channels_last(vit)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        nchw = model(pixel_values=x).logits
        model.to(memory_format=torch.channels_last)
        nhwc = model(pixel_values=x.contiguous(memory_format=torch.channels_last)).logits
    assert model.resnet.embedder.embedder.convolution.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(nhwc, nchw, atol=1e-5, rtol=1e-4)


# --- the image cache -------------------------------------------------------------------------------------


def _pipeline(tiny_image_folder, checkpoint, augmentation="rrc_flip"):
    from hf_finetune.data.loading import load_image_dataset
    from hf_finetune.data.transforms import build_transforms, data_config_from_processor
    from hf_finetune.models.loading import load_image_processor

    data = load_image_dataset(DataArguments(train_dir=str(tiny_image_folder)))
    config = data_config_from_processor(load_image_processor(str(checkpoint)))
    train_t, eval_t = build_transforms(config, augmentation)
    return data, config, train_t, eval_t


@pytest.mark.parametrize("augmentation", ["rrc_flip", "flip", "none"])
@pytest.mark.parametrize("uint8", [False, True], ids=["float", "uint8"])
def test_cached_images_give_the_same_tensors(
    tmp_path, tiny_image_folder, tiny_hf_checkpoint, augmentation, uint8
):
    """The cache gives the uncached tensors bit for bit; with normalize_on_device's 8-bit transforms, once its
    batches are normalised (``PixelNormalizer``)."""
    from hf_finetune.data.image_cache import build_image_cache
    from hf_finetune.data.transforms import make_batch_transform, split_normalize

    data, config, train_t, eval_t = _pipeline(tiny_image_folder, tiny_hf_checkpoint, augmentation)
    finish = lambda pixels: pixels  # noqa: E731
    cache_train_t, cache_eval_t = train_t, eval_t
    if uint8:
        (cache_train_t, finish), (cache_eval_t, _) = split_normalize(train_t), split_normalize(eval_t)
    splits = {"train": data.dataset["train"], "validation": data.dataset["validation"]}
    cache = build_image_cache(
        splits, config, augmentation, 0.25, 0.5, cache_train_t, cache_eval_t, tmp_path / "cache"
    )

    def pixels(dataset, i):
        return finish(dataset[i]["pixel_values"][None])[0]

    assert cache.validation[0]["pixel_values"].dtype == (torch.uint8 if uint8 else torch.float32)
    plain_val = data.dataset["validation"].with_transform(make_batch_transform(eval_t))
    for i in range(len(plain_val)):
        assert torch.equal(pixels(cache.validation, i), plain_val[i]["pixel_values"])
        assert cache.validation[i]["labels"] == plain_val[i]["labels"]
    if augmentation == "flip":  # the cache flips the validation crop (not crops the flipped image)
        plain_crops = data.dataset["train"].with_transform(make_batch_transform(eval_t))
        torch.manual_seed(0)  # the flips drawn below: some flipped, some not
        flipped = [
            torch.equal(pixels(cache.train, i), plain_crops[i]["pixel_values"].flip(-1)) for i in range(12)
        ]
        assert any(flipped) and not all(flipped)
        for i in range(12):
            crop, cached = plain_crops[i]["pixel_values"], pixels(cache.train, i)
            assert torch.equal(cached, crop) or torch.equal(cached, crop.flip(-1))
        return
    plain_train = data.dataset["train"].with_transform(make_batch_transform(train_t))
    for i in range(6):  # the tiny images are below the side limit: the same random crop, bit for bit
        random.seed(i)  # timm's random-resized-crop draws from `random`, the flip from torch
        torch.manual_seed(i)
        cached = pixels(cache.train, i)
        random.seed(i)
        torch.manual_seed(i)
        assert torch.equal(cached, plain_train[i]["pixel_values"])
    assert cache.nbytes > 0 and all(p.suffix == ".arrow" for p in cache.folder.iterdir())


def test_large_images_are_cached_at_the_side_limit(tmp_path, tiny_hf_checkpoint):
    from hf_finetune.data.image_cache import build_image_cache, train_side_limit
    from hf_finetune.data.loading import load_image_dataset
    from hf_finetune.data.transforms import build_transforms, data_config_from_processor
    from hf_finetune.models.loading import load_image_processor

    for name in ("a", "b"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((300, 400, 3), 40 * i, dtype=np.uint8)).save(
                tmp_path / "imgs" / name / f"{i}.png"
            )
    data = load_image_dataset(DataArguments(train_dir=str(tmp_path / "imgs"), train_val_split=0.34))
    config = data_config_from_processor(load_image_processor(str(tiny_hf_checkpoint)))
    train_t, eval_t = build_transforms(config, "rrc_flip")
    splits = {"train": data.dataset["train"], "validation": data.dataset["validation"]}
    cache = build_image_cache(splits, config, "rrc_flip", 0.25, 0.5, train_t, eval_t, tmp_path / "cache")
    limit = train_side_limit(32, 0.25)
    assert limit == 74
    rows = cache.train.with_format(None)
    heights = [r["height"] for r in rows]
    widths = [r["width"] for r in rows]
    assert set(heights) == {limit} and set(widths) == {round(400 * limit / 300)}
    assert cache.train[0]["pixel_values"].shape == (3, 32, 32)


# --- the linear-probe feature cache ---------------------------------------------------------------------


def test_cached_features_equal_recomputed_ones(tmp_path, tiny_timm_checkpoint, tiny_image_folder):
    from hf_finetune.models.loading import load_model_for_labels
    from hf_finetune.training.feature_cache import HeadOnlyModel, build_feature_cache, feature_head

    data, _, _, eval_t = _pipeline(tiny_image_folder, tiny_timm_checkpoint)
    loaded = load_model_for_labels(str(tiny_timm_checkpoint), data.labels)
    model = loaded.model.eval()
    name, head = feature_head(model)
    assert name == "timm_model.classifier"
    cache = build_feature_cache(
        model, head, {"validation": data.dataset["validation"]}, eval_t, tmp_path / "fc"
    )
    cached = torch.tensor(np.asarray(cache.datasets["validation"].with_format("numpy")["features"]))
    assert cached.shape == (len(data.dataset["validation"]), model.timm_model.num_features)
    from hf_finetune.data.transforms import make_batch_transform

    images = data.dataset["validation"].with_transform(make_batch_transform(eval_t))
    pixel_values = torch.stack([images[i]["pixel_values"] for i in range(len(images))])
    with torch.no_grad():
        recomputed = model.timm_model.forward_head(
            model.timm_model.forward_features(pixel_values), pre_logits=True
        )
        logits = model(pixel_values=pixel_values).logits
        probe_logits = HeadOnlyModel(model, name, head)(features=cached).logits
    torch.testing.assert_close(cached, recomputed, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probe_logits, logits, atol=1e-5, rtol=1e-5)
    assert cache.datasets["validation"]["label"] == list(data.dataset["validation"]["label"])


def test_linear_probe_trains_the_head_on_cached_features(tmp_path, tiny_hf_checkpoint, tiny_image_folder):
    from safetensors.torch import load_file

    from hf_finetune.run.train import main

    out = tmp_path / "probe"
    training_args = _args(
        tmp_path,
        output_dir=str(out),
        freeze_layers=-1,
        num_train_epochs=2,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        bf16=False,
    )
    result = main(
        ModelArguments(model_name_or_path=str(tiny_hf_checkpoint), label_mapping="none"),
        DataArguments(train_dir=str(tiny_image_folder)),
        training_args,
    )
    assert result.feature_cache_seconds is not None and result.feature_cache_seconds > 0
    assert not (out / ".feature-cache").exists()
    saved = load_file(str(out / "model.safetensors"))
    source = load_file(str(tiny_hf_checkpoint / "model.safetensors"))
    body = [k for k in saved if not k.startswith("classifier")]
    assert body and all(torch.equal(saved[k], source[k]) for k in body)  # the frozen body, bit for bit
    assert saved["classifier.1.weight"].shape == (3, 16)
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    accuracies = [e["eval_accuracy"] for e in history if "eval_accuracy" in e]
    assert accuracies[-1] > accuracies[0] and accuracies[-1] >= 0.9
    from hf_finetune.inference.predict import predict_images

    image = next((tiny_image_folder / "val" / "zebra").iterdir())
    assert predict_images(str(out), [str(image)], top_k=1)[0]["predictions"][0]["label"] == "zebra"


def test_feature_cache_true_needs_a_frozen_body(tmp_path, tiny_hf_checkpoint, tiny_image_folder):
    from hf_finetune.run.train import main

    with pytest.raises(ConfigError, match="feature_cache: true cannot be used: .* set freeze_layers: -1"):
        main(
            ModelArguments(model_name_or_path=str(tiny_hf_checkpoint)),
            DataArguments(train_dir=str(tiny_image_folder)),
            _args(tmp_path, feature_cache=True, max_steps=1),
        )
    assert not (tmp_path / "out").exists()


def test_training_with_cached_images_cleans_up(tmp_path, tiny_hf_checkpoint, tiny_image_folder):
    from hf_finetune.run.train import main

    out = tmp_path / "cached"
    result = main(
        ModelArguments(model_name_or_path=str(tiny_hf_checkpoint)),
        DataArguments(train_dir=str(tiny_image_folder)),
        _args(
            tmp_path,
            output_dir=str(out),
            cache_images=True,
            num_train_epochs=1,
            per_device_train_batch_size=12,
        ),
    )
    assert result.metrics_after["eval_accuracy"] >= 0.0 and (out / "model.safetensors").is_file()
    assert not (out / ".image-cache").exists()


def test_frozen_parameters_get_no_gradient(tiny_hf_checkpoint):
    from transformers import AutoModelForImageClassification

    from hf_finetune.models.freezing import freeze_parameters

    model = AutoModelForImageClassification.from_pretrained(tiny_hf_checkpoint)
    report = freeze_parameters(model, freeze_layers=1)
    loss = model(pixel_values=torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 1])).loss
    loss.backward()
    named = dict(model.named_parameters())
    assert report.frozen and all(named[n].grad is None for n in report.frozen)
    assert all(named[n].grad is not None for n in report.trainable)


def test_depthwise_precision_tuning_switches_only_the_forward(tiny_timm_checkpoint):
    from transformers import AutoModelForImageClassification

    from hf_finetune.models.loading import load_model_for_labels

    model = load_model_for_labels(str(tiny_timm_checkpoint), ["a", "b"]).model.eval()
    assert isinstance(model, AutoModelForImageClassification._model_mapping[type(model.config)])
    depthwise = tuning._depthwise_convs(model)
    assert depthwise
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        fp32 = model(pixel_values=x).logits
    assert tuning.tune_depthwise_precision(model, (2, 3, 32, 32), margin=0.0) == []  # never faster
    switched = tuning.tune_depthwise_precision(model, (2, 3, 32, 32), reps=1, margin=1e9)
    assert sorted(name for name, _, _ in switched) == sorted(name for name, _ in depthwise)
    assert all(bf16_s > 0 and fp32_s > 0 for _, bf16_s, fp32_s in switched)
    module = dict(model.named_modules())[switched[0][0]]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(torch.randn(1, module.in_channels, 8, 8, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16  # the neighbours still see bfloat16
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model(pixel_values=x).logits.float()
    torch.testing.assert_close(mixed, fp32, atol=0.1, rtol=0.05)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # weights untouched
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(pixel_values=x, labels=torch.tensor([0, 1, 0, 1])).loss
    loss.backward()
    assert module.weight.grad is not None and module.weight.grad.dtype == torch.float32


def test_tune_depthwise_precision_handles_same_padding_at_small_inputs():
    """timm's tf_* models pad in Conv2dSame.forward: at 64 px the last stages are 2x2 and a 5x5 depthwise
    convolution needs that padding (make demo trains Lite0 at 64 px)."""
    import timm
    from torch import nn

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=3)

        def forward(self, pixel_values):
            return self.net(pixel_values)

    torch.manual_seed(0)
    model = Wrapped().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fp32 = model(x)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model(x).float()
    switched = tuning.tune_depthwise_precision(model, (2, 3, 64, 64), reps=1, margin=1e9)  # all of them
    assert len(tuning._depthwise_convs(model)) == 16 and len(switched) == 16
    with (
        torch.no_grad(),
        torch.autocast("cpu", dtype=torch.bfloat16),
    ):  # the patched layers run under autocast
        logits = model(x).float()
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    # fp32 instead of bf16 in the depthwise layers: no further from the fp32 logits than all-bf16 ones are
    # (measured 0.39 against 0.50, the logits up to 28)
    assert (logits - fp32).abs().max() <= (bf16 - fp32).abs().max() + 0.01 * fp32.abs().max()


# --- keep_freed_memory -----------------------------------------------------------------------------------


def test_keep_freed_memory_auto_is_on_for_cpu_training_under_glibc(tmp_path, monkeypatch):
    monkeypatch.setattr(performance, "device_kind", lambda use_cpu=False: "cpu")
    monkeypatch.setattr(performance, "cpu_supports_bf16", lambda: False)
    monkeypatch.setattr(performance, "glibc_malloc_available", lambda: True)
    args, plan = _resolved(tmp_path)
    assert args.keep_freed_memory is True and plan.describe("keep_freed_memory").startswith("on")
    assert _resolved(tmp_path, keep_freed_memory=False)[0].keep_freed_memory is False
    assert "keep_freed_memory" not in _resolved(tmp_path, keep_freed_memory="false")[1]
    monkeypatch.setattr(performance, "glibc_malloc_available", lambda: False)
    off, plan = _resolved(tmp_path)
    assert off.keep_freed_memory is False and "not glibc" in plan.describe("keep_freed_memory")
    with pytest.raises(
        ConfigError, match=r"^keep_freed_memory: got True; expected false or auto: .*not glibc"
    ):
        _resolved(tmp_path, keep_freed_memory=True)  # asked for, but nothing here could honour it
    monkeypatch.setattr(performance, "device_kind", lambda use_cpu=False: "cuda")
    monkeypatch.setattr(performance, "glibc_malloc_available", lambda: True)
    monkeypatch.setattr(performance, "bf16_supported", lambda kind: (False, "test"))
    gpu, plan = _resolved(tmp_path)
    assert gpu.keep_freed_memory is False and "not training on a CPU" in plan.describe("keep_freed_memory")


_PAGE_FAULTS = """
import resource
import torch
from hf_finetune.runtime import performance

def faults_per_round(rounds=40):
    counts = []
    for _ in range(rounds):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB, written in full
        del x
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return counts

print(repr((faults_per_round(), performance.keep_freed_memory(), faults_per_round())))
"""


@pytest.mark.skipif(not performance.glibc_malloc_available(), reason="keep_freed_memory acts on glibc only")
def test_keep_freed_memory_stops_refaulting_large_blocks():
    """Without it every 64 MiB tensor is a fresh mapping: 16384 pages faulted in, each time. With it the freed
    blocks stay in the heap: once they have merged into a block large enough for the aligned request, a new tensor
    faults no page in. How many rounds that merging takes varies from run to run (4 to 8 here, at least 9 once on
    CI), so the check is on the second half of 40 rounds: every one of them reuses the heap."""
    import ast
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _PAGE_FAULTS], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    before, applied, after = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    assert applied is True
    assert min(before) > 16_000, before  # every round maps and zero-fills 16384 new pages
    assert max(after[20:]) < 100, after  # the heap's freed pages are reused


@pytest.mark.skipif(not performance.glibc_malloc_available(), reason="keep_freed_memory acts on glibc only")
def test_keep_freed_memory_trains_the_same_weights(tmp_path, tiny_hf_checkpoint, tiny_image_folder):
    """Two steps with and without it (each in its own process: the setting is process-wide): equal weights."""
    from conftest import run_hf_finetune
    from safetensors.torch import load_file

    weights = {}
    for value in ("true", "false"):
        out = tmp_path / value
        proc = run_hf_finetune(
            "train", "--model_name_or_path", tiny_hf_checkpoint, "--train_dir", tiny_image_folder,
            "--output_dir", out, "--max_steps", "2", "--per_device_train_batch_size", "4",
            "--eval_strategy", "no", "--eval_on_start", "false", "--save_strategy", "no",
            "--load_best_model_at_end", "false", "--report_to", "none", "--keep_freed_memory", value,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        weights[value] = load_file(out / "model.safetensors")
    assert weights["true"].keys() == weights["false"].keys()
    for name, tensor in weights["true"].items():
        assert torch.equal(tensor, weights["false"][name]), name
    start = load_file(Path(tiny_hf_checkpoint) / "model.safetensors")
    moved = [n for n, t in start.items() if n in weights["true"] and t.shape == weights["true"][n].shape]
    assert any(not torch.equal(start[n], weights["true"][n]) for n in moved)  # the two steps trained the body


# --- static_same_padding ---------------------------------------------------------------------------------


def _tiny_mobilenet(version: int = 2, seed: int = 0):
    from transformers import (
        MobileNetV1Config,
        MobileNetV1ForImageClassification,
        MobileNetV2Config,
        MobileNetV2ForImageClassification,
    )

    torch.manual_seed(seed)
    if version == 1:
        config = MobileNetV1Config(depth_multiplier=0.25, image_size=32, num_labels=3, min_depth=4)
        return MobileNetV1ForImageClassification(config).eval()
    config = MobileNetV2Config(depth_multiplier=0.25, image_size=32, num_labels=3, min_depth=4)
    return MobileNetV2ForImageClassification(config).eval()


@pytest.fixture(scope="module")
def tiny_mobilenet_v2_checkpoint(tmp_path_factory) -> Path:
    """A random transformers MobileNetV2 (TensorFlow padding, 0.24M parameters) with its image processor."""
    from transformers import MobileNetV2ImageProcessor

    path = tmp_path_factory.mktemp("tiny_mobilenet_v2")
    model = _tiny_mobilenet(2)
    assert model.config.tf_padding is True
    model.save_pretrained(path)
    MobileNetV2ImageProcessor(
        size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(path)
    return path


@pytest.mark.parametrize("version", [1, 2])
def test_static_same_padding_gives_the_same_outputs_and_gradients(version):
    import copy

    model = _tiny_mobilenet(version)
    padded = copy.deepcopy(model)
    layers = same_padding._tf_padded_conv_layers(model)
    stride_one = [n for n, m in layers if tuple(m.convolution.stride) == (1, 1)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    changed = same_padding.static_same_padding(model)
    assert changed == stride_one and 0 < len(changed) < len(layers)  # strided layers keep F.pad
    modules = dict(model.named_modules())
    assert all(modules[n].config.tf_padding is False for n in changed)
    assert model.config.tf_padding is True  # the config that is saved keeps TensorFlow padding
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    for shape in [(2, 3, 32, 32), (2, 3, 37, 45)]:  # the padding of stride-1 layers is the same at any size
        x = torch.randn(shape)
        with torch.no_grad():
            assert torch.equal(model(pixel_values=x).logits, padded(pixel_values=x).logits)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(model(pixel_values=x).logits, padded(pixel_values=x).logits)
    model.train()
    padded.train()
    x, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    for bf16 in (True, False):
        for net in (model, padded):
            net.zero_grad(set_to_none=True)
            torch.manual_seed(1)  # the same dropout mask in the classifier
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = net(pixel_values=x, labels=labels).loss
            loss.backward()
        grads = dict(padded.named_parameters())
        for name, param in model.named_parameters():
            expected = grads[name].grad
            if bf16:  # bit for bit
                assert torch.equal(param.grad, expected), name
            else:  # the convolutions' backward sums in another order: float rounding (measured 1.3e-7)
                scale = expected.abs().max().item()
                torch.testing.assert_close(param.grad, expected, rtol=0, atol=1e-6 * scale, msg=name)


def test_static_same_padding_leaves_other_layers_alone(tiny_hf_checkpoint):
    """A layer with ``config.tf_padding`` that does not pad as transformers' MobileNets do (the check on one
    layer of its class finds other outputs) is left as it is, as are models without TensorFlow padding."""
    from types import SimpleNamespace

    from torch import nn
    from transformers import AutoModelForImageClassification

    class NotPadding(nn.Module):  # a stride-1 3x3 layer that never pads: padding it would change its output
        def __init__(self):
            super().__init__()
            self.config = SimpleNamespace(tf_padding=True)
            self.convolution = nn.Conv2d(4, 4, 3, bias=False)

        def forward(self, x):
            return self.convolution(x)

    layer = NotPadding()
    assert same_padding.static_same_padding(layer) == []
    assert layer.convolution.padding == (0, 0) and layer.config.tf_padding is True
    model = AutoModelForImageClassification.from_pretrained(tiny_hf_checkpoint)
    assert same_padding.static_same_padding(model) == []


def _train_two_steps(tmp_path: Path, checkpoint, images, *flags) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from hf_finetune.config.parser import parse_train_args
    from hf_finetune.run.train import main

    out = tmp_path / "-".join(flags).replace("--", "")
    argv = [
        "--model_name_or_path", str(checkpoint), "--train_dir", str(images), "--output_dir", str(out),
        "--max_steps", "2", "--per_device_train_batch_size", "4", "--eval_strategy", "no",
        "--eval_on_start", "false", "--save_strategy", "no", "--load_best_model_at_end", "false",
        "--report_to", "none", "--disable_tqdm", "true", "--tune_depthwise_precision", "false", *flags,
    ]  # fmt: skip
    main(*parse_train_args(argv))
    return load_file(out / "model.safetensors")


def _assert_same_weights_and_trained(weights: dict, other: dict, checkpoint: Path) -> None:
    from safetensors.torch import load_file

    assert weights.keys() == other.keys()
    for name, tensor in weights.items():
        assert torch.equal(tensor, other[name]), name
    start = load_file(Path(checkpoint) / "model.safetensors")
    moved = [n for n, t in start.items() if n in weights and t.shape == weights[n].shape]
    assert any(not torch.equal(start[n], weights[n]) for n in moved)  # the two steps trained the body


# --- tune_inplace_activations ----------------------------------------------------------------------------


def test_inplace_activations_are_found_by_origin():
    from torch import nn

    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU6(inplace=True), nn.Dropout(inplace=True), nn.ReLU())
    assert [name for name, _ in tuning._inplace_activations(model)] == ["1"]  # not Dropout, not ReLU()


def test_tune_inplace_activations_switches_only_the_mode(tiny_timm_checkpoint):
    from hf_finetune.models.loading import load_model_for_labels

    model = load_model_for_labels(str(tiny_timm_checkpoint), ["a", "b"]).model.eval()
    activations = tuning._inplace_activations(model)
    assert activations
    assert tuning.tune_inplace_activations(model, (2, 3, 32, 32), reps=1, margin=0.0) == []
    assert all(module.inplace for _, module in activations)  # timing left the modules as they were
    x, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])

    def outputs():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(pixel_values=x, labels=labels).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    model.train()
    loss, grads = outputs()
    switched = tuning.tune_inplace_activations(model, (2, 3, 32, 32), reps=1, margin=1e9)
    assert sorted(name for name, _, _ in switched) == sorted(name for name, _ in activations)
    assert all(inplace_s > 0 and out_s > 0 for _, inplace_s, out_s in switched)
    assert not any(module.inplace for _, module in activations)
    loss_out, grads_out = outputs()
    assert torch.equal(loss, loss_out)
    assert all(torch.equal(grads[n], grads_out[n]) for n in grads)


def test_tune_inplace_activations_keeps_activations_used_for_their_side_effect():
    """A model that calls its activation without taking the result depends on it running in place."""
    from torch import nn

    class SideEffect(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.act = nn.ReLU6(inplace=True)

        def forward(self, pixel_values):
            x = self.conv(pixel_values)
            self.act(x)  # clamps x itself
            return x

    model = SideEffect()
    assert tuning.tune_inplace_activations(model, (2, 3, 16, 16), reps=1, margin=1e9) == []
    assert model.act.inplace is True


@pytest.mark.parametrize(
    "key, checkpoint, logged",
    [
        (
            "static_same_padding",
            "tiny_mobilenet_v2_checkpoint",
            "47 stride-1 convolutions pad in the convolution",
        ),
        ("tune_inplace_activations", "tiny_timm_checkpoint", "11 in-place activations run out of place"),
        ("normalize_on_device", "tiny_hf_checkpoint", "the loader makes 8-bit batches; PixelNormalizer"),
    ],
)
def test_exact_speed_defaults_train_the_same_weights(
    tmp_path, tiny_image_folder, monkeypatch, caplog, request, key, checkpoint, logged
):
    """Two bf16 steps (the CPU default) with the setting on and off: the same weights bit for bit, and the
    saved model is a plain one (a MobileNetV2 keeps ``tf_padding``). The timing of ``tune_inplace_activations`` is
    forced here, so every in-place activation of the on run runs out of place."""
    import functools
    import logging

    from transformers import AutoConfig

    checkpoint = request.getfixturevalue(checkpoint)
    monkeypatch.setattr(performance, "cpu_supports_bf16", lambda: True)
    forced = functools.partial(tuning.tune_inplace_activations, margin=1e9)
    monkeypatch.setattr(tuning, "tune_inplace_activations", forced)
    caplog.set_level(logging.INFO, logger="hf_finetune")
    on = _train_two_steps(tmp_path, checkpoint, tiny_image_folder, "--bf16", "true")
    assert f"{key}: {logged}" in caplog.text
    off = _train_two_steps(tmp_path, checkpoint, tiny_image_folder, "--bf16", "true", f"--{key}", "false")
    _assert_same_weights_and_trained(on, off, checkpoint)
    saved = AutoConfig.from_pretrained(tmp_path / "bf16-true")
    assert getattr(saved, "tf_padding", None) is (True if key == "static_same_padding" else None)


def test_normalize_on_device_evaluates_and_predicts_the_same(tmp_path, tiny_hf_checkpoint, tiny_image_folder):
    """Evaluation and prediction through the Trainer see the same normalised input with the setting on (8-bit
    batches from the loader) and off: the same loss and logits bit for bit."""
    from hf_finetune.config.parser import parse_train_args
    from hf_finetune.run.train import build_trainer

    def trainer(on: bool):
        argv = [
            "--model_name_or_path", str(tiny_hf_checkpoint), "--train_dir", str(tiny_image_folder),
            "--output_dir", str(tmp_path / str(on)), "--report_to", "none", "--per_device_eval_batch_size", "5",
            "--normalize_on_device", str(on).lower(),
        ]  # fmt: skip
        built, _, _ = build_trainer(*parse_train_args(argv))
        return built

    on, off = trainer(True), trainer(False)
    assert on.eval_dataset[0]["pixel_values"].dtype == torch.uint8 and on.pixel_normalizer is not None
    assert off.eval_dataset[0]["pixel_values"].dtype == torch.float32 and off.pixel_normalizer is None
    assert on.evaluate()["eval_loss"] == off.evaluate()["eval_loss"]
    assert torch.equal(
        torch.as_tensor(on.predict(on.eval_dataset).predictions),
        torch.as_tensor(off.predict(off.eval_dataset).predictions),
    )


def test_normalize_on_device_with_loader_workers_and_the_image_cache(
    tmp_path, tiny_hf_checkpoint, tiny_image_folder
):
    """The loader of a GPU run (worker processes, the image cache), on a CPU: the 8-bit batches the workers make
    train the same weights bit for bit as the float ones they make with the setting off."""
    flags = ("--dataloader_num_workers", "2", "--cache_images", "true")
    on = _train_two_steps(tmp_path, tiny_hf_checkpoint, tiny_image_folder, *flags)
    off = _train_two_steps(
        tmp_path, tiny_hf_checkpoint, tiny_image_folder, *flags, "--normalize_on_device", "false"
    )
    _assert_same_weights_and_trained(on, off, tiny_hf_checkpoint)


def test_depthwise_timings_are_kept_per_machine(tmp_path, tiny_timm_checkpoint, monkeypatch):
    """The first call times each depthwise shape and writes the file; a later call (a new run: a freshly loaded
    model) reads the same timings instead of timing again, so it makes the same choices; another machine key,
    or a file that is not JSON, is timed afresh."""
    from hf_finetune.models.loading import load_model_for_labels

    def fresh():
        return load_model_for_labels(str(tiny_timm_checkpoint), ["a", "b"]).model.eval()

    cache = tmp_path / "cpu_tuning.json"
    monkeypatch.setenv(tuning.TUNING_CACHE_ENV, str(cache))
    assert tuning.tuning_cache_path() == cache
    first = tuning.tune_depthwise_precision(fresh(), (2, 3, 32, 32), reps=1, margin=1e9)
    assert first and cache.is_file()
    (machine,) = json.loads(cache.read_text())  # one machine key, naming the CPU, torch and the threads
    assert f"torch {torch.__version__}" in machine and f"{torch.get_num_threads()} threads" in machine
    again = tuning.tune_depthwise_precision(fresh(), (2, 3, 32, 32), reps=1, margin=1e9)
    assert again == first  # the same seconds, read back (timing twice never gives equal floats)
    assert tuning.tune_depthwise_precision(fresh(), (2, 3, 32, 32), reps=1, margin=0.0) == []
    assert tuning.tune_depthwise_precision(fresh(), (2, 3, 32, 32), reps=1, cache=False, margin=1e9) != first
    monkeypatch.setattr(tuning, "_machine_key", lambda: "another CPU | torch 0 | 1 threads")
    other = tuning.tune_depthwise_precision(fresh(), (2, 3, 32, 32), reps=1, margin=1e9)
    assert [n for n, _, _ in other] == [n for n, _, _ in first] and other != first
    assert len(json.loads(cache.read_text())) == 2
    cache.write_text("not json")
    timed = tuning.tune_depthwise_precision(fresh(), (2, 3, 32, 32), reps=1, margin=1e9)
    assert timed != first and json.loads(cache.read_text())  # rewritten


def test_depthwise_timings_that_cannot_be_saved_leave_the_run_alone(
    tmp_path, tiny_timm_checkpoint, monkeypatch, caplog
):
    import logging

    from hf_finetune.models.loading import load_model_for_labels

    caplog.set_level(logging.WARNING, logger="hf_finetune")

    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv(tuning.TUNING_CACHE_ENV, str(blocked / "cpu_tuning.json"))  # its folder is a file
    model = load_model_for_labels(str(tiny_timm_checkpoint), ["a", "b"]).model.eval()
    assert tuning.tune_depthwise_precision(model, (2, 3, 32, 32), reps=1, margin=1e9)
    assert blocked.read_text() == ""
    assert "the layer timings could not be saved" in caplog.text


def test_channels_last_auto_stays_off_for_fastvit_on_cpus_without_avx512(monkeypatch):
    """torch's AVX2 CPU kernels corrupt the heap in FastViT's NHWC backward pass (a segfault): auto keeps NCHW
    there, and only there."""
    import timm
    import torch

    fastvit = timm.create_model("fastvit_t8", pretrained=False, num_classes=3)
    resnet = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert "FastViT" in performance.channels_last_breaks(fastvit, "cpu")
    assert performance.channels_last_breaks(fastvit, "cuda") is None
    assert performance.channels_last_breaks(resnet, "cpu") is None
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert performance.channels_last_breaks(fastvit, "cpu") is None
