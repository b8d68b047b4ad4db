"""LoRA through peft (``lora_r``): only the adapters and the head train, the base weights stay bit for bit, and
the saved adapter (``OUTPUT/adapter/``) and the merged model both reload into the classifier that was trained."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SOURCE_LABELS
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification, TrainerCallback

from hf_finetune import DataArguments, FinetuneTrainingArguments, ModelArguments, finetune
from hf_finetune.errors import ConfigError
from hf_finetune.models.loading import load_model_for_labels
from hf_finetune.models.lora import ADAPTER_DIR, apply_lora, default_target_modules, load_lora_model

LABELS = ["cat", "dog", "zebra"]
TRAIN_KEYS = {
    "num_train_epochs": 2,
    "per_device_train_batch_size": 8,
    "learning_rate": 1e-2,
    "seed": 3,
    "logging_steps": 2,
    "lora_r": 4,
    "bf16": False,  # accelerate leaves its autocast on the trained model's forward: compare in fp32
}


class _KeepModel(TrainerCallback):
    """Keeps the model the Trainer ends with (the best checkpoint's adapter, loaded back at the end)."""

    model = None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.model = model


def _run(checkpoint, data_dir, out, **extra):
    keep = _KeepModel()
    result = finetune(
        ModelArguments(model_name_or_path=str(checkpoint)),
        DataArguments(train_dir=str(data_dir), image_size=32),
        FinetuneTrainingArguments(output_dir=str(out), **dict(TRAIN_KEYS, **extra)),
        callbacks=[keep],
    )
    return result, keep.model


def _batch(seed: int = 0) -> torch.Tensor:
    return torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _logits(model, pixels: torch.Tensor) -> torch.Tensor:
    model.eval()
    return model(pixel_values=pixels).logits.float()


def _strip(name: str) -> str:
    """A PeftModel's base parameter name as the checkpoint spells it."""
    return name.replace(".base_layer.", ".")


def test_lora_transformers_trains_adapters_and_head_and_reloads(
    tiny_hf_checkpoint, tiny_image_folder, tmp_path
):
    out = tmp_path / "lora"
    _, model = _run(tiny_hf_checkpoint, tiny_image_folder, out)
    assert type(model).__name__ == "PeftModel"

    # trainable: the LoRA matrices of the 6 ungrouped convolutions (rank 4) and the 3-way head (16 -> 3)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all(".lora_" in n or ".modules_to_save." in n for n in trainable)
    # convolutions (in, out, kernel): embedder (3, 8, 7), stage 0 (8, 8, 3) x2, stage 1 shortcut (8, 16, 1),
    # (8, 16, 3), (16, 16, 3); lora_A is r x in x k x k, lora_B out x r
    convs = [(3, 8, 7), (8, 8, 3), (8, 8, 3), (8, 16, 1), (8, 16, 3), (16, 16, 3)]
    expected = sum(4 * i * k * k + o * 4 for i, o, k in convs) + 16 * 3 + 3
    assert expected == 2399
    assert sum(p.numel() for p in trainable.values()) == 2399
    assert sum(".lora_A." in n for n in trainable) == 6 and sum(".lora_B." in n for n in trainable) == 6
    # the adapters and the head learned something
    assert all(p.abs().sum() > 0 for n, p in trainable.items() if ".lora_B." in n)

    # every base tensor (BatchNorm statistics included) is bit for bit the checkpoint's
    source = load_file(str(tiny_hf_checkpoint / "model.safetensors"))
    base = {
        _strip(n): t
        for n, t in model.get_base_model().state_dict().items()
        if ".lora_" not in n and not n.startswith("classifier.")
    }
    body_source = {k: v for k, v in source.items() if not k.startswith("classifier.")}
    assert set(base) == set(body_source) and len(base) == 36
    changed = [k for k in base if not torch.equal(base[k].contiguous(), body_source[k])]
    assert changed == []

    # the output folder: adapter (with the head) and the merged model
    adapter = out / ADAPTER_DIR
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4 and adapter_config["lora_alpha"] == 8
    assert adapter_config["modules_to_save"] == ["classifier.1"]
    assert adapter_config["base_model_name_or_path"] == str(tiny_hf_checkpoint)
    saved = load_file(str(adapter / "adapter_model.safetensors"))
    assert sum(t.numel() for t in saved.values()) == 2399
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "cat", "1": "dog", "2": "zebra"}
    checkpoints = sorted(out.glob("checkpoint-*"))  # checkpoints hold the adapter only
    assert checkpoints and all((c / "adapter_model.safetensors").is_file() for c in checkpoints)
    assert not any((c / "model.safetensors").exists() for c in checkpoints)

    pixels = _batch()
    before = _logits(model, pixels)
    assert before.shape == (6, 3)

    # the adapter onto the base checkpoint (fresh head for the labels; the adapter brings the trained one)
    from peft import PeftModel

    fresh = load_model_for_labels(str(tiny_hf_checkpoint), LABELS, label_mapping="none").model
    reloaded = PeftModel.from_pretrained(fresh, str(adapter))
    assert torch.allclose(_logits(reloaded, pixels), before, atol=1e-5, rtol=0)
    assert torch.allclose(_logits(load_lora_model(out), pixels), before, atol=1e-5, rtol=0)
    # the merged model, loaded as any fine-tuned model
    merged = AutoModelForImageClassification.from_pretrained(str(out))
    assert torch.allclose(_logits(merged, pixels), before, atol=1e-5, rtol=0)


