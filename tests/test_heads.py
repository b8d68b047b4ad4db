"""Finding the head, copying source rows bit for bit, merging many rows (log-sum-exp), two-head models."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import SOURCE_LABELS
from safetensors.torch import load_file
from torch import nn

from hf_finetune.models.heads import copy_source_rows, head_parameter_names, source_head_tensors
from hf_finetune.models.loading import load_model_for_labels


@pytest.fixture(scope="session")
def tiny_distilled_timm_checkpoint(tmp_path_factory):
    """A random timm DeiT-distilled (two heads: `head` and `head_dist`) saved with save_for_hf."""
    import timm

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_deit")
    args = {
        "num_classes": len(SOURCE_LABELS),
        "img_size": 32,
        "patch_size": 8,
        "embed_dim": 16,
        "depth": 1,
        "num_heads": 2,
    }
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, **args).eval()
    timm.models.save_for_hf(
        model,
        str(path),
        model_config={"label_names": SOURCE_LABELS},
        model_args=args,
        safe_serialization=True,
    )
    return path


def test_head_names_are_found_from_the_model(
    tiny_hf_checkpoint, tiny_timm_checkpoint, tiny_distilled_timm_checkpoint
):
    hf = load_model_for_labels(str(tiny_hf_checkpoint), list(SOURCE_LABELS)).model
    assert head_parameter_names(hf) == ["classifier.1.bias", "classifier.1.weight"]
    timm_model = load_model_for_labels(str(tiny_timm_checkpoint), list(SOURCE_LABELS)).model
    assert head_parameter_names(timm_model) == ["timm_model.classifier.bias", "timm_model.classifier.weight"]
    deit = load_model_for_labels(str(tiny_distilled_timm_checkpoint), list(SOURCE_LABELS)).model
    assert head_parameter_names(deit) == [
        "timm_model.head.bias",
        "timm_model.head.weight",
        "timm_model.head_dist.bias",
        "timm_model.head_dist.weight",
    ]


def test_merged_row_is_mean_plus_log_n_and_bounds_logsumexp():
    torch.manual_seed(0)
    source = nn.Linear(8, 5)
    target = nn.Linear(8, 2)
    head = {"weight": source.weight.detach().clone(), "bias": source.bias.detach().clone()}
    copy_source_rows(target, head, [(0, [1]), (1, [0, 2, 4])])
    assert torch.equal(target.weight[0], source.weight[1]) and torch.equal(target.bias[0], source.bias[1])
    x = torch.randn(200, 8)
    with torch.no_grad():
        z_source = source(x)[:, [0, 2, 4]]
        z_merged = target(x)[:, 1]
    lse = torch.logsumexp(z_source, dim=1)
    expected = z_source.mean(dim=1) + math.log(3)
    torch.testing.assert_close(z_merged, expected, rtol=1e-5, atol=1e-5)
    assert bool((z_merged <= lse + 1e-5).all()) and bool((lse - z_merged <= math.log(3) + 1e-5).all())
    # equal logits: the approximation is exact
    equal = nn.Linear(8, 3)
    with torch.no_grad():
        equal.weight.copy_(source.weight[0].repeat(3, 1))
        equal.bias.copy_(source.bias[0].repeat(3))
    one = nn.Linear(8, 1)
    copy_source_rows(one, {"weight": equal.weight.detach(), "bias": equal.bias.detach()}, [(0, [0, 1, 2])])
    with torch.no_grad():
        torch.testing.assert_close(one(x)[:, 0], torch.logsumexp(equal(x), dim=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "fixture,prefix", [("tiny_hf_checkpoint", ""), ("tiny_timm_checkpoint", "timm_model.")]
)
def test_matched_rows_are_copied_bit_for_bit(request, fixture, prefix):
    path = request.getfixturevalue(fixture)
    saved = {prefix + k: v for k, v in load_file(str(path / "model.safetensors")).items()}
    loaded = load_model_for_labels(str(path), ["Hot Dog", "cat", "zebra"])
    state = loaded.model.state_dict()
    kinds = [m.kind for m in loaded.mapping.matches]
    assert kinds[0] in ("synonym", "exact") and kinds[2] == "none"
    weight = [n for n in head_parameter_names(loaded.model) if n.endswith("weight")][0]
    bias = weight[: -len("weight")] + "bias"
    hot = SOURCE_LABELS.index("hotdog, hot dog, red hot")
    cat = SOURCE_LABELS.index("cat")
    assert torch.equal(state[weight][0], saved[weight][hot]) and torch.equal(state[bias][0], saved[bias][hot])
    assert torch.equal(state[weight][1], saved[weight][cat]) and torch.equal(state[bias][1], saved[bias][cat])
    assert not any(torch.equal(state[weight][2], saved[weight][i]) for i in range(len(SOURCE_LABELS)))
    assert "reused from the source: 2 of 3" in loaded.describe()


def test_both_heads_of_a_distilled_model_are_copied(tiny_distilled_timm_checkpoint):
    saved = {
        "timm_model." + k: v
        for k, v in load_file(str(tiny_distilled_timm_checkpoint / "model.safetensors")).items()
    }
    loaded = load_model_for_labels(str(tiny_distilled_timm_checkpoint), ["goldfish", "novel"])
    state = loaded.model.state_dict()
    row = SOURCE_LABELS.index("goldfish")
    for head in ("timm_model.head", "timm_model.head_dist"):
        assert torch.equal(state[f"{head}.weight"][0], saved[f"{head}.weight"][row])
        assert torch.equal(state[f"{head}.bias"][0], saved[f"{head}.bias"][row])
        assert not torch.equal(state[f"{head}.weight"][1], saved[f"{head}.weight"][row])


def test_label_mapping_none_gives_a_fresh_head(tiny_hf_checkpoint):
    saved = load_file(str(tiny_hf_checkpoint / "model.safetensors"))
    loaded = load_model_for_labels(str(tiny_hf_checkpoint), ["cat", "zebra"], label_mapping="none")
    assert loaded.mapping is None
    w = loaded.model.state_dict()["classifier.1.weight"]
    assert not torch.equal(w[0], saved["classifier.1.weight"][SOURCE_LABELS.index("cat")])


def test_explicit_mapping_wins_and_merges(tiny_hf_checkpoint):
    saved = load_file(str(tiny_hf_checkpoint / "model.safetensors"))
    mapping = json.dumps({"pets": ["cat", "dog"], "fish": "goldfish"})
    loaded = load_model_for_labels(str(tiny_hf_checkpoint), ["fish", "pets"], label_mapping=mapping)
    assert [m.kind for m in loaded.mapping.matches] == ["explicit", "explicit"]
    state = loaded.model.state_dict()
    rows = [SOURCE_LABELS.index("cat"), SOURCE_LABELS.index("dog")]
    expected_w = saved["classifier.1.weight"][rows].double().mean(0).float()
    expected_b = (saved["classifier.1.bias"][rows].double().mean() + math.log(2)).float()
    torch.testing.assert_close(state["classifier.1.weight"][1], expected_w, rtol=0, atol=1e-7)
    torch.testing.assert_close(state["classifier.1.bias"][1], expected_b, rtol=0, atol=1e-7)
    assert torch.equal(
        state["classifier.1.weight"][0], saved["classifier.1.weight"][SOURCE_LABELS.index("goldfish")]
    )


def test_source_head_tensors_are_copies(tiny_hf_checkpoint):
    model = load_model_for_labels(str(tiny_hf_checkpoint), list(SOURCE_LABELS)).model
    head = source_head_tensors(model)
    with torch.no_grad():
        model.classifier[1].weight.add_(1.0)
    assert not torch.equal(head["classifier.1.weight"], model.classifier[1].weight)
