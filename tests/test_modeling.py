"""Loading checkpoints for a new label set: head re-initialisation, the timm config trap, source labels."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SHARED_MODELS, SOURCE_LABELS, requires_shared
from safetensors.torch import load_file

from hf_finetune.errors import ModelLoadError
from hf_finetune.models.heads import head_parameter_names
from hf_finetune.models.loading import load_model_for_labels


def _checkpoint_tensors(path, prefix=""):
    return {prefix + k: v for k, v in load_file(str(path / "model.safetensors")).items()}


def _assert_body_copied(model, checkpoint, head, prefix=""):
    saved = _checkpoint_tensors(checkpoint, prefix)
    state = model.state_dict()
    compared = 0
    for name, tensor in state.items():
        if name in head or name not in saved:
            continue
        assert torch.equal(tensor, saved[name]), name
        compared += 1
    assert compared >= 10


@pytest.mark.parametrize(
    "fixture,prefix", [("tiny_hf_checkpoint", ""), ("tiny_timm_checkpoint", "timm_model.")]
)
def test_new_labels_reinitialise_head_and_copy_body(request, fixture, prefix):
    path = request.getfixturevalue(fixture)
    loaded = load_model_for_labels(str(path), ["cat", "dog", "zebra"])
    model = loaded.model
    assert loaded.source_labels == SOURCE_LABELS
    assert model.config.id2label == {0: "cat", 1: "dog", 2: "zebra"}
    assert model.config.label2id == {"cat": 0, "dog": 1, "zebra": 2}
    head = head_parameter_names(model)
    assert sorted(loaded.reinitialized) == sorted(head)
    assert len(head) == 2 and all(loaded.reinitialized_shapes[n][0] == 3 for n in head)
    assert "re-initialised tensors:" in loaded.describe() and head[0] in loaded.describe()
    _assert_body_copied(model, path, set(head), prefix)
    with torch.no_grad():
        logits = model(pixel_values=torch.randn(2, 3, 32, 32)).logits
    assert logits.shape == (2, 3)


@pytest.mark.parametrize(
    "fixture,prefix", [("tiny_hf_checkpoint", ""), ("tiny_timm_checkpoint", "timm_model.")]
)
def test_same_count_other_names_is_reinitialised_not_kept(request, fixture, prefix):
    path = request.getfixturevalue(fixture)
    names = [f"class_{i}" for i in range(len(SOURCE_LABELS))]
    loaded = load_model_for_labels(str(path), names)
    saved = _checkpoint_tensors(path, prefix)
    head = head_parameter_names(loaded.model)
    assert sorted(loaded.reinitialized) == sorted(head) and len(head) == 2
    weight = [n for n in head if n.endswith("weight")][0]
    assert not torch.equal(loaded.model.state_dict()[weight], saved[weight])
    assert loaded.model.config.id2label[0] == "class_0"


@pytest.mark.parametrize(
    "fixture,prefix", [("tiny_hf_checkpoint", ""), ("tiny_timm_checkpoint", "timm_model.")]
)
def test_same_labels_keep_the_head(request, fixture, prefix):
    path = request.getfixturevalue(fixture)
    loaded = load_model_for_labels(str(path), list(SOURCE_LABELS))
    assert loaded.reinitialized == []
    saved = _checkpoint_tensors(path, prefix)
    for name in head_parameter_names(loaded.model):
        assert torch.equal(loaded.model.state_dict()[name], saved[name])


def test_timm_trap_is_present_and_loads(tiny_timm_checkpoint):
    config = json.loads((tiny_timm_checkpoint / "config.json").read_text())
    assert config["model_args"]["num_classes"] == config["num_classes"]
    from transformers import AutoModelForImageClassification

    with pytest.raises(TypeError, match="multiple values"):
        AutoModelForImageClassification.from_pretrained(str(tiny_timm_checkpoint))
    loaded = load_model_for_labels(str(tiny_timm_checkpoint), ["a", "b"])
    assert loaded.is_timm and loaded.model.config.num_labels == 2


def test_bad_model_paths(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model_for_labels(str(tmp_path), ["a", "b"])
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError, match="'bert'"):
        load_model_for_labels(str(tmp_path), ["a", "b"])
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model_for_labels(str(tmp_path / "missing"), ["a", "b"])
    with pytest.raises(ModelLoadError, match="duplicate"):
        load_model_for_labels(str(tmp_path), ["a", "a"])


@requires_shared
def test_real_timm_checkpoint_with_trap_loads_with_imagenet_names():
    path = SHARED_MODELS / "timm-tf_efficientnet_lite0"
    loaded = load_model_for_labels(str(path), ["hotdog", "not_hotdog"])
    assert loaded.is_timm
    assert len(loaded.source_labels) == 1000
    assert loaded.source_labels[0].startswith("tench")
    assert loaded.source_labels[934].startswith("hotdog, hot dog, red hot")
    assert sorted(loaded.reinitialized) == ["timm_model.classifier.bias", "timm_model.classifier.weight"]
    _assert_body_copied(loaded.model, path, set(loaded.reinitialized), "timm_model.")
    assert loaded.processor.data_config["input_size"] == (3, 224, 224)


@requires_shared
def test_real_mobilenet_has_background_label():
    loaded = load_model_for_labels(str(SHARED_MODELS / "hf-mobilenet_v2_1.0_224"), ["hotdog", "not_hotdog"])
    assert len(loaded.source_labels) == 1001 and loaded.source_labels[0] == "background"
    assert loaded.source_labels[935].startswith("hotdog")
    assert loaded.reinitialized_shapes == {"classifier.bias": (2,), "classifier.weight": (2, 1280)}


# --- security: pickle weights and remote code ----------------------------------------------------------------


def _pickle_only_copy(source, target):
    """``target``: the checkpoint ``source`` with its weights as a pickle (pytorch_model.bin) only."""
    import shutil

    shutil.copytree(source, target)
    torch.save(load_file(target / "model.safetensors"), target / "pytorch_model.bin")
    (target / "model.safetensors").unlink()
    return target


def test_pickle_weights_are_refused_unless_allowed(tiny_hf_checkpoint, tmp_path):
    pickled = _pickle_only_copy(tiny_hf_checkpoint, tmp_path / "pickled")
    with pytest.raises(ModelLoadError, match=r"only in pickle files.*allow_pickle_weights: true"):
        load_model_for_labels(str(pickled), ["cat", "dog"])
    loaded = load_model_for_labels(str(pickled), ["cat", "dog"], allow_pickle_weights=True)
    source = load_file(tiny_hf_checkpoint / "model.safetensors")
    body = {k: v for k, v in loaded.model.state_dict().items() if not k.startswith("classifier")}
    assert body and all(torch.equal(v, source[k]) for k, v in body.items())


class _RunsCode:  # unpickling this would create a file
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_allowed_pickle_weights_still_refuse_code(tiny_hf_checkpoint, tmp_path):
    evil = _pickle_only_copy(tiny_hf_checkpoint, tmp_path / "evil")
    marker = tmp_path / "code-ran"
    torch.save({"payload": _RunsCode(marker)}, evil / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="cannot load the weights"):
        load_model_for_labels(str(evil), ["cat", "dog"], allow_pickle_weights=True)
    assert not marker.exists()  # torch.load(weights_only=True) refused the object


def test_pickle_refusal_is_one_line_from_the_command(tiny_hf_checkpoint, tiny_image_folder, tmp_path):
    from conftest import run_hf_finetune

    pickled = _pickle_only_copy(tiny_hf_checkpoint, tmp_path / "pickled")
    proc = run_hf_finetune(
        "train",
        "--model_name_or_path",
        pickled,
        "--train_dir",
        tiny_image_folder,
        "--output_dir",
        tmp_path / "out",
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("hf-finetune: error: model_name_or_path: "), errors
    assert str(pickled) in errors[0] and "allow_pickle_weights: true" in errors[0]
    assert not (tmp_path / "out").exists()


def test_trust_remote_code_is_off_by_default_and_announced_when_on(
    tiny_hf_checkpoint, tiny_image_folder, tmp_path, caplog
):
    import logging

    from hf_finetune.config.arguments import DataArguments, FinetuneTrainingArguments, ModelArguments
    from hf_finetune.run.train import build_trainer

    assert ModelArguments(model_name_or_path="x").trust_remote_code is False
    caplog.set_level(logging.WARNING, logger="hf_finetune")
    build_trainer(
        ModelArguments(model_name_or_path=str(tiny_hf_checkpoint), trust_remote_code=True),
        DataArguments(train_dir=str(tiny_image_folder), image_size=32),
        FinetuneTrainingArguments(output_dir=str(tmp_path / "out")),
    )
    warnings = [r.getMessage() for r in caplog.records if "trust_remote_code is on" in r.getMessage()]
    assert warnings == [
        f"trust_remote_code is on: Python code from {tiny_hf_checkpoint} will run on this machine"
    ]
