"""Zero-shot heads for CLIP and SigLIP (hf_finetune.models.zero_shot) on tiny random dual encoders built here.

Tokenizers, built offline: CLIP's own ``CLIPTokenizer`` over a character vocabulary (every letter and letter + ``</w>``,
no merges) written as vocab.json/merges.txt; for SigLIP (whose ``SiglipTokenizer`` needs sentencepiece, not
installed here) a ``tokenizers`` WordLevel tokenizer saved as a ``PreTrainedTokenizerFast``, padded with ``<pad>`` to
64 tokens by the zero-shot pipeline as it pads SigLIP's own.
"""

from __future__ import annotations

import json
import string

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, make_image_folder
from PIL import Image

from hf_finetune.config.model import ModelArguments
from hf_finetune.errors import ConfigError, ModelLoadError
from hf_finetune.hub.model_card_mapping import mapping_section
from hf_finetune.models.zero_shot import (
    create_zero_shot_head,
    load_zero_shot_model,
    zero_shot_logits,
)

LABELS = ["cat", "dog", "hot_dog", "zebra", "ship"]
TEMPLATE = "a photo of a {}."
TINY = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}


def _clip_tokenizer(path):
    from transformers import CLIPTokenizer

    chars = list(string.ascii_lowercase) + list(".,-'!0123456789")
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=32)


def _siglip_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = "a photo of the cat dog hot zebra ship bad good close-up cropped bright dark".split()
    vocab = {"<pad>": 0, "<unk>": 1, "</s>": 2}
    for word in sorted(set(words) | set(string.ascii_lowercase) | {".", "-"}):
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="</s>",
        model_max_length=64,
        model_input_names=["input_ids", "attention_mask"],
    )


