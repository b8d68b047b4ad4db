"""Freezing schedules (probe_epochs, unfreeze_schedule: gradual) and layer-wise learning-rate decay, on the
Trainer path, for the tiny transformers ResNet and the tiny timm EfficientNet."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from hf_finetune.config.arguments import DataArguments, FinetuneTrainingArguments, ModelArguments
from hf_finetune.errors import ConfigError
from hf_finetune.models.freezing import body_layout
from hf_finetune.models.heads import head_parameter_names
from hf_finetune.models.loading import load_model_for_labels
from hf_finetune.training.feature_cache import decide_feature_cache
from hf_finetune.training.trainer import FinetuneTrainer

FAST = {
    "per_device_train_batch_size": 8,
    "learning_rate": 3e-3,
    "seed": 7,
    "eval_strategy": "no",
    "save_strategy": "no",
    "load_best_model_at_end": False,
    "eval_on_start": False,
    "report_to": "none",
}


class Recorder(TrainerCallback):
    """Snapshots of the state dict and of the trainable names at the start and after every epoch."""

    def __init__(self):
        self.states: list[dict[str, torch.Tensor]] = []
        self.trainable: list[set[str]] = []
        self.with_state: list[set[str]] = []  # parameters holding optimizer state after each epoch
        self.in_optimizer: set[str] = set()

    def _snap(self, model, optimizer=None):
        self.states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        self.trainable.append({n for n, p in model.named_parameters() if p.requires_grad})
        if optimizer is not None:
            name_of = {id(p): n for n, p in model.named_parameters()}
            self.in_optimizer = {name_of[id(p)] for g in optimizer.param_groups for p in g["params"]}
            self.with_state.append({name_of[id(p)] for p in optimizer.state})

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._snap(model)

    def on_epoch_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self._snap(model, optimizer)


def _args(tmp_path, **extra):
    return FinetuneTrainingArguments(output_dir=str(tmp_path / "out"), **dict(FAST, **extra))


def _strip(name: str) -> str:
    return name[len("timm_model.") :] if name.startswith("timm_model.") else name


@pytest.mark.parametrize("fixture", ["tiny_hf_checkpoint", "tiny_timm_checkpoint"])
def test_probe_then_finetune(request, fixture, tiny_image_folder, tmp_path):
    """Epoch 1 (probe): the body (weights and BatchNorm buffers) is bit-for-bit unchanged while the head
    learns; epochs 2-3: the body trains; the stem and block 0 (freeze_layers: 1) never change."""
    from hf_finetune.run.train import main

    checkpoint = request.getfixturevalue(fixture)
    recorder = Recorder()
    main(
        ModelArguments(model_name_or_path=str(checkpoint)),
        DataArguments(train_dir=str(tiny_image_folder), image_size=32),
        _args(tmp_path, num_train_epochs=3, probe_epochs=1, freeze_layers=1, batchnorm="train"),
        callbacks=[recorder],
    )
    probe = load_model_for_labels(str(checkpoint), ["cat", "dog", "zebra"]).model
    head = set(head_parameter_names(probe))
    layout = body_layout(probe)
    frozen = set(layout.stem) | set(layout.blocks[0][1])
    params = [n for n, _ in probe.named_parameters()]
    body_state = [k for k in recorder.states[0] if not any(k == h for h in head)]
    start, after_probe, end = recorder.states[0], recorder.states[1], recorder.states[3]
    assert len(recorder.states) == 4
    # probe epoch: every body tensor (BatchNorm running statistics included) unchanged, the head trained
    assert all(torch.equal(start[k], after_probe[k]) for k in body_state)
    assert all(not torch.equal(start[h], after_probe[h]) for h in head)
    assert recorder.trainable[1] == head
    # the body's parameters were in the optimizer all along, without state until they got a gradient
    assert recorder.in_optimizer == head | {n for n in params if n not in frozen}
    assert recorder.with_state[0] == head
    assert recorder.with_state[1] == recorder.with_state[2] == recorder.in_optimizer
    # after the switch: every unfrozen block changed, running statistics too
    unfrozen = [n for n in params if n not in head and n not in frozen]
    assert recorder.trainable[2] == head | set(unfrozen)
    changed = [n for n in unfrozen if not torch.equal(after_probe[n], end[n])]
    assert len(changed) >= len(unfrozen) // 2, (len(changed), len(unfrozen))
    running = [
        k for k in body_state if k.endswith("running_mean") and k.rsplit(".", 1)[0] + ".weight" in unfrozen
    ]
    assert running and all(not torch.equal(after_probe[k], end[k]) for k in running)
    # freeze_layers: 1 holds through the whole run, and in the saved model
    saved, source = (
        load_file(str(tmp_path / "out" / "model.safetensors")),
        load_file(str(checkpoint / "model.safetensors")),
    )
    for name in frozen:
        assert all(torch.equal(start[name], s[name]) for s in recorder.states), name
        assert torch.equal(saved[_strip(name)], source[_strip(name)]), name


def test_frozen_body_parameters_in_adamw_are_untouched():
    """AdamW (for-each and fused) skips a parameter whose grad is None: no update, no decay, no state."""
    for kwargs in ({"foreach": False}, {"foreach": True}, {"fused": True}):
        torch.manual_seed(0)
        frozen, live = torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(4, 3))
        before = frozen.detach().clone()
        optimizer = torch.optim.AdamW([frozen, live], lr=0.1, weight_decay=0.5, **kwargs)
        live.grad = torch.ones_like(live)
        optimizer.step()
        assert torch.equal(frozen, before) and frozen not in optimizer.state, kwargs
        assert live in optimizer.state and optimizer.state[live]["step"].item() == 1.0


@pytest.mark.parametrize(
    "fixture,probe_epochs,epochs", [("tiny_hf_checkpoint", 0, 2), ("tiny_timm_checkpoint", 1, 4)]
)
def test_gradual_unfreezing_goes_top_down(
    request, fixture, probe_epochs, epochs, tiny_image_folder, tmp_path
):
    from hf_finetune.run.train import build_trainer

    checkpoint = request.getfixturevalue(fixture)
    recorder = Recorder()
    trainer, loaded, _ = build_trainer(
        ModelArguments(model_name_or_path=str(checkpoint)),
        DataArguments(train_dir=str(tiny_image_folder), image_size=32),
        _args(tmp_path, num_train_epochs=epochs, probe_epochs=probe_epochs, unfreeze_schedule="gradual"),
        callbacks=[recorder],
    )
    trainer.train()
    model = loaded.model
    head = set(head_parameter_names(model))
    layout = body_layout(model)
    blocks = [set(names) for _, names in layout.blocks]
    n = len(blocks)
    expected = [head] * probe_epochs
    for k in range(1, epochs - probe_epochs + 1):  # epoch probe+k: head + the top k blocks
        names = head | set(layout.rest) | set().union(*blocks[n - k :])
        if k >= n:
            names |= set(layout.stem)
        expected.append(names)
    assert recorder.trainable[1:] == expected
    # the schedule's log of changes: each epoch after the first adds the next block down
    schedule = next(c for c in trainer.callback_handler.callbacks if type(c).__name__ == "FreezeSchedule")
    assert [epoch for epoch, _ in schedule.history] == list(range(2, epochs + 1))
    for epoch, names in schedule.history:
        assert set(names) == expected[epoch - 1] - expected[epoch - 2]
    top_down = [block for block, _ in reversed(layout.blocks)]
    for epoch, names in schedule.history:  # epoch probe+k unfreezes exactly the k-th block from the top
        touched = [block for block, block_names in layout.blocks if set(block_names) & set(names)]
        assert touched == [top_down[epoch - probe_epochs - 1]]
    # every parameter was in the optimizer from the start
    assert recorder.in_optimizer == {n for n, _ in model.named_parameters()}


# exact expectations: (stem tensor, its layer), (last block tensor, its layer), number of layers (the head's)
LAYERS = {
    # transformers ResNet via body_layout: stem 0, encoder.stages.0 -> 1, encoder.stages.1 -> 2, head 3
    "tiny_hf_checkpoint": (
        ("resnet.embedder.embedder.convolution.weight", 0),
        ("resnet.encoder.stages.1.layers.0.shortcut.convolution.weight", 2),
        3,
    ),
    # timm test_efficientnet via its group_matcher: stem 0, blocks.i.0 -> i+1, conv_head with blocks.4, head 6
    "tiny_timm_checkpoint": (("timm_model.conv_stem.weight", 0), ("timm_model.conv_head.weight", 5), 6),
}


@pytest.mark.parametrize("fixture", sorted(LAYERS))
def test_layer_decay_learning_rates(request, fixture, tmp_path):
    checkpoint = request.getfixturevalue(fixture)
    model = load_model_for_labels(str(checkpoint), ["a", "b", "c"]).model
    lr, decay = 2e-4, 0.75
    args = _args(tmp_path, learning_rate=lr, head_lr_multiplier=3.0, layer_decay=decay, weight_decay=0.05)
    optimizer = FinetuneTrainer(model=model, args=args).create_optimizer()
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    (stem, stem_layer), (late, late_layer), num_layers = LAYERS[fixture]
    assert group_of[id(named[stem])]["lr"] == lr * decay ** (num_layers - stem_layer)
    assert group_of[id(named[late])]["lr"] == lr * decay ** (num_layers - late_layer)
    assert group_of[id(named[stem])]["lr"] < group_of[id(named[late])]["lr"]
    for name in head_parameter_names(model):
        assert group_of[id(named[name])]["lr"] == lr * 3.0
    # no decay on norms and biases, every tensor in exactly one group
    assert all(group_of[id(p)]["weight_decay"] == 0.0 for p in model.parameters() if p.ndim <= 1)
    assert group_of[id(named[stem])]["weight_decay"] == 0.05
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(named)
    if fixture == "tiny_timm_checkpoint":  # the same scales as timm's own param_groups_layer_decay
        from timm.optim._param_groups import param_groups_layer_decay

        for group in param_groups_layer_decay(model.timm_model, weight_decay=0.05, layer_decay=decay):
            for param in group["params"]:
                if id(param) in {id(named[h]) for h in head_parameter_names(model)}:
                    continue
                assert group_of[id(param)]["lr"] == lr * group["lr_scale"]


@pytest.mark.parametrize(
    "keys,message",
    [
        ({"probe_epochs": -1}, "probe_epochs: got -1"),
        ({"layer_decay": 0.0}, "layer_decay: got 0.0"),
        ({"layer_decay": 1.5}, "layer_decay: got 1.5"),
        ({"layer_decay": -0.75}, "layer_decay: got -0.75"),
        ({"unfreeze_schedule": "slow"}, "unfreeze_schedule: got 'slow'"),
        (
            {"probe_epochs": 3, "num_train_epochs": 3},
            "probe_epochs: got 3; expected fewer than num_train_epochs",
        ),
        ({"probe_epochs": 1, "freeze_layers": -1}, "freeze_layers: -1"),
    ],
)
def test_schedule_config_errors_are_one_line(keys, message, tmp_path):
    with pytest.raises(ConfigError) as err:
        FinetuneTrainingArguments(output_dir=str(tmp_path), **keys)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_layer_decay_one_is_accepted(tmp_path):
    assert FinetuneTrainingArguments(output_dir=str(tmp_path), layer_decay=1.0).layer_decay == 1.0


def test_feature_cache_is_off_with_a_schedule(tiny_hf_checkpoint):
    model = load_model_for_labels(str(tiny_hf_checkpoint), ["a", "b", "c"]).model
    head = head_parameter_names(model)
    assert decide_feature_cache(None, model, head, head, 1)[0] is True
    use, why = decide_feature_cache(None, model, head, head, 1, scheduled=True)
    assert use is False and "probe_epochs" in why
    with pytest.raises(ConfigError, match="feature_cache: true cannot be used: probe_epochs"):
        decide_feature_cache(True, model, head, head, 1, scheduled=True)


class StepRecorder(TrainerCallback):
    """The learning rate of every optimizer group at each step, and the weights after the first step."""

    def __init__(self):
        self.lrs: list[dict[str, float]] = []
        self.after_first: dict[str, torch.Tensor] | None = None

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.lrs.append({g["name"]: g["lr"] for g in optimizer.param_groups})

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.after_first is None:
            self.after_first = {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("fixture", ["tiny_hf_checkpoint", "tiny_timm_checkpoint"])
def test_body_warmup_ramps_the_body_only(request, fixture, tiny_image_folder, tmp_path):
    """body_warmup_epochs 1 over 2 epochs of 5 steps: the body's rate is lr x cosine(s) x s/5 for s < 5, then the
    cosine; the head's is 10 lr x cosine(s) from step 0; after step 1 the body is bit for bit the pretrained one."""
    import math

    from hf_finetune.run.train import build_trainer

    checkpoint = request.getfixturevalue(fixture)
    recorder = StepRecorder()
    lr = 1e-3
    trainer, loaded, _ = build_trainer(
        ModelArguments(model_name_or_path=str(checkpoint)),
        DataArguments(train_dir=str(tiny_image_folder), image_size=32),
        _args(tmp_path, num_train_epochs=2, body_warmup_epochs=1.0, learning_rate=lr, batchnorm="freeze"),
        callbacks=[recorder],
    )
    start = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    steps = len(recorder.lrs)
    assert steps == 10  # 36 images, batch 8: 5 steps an epoch
    for s, lrs in enumerate(recorder.lrs):
        cosine = 0.5 * (1 + math.cos(math.pi * s / steps))
        assert lrs["head"] == pytest.approx(10 * lr * cosine, rel=1e-9)
        assert lrs["body"] == pytest.approx(lr * cosine * min(1.0, s / 5), rel=1e-9, abs=1e-15)
        assert lrs["body_no_decay"] == lrs["body"]
    head = set(head_parameter_names(trainer.model))
    first = recorder.after_first
    body = [n for n, p in trainer.model.named_parameters() if p.requires_grad and n not in head]
    assert body and all(torch.equal(start[n], first[n]) for n in body)
    assert all(not torch.equal(start[h], first[h]) for h in head)
    end = trainer.model.state_dict()
    assert sum(not torch.equal(start[n], end[n]) for n in body) >= len(body) // 2


