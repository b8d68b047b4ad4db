"""Label mapping onto the larger ImageNet label sets (12k, 21k/22k): recognising a checkpoint's label set by its
names, synset ids or timm's ``num_classes``, and copying the matched rows of tiny random 21k/12k-row heads."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file
from timm.data import ImageNetInfo, infer_imagenet_subset

from hf_finetune.labels.imagenet import imagenet_offset
from hf_finetune.labels.label_sets import SET_SIZES, label_set, recognize_label_set
from hf_finetune.labels.matching import match_labels
from hf_finetune.labels.model_labels import data_to_model_rows
from hf_finetune.models.loading import load_model_for_labels, load_source_config, source_label_names

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100 = """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can
castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant
flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree
motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate
poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake spider
squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle
wardrobe whale willow_tree wolf woman worm""".split()
# target -> the WordNet synset of its one row in ImageNet-22k/12k; none of these has a row in ImageNet-1k
ONE_ROW = {
    "airplane": "n02691156",
    "automobile": "n02958343",
    "bird": "n01503061",
    "cat": "n02121620",
    "deer": "n02430045",
    "dog": "n02084071",
    "frog": "n01639765",
    "ship": "n04194289",
    "truck": "n04490091",
    "Bengal tiger": "n02129837",  # fine-grained classes only the larger sets have
    "Abyssinian cat": "n02124313",
    "rainbow trout": "n02537525",
    "tulip": "n12454159",
}
ONE_ROW_KINDS = {"exact", "synonym", "plural", "synset"}


def _found(targets, source_labels):
    """(targets with any row, targets matched by name: exact, synonym, plural) of ``match_labels``."""
    matches = match_labels(targets, source_labels).matches
    return sum(m.kind != "none" for m in matches), sum(m.kind in ONE_ROW_KINDS for m in matches)


@pytest.fixture(scope="module")
def timm_22k(tmp_path_factory):
    """A random timm ``test_efficientnet`` with a 21841-row head, saved as timm does with synset-id label_names."""
    import timm

    torch.manual_seed(0)
    synsets = ImageNetInfo("imagenet-22k").label_names()
    path = tmp_path_factory.mktemp("timm_22k")
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=len(synsets)).eval()
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, 32, 32), crop_pct=0.875)
    timm.models.save_for_hf(
        model, str(path), model_config={"label_names": list(synsets)}, safe_serialization=True
    )
    return path


@pytest.fixture(scope="module")
def hf_12k(tmp_path_factory):
    """A random transformers ResNet with the 11821 ImageNet-12k names as ``id2label`` (as transformers spells 22k)."""
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    names = label_set("imagenet-12k").descriptions
    path = tmp_path_factory.mktemp("hf_12k")
    config = ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="basic",
        id2label=dict(enumerate(names)),
    )
    ResNetForImageClassification(config).eval().save_pretrained(path)
    return path


def test_set_sizes_are_timms():
    for size, name in SET_SIZES.items():
        assert ImageNetInfo(name).num_classes() == size
        assert infer_imagenet_subset({"num_classes": size}) == name


def test_recognize_by_names_synsets_and_background():
    for name in ("imagenet-12k", "imagenet-22k", "imagenet-21k-goog", "imagenet-22k-ms"):
        known = label_set(name)
        for labels in (known.descriptions, known.synsets):
            found = recognize_label_set(labels)
            assert found is not None and (found.label_set.name, found.offset) == (name, 0)
    names = list(label_set("imagenet-22k").descriptions)
    with_background = recognize_label_set(["background", *names])  # 21842 rows, as many as 22k-ms
    assert (with_background.label_set.name, with_background.offset) == ("imagenet-22k", 1)
    tweaked = [f"x{i}" if i % 25 == 0 else n for i, n in enumerate(names)]  # 96% agree
    assert recognize_label_set(tweaked).label_set.name == "imagenet-22k"
    assert recognize_label_set([f"x{i}" if i % 10 == 0 else n for i, n in enumerate(names)]) is None  # 90%
    assert recognize_label_set(names[1:] + names[:1]) is None  # shifted by one row
    assert recognize_label_set(names[:-1]) is None  # a size no set has
    # ImageNet-1k as before: 1000 rows, or 1001 with background
    assert imagenet_offset(label_set("imagenet-1k").descriptions) == 0
    assert imagenet_offset(["background", *label_set("imagenet-1k").synsets]) == 1
    assert imagenet_offset(names) is None


def test_larger_sets_give_more_targets_a_row():
    """CIFAR-100's class names (measured; docs/label-mapping.md): ImageNet-1k starts 70 of 100 from some row
    (25 by name rather than merged head/definition rows), ImageNet-12k 96 (95), ImageNet-22k 97 (95)."""
    counts = {
        name: _found(CIFAR100, label_set(name).descriptions) for name in ("imagenet-1k", "imagenet-22k")
    }
    counts["imagenet-12k"] = _found(CIFAR100, label_set("imagenet-12k").synsets)  # synset-id labels
    assert counts == {"imagenet-1k": (70, 25), "imagenet-22k": (97, 95), "imagenet-12k": (96, 95)}
    assert _found(CIFAR10, label_set("imagenet-1k").descriptions) == (9, 0)  # deer: none; the rest merged
    assert _found(CIFAR10, label_set("imagenet-22k").descriptions) == (10, 10)
    assert _found(CIFAR10, label_set("imagenet-12k").descriptions) == (10, 10)


def test_targets_find_their_synset_in_every_larger_set():
    for name in ("imagenet-12k", "imagenet-22k", "imagenet-21k-goog", "imagenet-22k-ms"):
        known = label_set(name)
        report = match_labels(list(ONE_ROW), known.synsets)
        assert report.label_set == name and report.imagenet_offset == 0
        got = {m.target: [known.synsets[i] for i in m.source_indices] for m in report.matches}
        assert got == {t: [s] for t, s in ONE_ROW.items()}, name
    one_k = match_labels(list(ONE_ROW), label_set("imagenet-1k").synsets).matches
    assert not any(m.kind in ONE_ROW_KINDS for m in one_k)
    assert {m.target for m in one_k if m.kind == "none"} == {
        "deer",
        "Bengal tiger",
        "Abyssinian cat",
        "rainbow trout",
        "tulip",
    }


def test_ambiguous_name_and_explicit_synset_on_22k():
    """``horse`` is first synonym of four 22k classes (the animal, a gymnastic horse, ...): merged, and noted;
    an explicit synset id picks one."""
    synsets = label_set("imagenet-22k").synsets
    horse = match_labels(["horse"], synsets).matches[0]
    assert horse.kind == "synonym" and len(horse.source_indices) == 4 and "merged all 4" in horse.note
    explicit = match_labels(["horse"], synsets, {"horse": "n02374451"}).matches[0]
    assert explicit.source_indices == [synsets.index("n02374451")]


def test_eval_rows_on_a_22k_model():
    synsets = label_set("imagenet-22k").synsets
    rows = data_to_model_rows(["dog", "Bengal tiger"], synsets, "m")
    assert rows == [synsets.index("n02084071"), synsets.index("n02129837")]


def _assert_rows_copied(loaded, checkpoint, head_weight, head_bias, synsets):
    saved = load_file(str(checkpoint / "model.safetensors"))
    state = loaded.model.state_dict()
    prefix = "timm_model." if loaded.is_timm else ""
    for row, target in enumerate(loaded.labels):
        source_row = synsets.index(ONE_ROW[target])
        assert torch.equal(state[prefix + head_weight][row], saved[head_weight][source_row]), target
        assert torch.equal(state[prefix + head_bias][row], saved[head_bias][source_row]), target


def test_timm_22k_checkpoint_copies_rows_bit_for_bit(timm_22k):
    targets = ["dog", "Bengal tiger", "truck", "tulip", "zzz unknown"]
    loaded = load_model_for_labels(str(timm_22k), targets)
    assert len(loaded.source_labels) == 21841 and loaded.source_labels[0] == "n00004475"
    assert loaded.mapping.label_set == "imagenet-22k"
    kinds = [m.kind for m in loaded.mapping.matches]
    assert kinds == ["synonym", "exact", "synonym", "exact", "none"]
    loaded.labels = targets[:4]  # the unmatched row is fresh
    _assert_rows_copied(
        loaded, timm_22k, "classifier.weight", "classifier.bias", ImageNetInfo("imagenet-22k").label_names()
    )
    assert json.loads(json.dumps(loaded.mapping.to_dict()))["label_set"] == "imagenet-22k"


def test_transformers_12k_checkpoint_copies_rows_bit_for_bit(hf_12k):
    targets = ["cat", "deer", "Abyssinian cat", "rainbow trout"]
    loaded = load_model_for_labels(str(hf_12k), targets)
    assert loaded.mapping.label_set == "imagenet-12k"
    assert Counter(m.kind for m in loaded.mapping.matches) == {"synonym": 4}
    _assert_rows_copied(
        loaded, hf_12k, "classifier.1.weight", "classifier.1.bias", label_set("imagenet-12k").synsets
    )


def test_timm_config_without_label_names_is_known_by_num_classes(tmp_path):
    """A timm checkpoint with 21843 classes and no ``label_names`` (as many on the Hub): transformers names the
    rows from timm's ImageNet-21k (Google) set, which is then recognised."""
    config = {
        "architecture": "test_efficientnet",
        "num_classes": 21843,
        "pretrained_cfg": {"num_classes": 21843},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    labels = source_label_names(load_source_config(str(tmp_path)))
    known = recognize_label_set(labels)
    assert known.label_set.name == "imagenet-21k-goog" and len(labels) == 21843
    assert match_labels(["Bengal tiger"], labels).matches[0].source_indices == [2437]