def test_lora_timm_reloads(tiny_timm_checkpoint, tiny_image_folder, tmp_path):
    out = tmp_path / "lora_timm"
    _, model = _run(tiny_timm_checkpoint, tiny_image_folder, out, num_train_epochs=1)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    head = [n for n in trainable if ".modules_to_save." in n]
    assert head == [
        "base_model.model.timm_model.classifier.modules_to_save.default.weight",
        "base_model.model.timm_model.classifier.modules_to_save.default.bias",
    ]
    targets = {n.split(".lora_")[0].removeprefix("base_model.model.") for n in trainable if ".lora_" in n}
    modules = dict(model.get_base_model().named_modules())
    # no adapter on a depthwise convolution (peft cannot merge them)
    assert all(modules[t].base_layer.groups == 1 for t in targets)
    assert any(m.groups > 1 for m in modules.values() if isinstance(m, torch.nn.Conv2d))
    pixels = _batch(1)
    before = _logits(model, pixels)
    assert torch.allclose(_logits(load_lora_model(out), pixels), before, atol=1e-5, rtol=0)
    merged = AutoModelForImageClassification.from_pretrained(str(out))
    assert torch.allclose(_logits(merged, pixels), before, atol=1e-5, rtol=0)


def _args(tmp_path, **keys):
    return FinetuneTrainingArguments(output_dir=str(tmp_path / "o"), **keys)


def test_lora_targets_respect_freezing_and_names(tiny_hf_checkpoint, tmp_path):
    from hf_finetune.models.freezing import freeze_parameters

    model = load_model_for_labels(str(tiny_hf_checkpoint), LABELS, label_mapping="none").model
    all_targets = default_target_modules(model)
    assert len(all_targets) == 6 and "classifier.1" not in all_targets
    freeze = freeze_parameters(model, 1)  # the stem and stage 0: no adapters there
    setup = apply_lora(model, _args(tmp_path, lora_r=2), frozen=freeze.frozen)
    assert setup.target_modules == [
        "resnet.encoder.stages.1.layers.0.shortcut.convolution",
        "resnet.encoder.stages.1.layers.0.layer.0.convolution",
        "resnet.encoder.stages.1.layers.0.layer.1.convolution",
    ]
    assert setup.alpha == 4.0
    assert setup.modules_to_save == ["classifier.1"]

    named = load_model_for_labels(str(tiny_hf_checkpoint), LABELS, label_mapping="none").model
    setup = apply_lora(named, _args(tmp_path, lora_r=2, lora_target_modules=["shortcut.convolution"]))
    assert setup.target_modules == ["resnet.encoder.stages.1.layers.0.shortcut.convolution"]
    # lora_A 2 x 8 x 1 x 1, lora_B 16 x 2, head 16 x 3 + 3
    assert setup.trainable_count == 16 + 32 + 51


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"lora_r": -1}, "lora_r: got -1"),
        ({"lora_r": 4, "lora_alpha": 0}, "lora_alpha: got 0"),
        ({"lora_r": 4, "lora_dropout": 1.0}, "lora_dropout: got 1.0"),
        ({"lora_target_modules": ["query"]}, "lora_target_modules: got ['query'] but lora_r is 0"),
        ({"lora_r": 4, "freeze_layers": -1}, "freeze_layers -1"),
        ({"lora_r": 4, "batchnorm": "train"}, "batchnorm: got 'train' with lora_r 4"),
        ({"lora_r": 4, "feature_cache": True}, "feature_cache: got True with lora_r 4"),
    ],
)
def test_lora_config_errors(tmp_path, keys, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _args(tmp_path, **keys)


def test_lora_unknown_or_head_target_is_config_error(tiny_hf_checkpoint, tmp_path):
    model = load_model_for_labels(str(tiny_hf_checkpoint), LABELS, label_mapping="none").model
    with pytest.raises(ConfigError, match=r"'convolutoin' matches no module .*did you mean 'convolution'"):
        apply_lora(model, _args(tmp_path, lora_r=2, lora_target_modules=["convolutoin"]))
    with pytest.raises(ConfigError, match=r"'classifier.1' matches the head"):
        apply_lora(model, _args(tmp_path, lora_r=2, lora_target_modules=["classifier.1"]))
    assert len(SOURCE_LABELS) == 7  # the base checkpoint's own head, replaced by the 3-way one