@pytest.mark.parametrize(
    "keys,message",
    [
        ({"body_warmup_epochs": -1.0}, "body_warmup_epochs: got -1.0"),
        ({"body_warmup_epochs": 1.0, "probe_epochs": 1}, "body_warmup_epochs: got 1.0; expected 0 together"),
        (
            {"body_warmup_epochs": 1.0, "lr_scheduler_type": "reduce_lr_on_plateau"},
            "body_warmup_epochs: got 1.0; expected 0 with lr_scheduler_type reduce_lr_on_plateau",
        ),
    ],
)
def test_body_warmup_config_errors(keys, message, tmp_path):
    with pytest.raises(ConfigError) as err:
        FinetuneTrainingArguments(output_dir=str(tmp_path), **keys)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "mapping,given,expected",
    [("auto", None, 1.0), ("none", None, 0.0), ("none", 1.0, 1.0), ("auto", 0.0, 0.0)],
)
def test_body_warmup_unset_follows_the_reused_rows(
    tiny_hf_checkpoint, tiny_image_folder, tmp_path, mapping, given, expected
):
    """Unset: one epoch when rows are reused (cat, dog), none for a fresh head; a value given is kept."""
    from hf_finetune.run.train import build_trainer

    trainer, _, _ = build_trainer(
        ModelArguments(model_name_or_path=str(tiny_hf_checkpoint), label_mapping=mapping),
        DataArguments(train_dir=str(tiny_image_folder), image_size=32),
        _args(tmp_path, body_warmup_epochs=given),
    )
    assert trainer.args.body_warmup_epochs == expected
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    body = next(g for g in trainer.optimizer.param_groups if g["name"] == "body")
    assert (body["lr"] == 0.0) == (expected > 0)  # step 0 of the warm-up: the body does not move