@pytest.fixture(scope="module")
def clip_checkpoint(tmp_path_factory):
    """A random CLIPModel (32 px, patch 8, 2 layers per tower, projection 16) with logit_scale 2 and its tokenizer."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    path = tmp_path_factory.mktemp("tiny_clip")
    tokenizer = _clip_tokenizer(path)
    torch.manual_seed(0)
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    config = CLIPConfig(
        text_config=dict(TINY, vocab_size=len(tokenizer), max_position_embeddings=32, **special),
        vision_config=dict(TINY, image_size=32, patch_size=8),
        projection_dim=16,
    )
    model = CLIPModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(2.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        path
    )
    return path


@pytest.fixture(scope="module")
def siglip_checkpoint(tmp_path_factory):
    """A random SiglipModel (32 px, patch 8, attention-pooling head) with logit_scale 1, logit_bias -0.5."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    path = tmp_path_factory.mktemp("tiny_siglip")
    tokenizer = _siglip_tokenizer()
    torch.manual_seed(0)
    config = SiglipConfig(
        text_config=dict(TINY, vocab_size=len(tokenizer), max_position_embeddings=64),
        vision_config=dict(TINY, image_size=32, patch_size=8),
    )
    model = SiglipModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(1.0)
        model.logit_bias.fill_(-0.5)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def _test_images(count_real: int = 6) -> list[Image.Image]:
    """Synthetic images of several shapes, and real photos from ../shared/data where present."""
    rng = np.random.default_rng(0)
    images = []
    for i, (w, h) in enumerate([(32, 32), (40, 30), (30, 52), (64, 48), (33, 47), (90, 36)]):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if i % 2:  # smooth ones too: a colour ramp
            ramp = np.meshgrid(np.linspace(0, 255, w), np.linspace(255, 0, h))
            pixels = np.stack([*ramp, np.full((h, w), 80.0)], -1)
        images.append(Image.fromarray(pixels.astype(np.uint8)))
    photos = sorted((SHARED_DATA / "hotdog" / "val").glob("*/*.jpg"))
    for step in range(count_real):
        if photos:
            images.append(Image.open(photos[step * len(photos) // count_real]).convert("RGB"))
    return images


def _zero_shot_head(path, templates=(TEMPLATE,), **kwargs):
    args = ModelArguments(model_name_or_path=str(path), zero_shot_templates=list(templates), **kwargs)
    return load_zero_shot_model(args, LABELS)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_saved_classifier_ranks_as_the_zero_shot_pipeline(kind, clip_checkpoint, siglip_checkpoint, tmp_path):
    """Epoch 0: the saved folder, loaded by pipeline("image-classification"), ranks every image's classes as
    transformers' zero-shot pipeline does (top-1 equal); its logits are |embedding| * (zero-shot logit - bias) for
    the pipeline's own pixels, and zero_shot_logits recovers the zero-shot logits within 1e-5."""
    from transformers import AutoModel, AutoTokenizer, pipeline

    path = clip_checkpoint if kind == "clip" else siglip_checkpoint
    loaded = _zero_shot_head(path)
    assert type(loaded.model).__name__ == "TimmWrapperForImageClassification" and loaded.is_timm
    assert [m.kind for m in loaded.mapping.matches] == ["text"] * len(LABELS)
    out = tmp_path / "saved"
    loaded.model.save_pretrained(out)
    loaded.processor.save_pretrained(out)
    names = [name.replace("_", " ") for name in LABELS]
    zero_shot = pipeline("zero-shot-image-classification", model=str(path))
    classifier = pipeline("image-classification", model=str(out))
    assert type(classifier.model).__name__ == "TimmWrapperForImageClassification"
    dual, tokenizer = AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    padding = (
        {"padding": "max_length", "max_length": 64, "truncation": True}
        if kind == "siglip"
        else {"padding": True}
    )
    text = tokenizer([TEMPLATE.format(n) for n in names], return_tensors="pt", **padding)
    head = loaded.model.timm_model.head
    bias = float(head.bias.detach()[0])
    assert bias == pytest.approx(-0.5 if kind == "siglip" else 0.0)
    images = _test_images()
    for image in images:
        expected = zero_shot(image, candidate_labels=names, hypothesis_template=TEMPLATE)
        got = classifier(image, top_k=len(LABELS))
        assert got[0]["label"].replace("_", " ") == expected[0]["label"]
        # The relation between the two, on the zero-shot pipeline's pixels
        pixels = zero_shot.image_processor(images=[image], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            reference = dual(pixel_values=pixels, **text).logits_per_image.double()[0]
            embedding = dual.get_image_features(pixel_values=pixels).pooler_output[0].double()
            logits = loaded.model(pixel_values=pixels).logits.double()[0]
        scale = float(embedding.norm())
        assert torch.allclose(logits, scale * (reference - bias) + bias, rtol=1e-5, atol=1e-5 * scale)
        assert int(logits.argmax()) == int(reference.argmax())
        recovered = zero_shot_logits(loaded_head_of(loaded, path), pixels)[0]
        assert float((recovered - reference).abs().max()) < 1e-5
    assert len(images) >= 6


_HEADS = {}


def loaded_head_of(loaded, path):
    """The ZeroShotHead behind ``loaded`` (the same weights: rebuilt once from the checkpoint, then checked equal)."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    if path not in _HEADS:
        model = AutoModel.from_pretrained(path).eval()
        _HEADS[path] = create_zero_shot_head(
            model,
            AutoTokenizer.from_pretrained(path),
            AutoImageProcessor.from_pretrained(path),
            LABELS,
            [TEMPLATE],
        )
    head = _HEADS[path]
    for (name, a), b in zip(head.model.state_dict().items(), loaded.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    return head


def test_templates_are_averaged_as_the_clip_paper_does(clip_checkpoint):
    """Row c = exp(logit_scale) * normalise(mean_k normalise(text(template_k(name_c)))) @ visual_projection."""
    from transformers import AutoModel, AutoTokenizer

    templates = ["a photo of a {}.", "a bad photo of the {}.", "itap of a {}."]
    loaded = _zero_shot_head(clip_checkpoint, templates)
    model, tokenizer = (
        AutoModel.from_pretrained(clip_checkpoint).eval(),
        AutoTokenizer.from_pretrained(clip_checkpoint),
    )
    rows = []
    with torch.no_grad():
        for label in LABELS:
            tokens = tokenizer(
                [t.format(label.replace("_", " ")) for t in templates], return_tensors="pt", padding=True
            )
            embedded = model.get_text_features(**tokens).pooler_output.double()
            mean = (embedded / embedded.norm(dim=-1, keepdim=True)).mean(0)
            rows.append(mean / mean.norm())
        expected = np.exp(2.0) * torch.stack(rows) @ model.visual_projection.weight.double()
    weight = loaded.model.timm_model.head.weight.detach().double()
    assert float((weight - expected).abs().max()) < 1e-5 * float(expected.abs().max())
    single = _zero_shot_head(clip_checkpoint, templates[:1]).model.timm_model.head.weight
    assert float((single.double() - weight).abs().max()) > 1e-3  # the other templates moved the rows
    assert "and 2 more prompts" in loaded.mapping.matches[0].note


def test_explicit_names_and_none(clip_checkpoint):
    """An explicit label_mapping names the prompts' class (a name, a list) or leaves a row fresh (none)."""
    mapping = {"hot_dog": "frankfurter", "ship": ["boat", "ship"], "zebra": None}
    loaded = _zero_shot_head(clip_checkpoint, label_mapping=json.dumps(mapping))
    kinds = {m.target: m.kind for m in loaded.mapping.matches}
    assert kinds == {"cat": "text", "dog": "text", "hot_dog": "text", "zebra": "none", "ship": "text"}
    plain = _zero_shot_head(clip_checkpoint).model.timm_model.head
    head = loaded.model.timm_model.head
    # cat, dog: their own names. The text encoder sees the prompts in batches of other sizes in the two loads, and
    # CPUs whose torch kernels are AVX2 (not AVX-512) sum in a batch-dependent order: equal to float precision
    assert torch.allclose(head.weight[:2], plain.weight[:2], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(head.weight[2], plain.weight[2])  # hot_dog from "frankfurter"
    assert "'a photo of a frankfurter.'" in loaded.mapping.matches[2].note
    with pytest.raises(ConfigError, match="label_mapping: key 'zebr' is not one of the 5 target labels"):
        _zero_shot_head(clip_checkpoint, label_mapping=json.dumps({"zebr": "zebra"}))


def test_other_checkpoints_and_bad_input(tiny_hf_checkpoint, clip_checkpoint, tmp_path):
    assert load_zero_shot_model(ModelArguments(model_name_or_path=str(tiny_hf_checkpoint)), LABELS) is None
    assert _zero_shot_head(clip_checkpoint, label_mapping="none") is None  # a fresh head: the usual path
    for bad in (["a photo of a cat"], ["{} and {}"], []):
        with pytest.raises(ConfigError, match="zero_shot_templates"):
            ModelArguments(model_name_or_path=str(clip_checkpoint), zero_shot_templates=bad)
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        (no_tokenizer / name).write_bytes((clip_checkpoint / name).read_bytes())
    with pytest.raises(ModelLoadError, match="tokenizer.*label_mapping: none"):
        _zero_shot_head(no_tokenizer)
    from transformers import CLIPConfig, CLIPModel

    from hf_finetune.models.zero_shot_timm import timm_vision_tower

    odd = CLIPModel(
        CLIPConfig(text_config=TINY, vision_config=dict(TINY, image_size=32, patch_size=8, hidden_act="relu"))
    )
    with pytest.raises(ModelLoadError, match="hidden_act 'relu'.*label_mapping: none"):
        timm_vision_tower(odd)


def test_map_labels_and_card_say_the_rows_came_from_text(clip_checkpoint, tmp_path, capsys):
    from hf_finetune.cli import main

    folder = make_image_folder(tmp_path / "data", {"cat": 2, "hot_dog": 2, "ship": 2}, size=(32, 32))
    report_path = tmp_path / "report.json"
    argv = ["map-labels", "--model_name_or_path", str(clip_checkpoint), "--train_dir", str(folder)]
    templates = ["--zero_shot_templates", "a photo of a {}.", "a drawing of a {}."]
    assert main([*argv, *templates, "--output", str(report_path)]) == 0
    stdout = capsys.readouterr().out
    assert (
        "3 of 3 target labels start from the text embeddings of their names in 2 prompt templates" in stdout
    )
    assert "'a photo of a hot dog.' and 1 more prompts" in stdout
    report = json.loads(report_path.read_text())
    assert [m["kind"] for m in report["matches"]] == ["text"] * 3
    summary, rows = mapping_section(report, {})
    assert summary.startswith("3 of 3 target classes started from the text embeddings of their names")
    assert rows[1]["kind"] == "text" and "a photo of a hot dog." in rows[1]["sources"]


def test_a_run_starts_from_the_zero_shot_classifier(clip_checkpoint, tmp_path):
    """hf_finetune.finetune on a CLIP checkpoint: epoch 0 is the zero-shot classifier (its accuracy is the zero-shot
    pipeline's on the same images), the rows are divided by the training images' mean embedding norm, and the saved
    folder is a TimmWrapper classifier that pipeline("image-classification") loads."""
    from transformers import pipeline

    from hf_finetune import DataArguments, FinetuneTrainingArguments, finetune

    names, root = ["cat", "dog", "ship"], tmp_path / "data"
    make_image_folder(root / "train", {"cat": 4, "dog": 4, "ship": 4}, size=(40, 32), seed=5)
    # Validation images filed so that exactly half are in the class the zero-shot pipeline predicts for them:
    # epoch 0 scores 0.5 only if the run's classifier predicts what the pipeline does on each image
    zero_shot = pipeline("zero-shot-image-classification", model=str(clip_checkpoint))
    rng = np.random.default_rng(7)
    for i in range(12):
        image = Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8))
        top = zero_shot(image, candidate_labels=names, hypothesis_template=TEMPLATE)[0]["label"]
        label = top if i % 2 == 0 else names[(names.index(top) + 1 + i // 2 % 2) % 3]
        (root / "val" / label).mkdir(parents=True, exist_ok=True)
        image.save(root / "val" / label / f"{i:02d}.png")
    out = tmp_path / "out"
    result = finetune(
        ModelArguments(
            model_name_or_path=str(clip_checkpoint),
            label_bias_from_data=False,
            zero_shot_templates=[TEMPLATE],
        ),
        DataArguments(train_dir=str(root)),
        FinetuneTrainingArguments(
            output_dir=str(out), max_steps=1, per_device_train_batch_size=4, drop_path_rate=0.1
        ),
    )
    assert json.loads((out / "config.json").read_text())["model_args"]["drop_path_rate"] == 0.1
    report = json.loads((out / "label_mapping.json").read_text())
    assert [m["kind"] for m in report["matches"]] == ["text"] * 3
    assert all("mean image-embedding norm of 12 training images" in m["note"] for m in report["matches"])
    assert result.metrics_before["eval_accuracy"] == pytest.approx(0.5)
    images = sorted((root / "val").glob("*/*.png"))
    classifier = pipeline("image-classification", model=str(out))
    assert type(classifier.model).__name__ == "TimmWrapperForImageClassification"
    assert {p["label"] for p in classifier(str(images[0]), top_k=3)} == set(names)
