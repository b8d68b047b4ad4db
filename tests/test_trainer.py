"""FinetuneTrainer's parameter groups: head multiplier, no decay on 1-D tensors, frozen ones left out."""

from __future__ import annotations

import pytest

from hf_finetune.config.arguments import FinetuneTrainingArguments
from hf_finetune.models.freezing import freeze_parameters
from hf_finetune.models.heads import head_parameter_names
from hf_finetune.models.loading import load_model_for_labels
from hf_finetune.training.trainer import FinetuneTrainer, parameter_groups


@pytest.fixture(params=["tiny_hf_checkpoint", "tiny_timm_checkpoint"])
def model(request):
    return load_model_for_labels(str(request.getfixturevalue(request.param)), ["a", "b", "c"]).model


def test_groups_split_head_body_and_decay(model):
    groups = {g["name"]: g for g in parameter_groups(model, 1e-4, 0.05, head_lr_multiplier=10)}
    assert set(groups) == {"body", "body_no_decay", "head", "head_no_decay"}
    assert groups["head"]["lr"] == pytest.approx(1e-3) and groups["body"]["lr"] == pytest.approx(1e-4)
    assert groups["body"]["weight_decay"] == 0.05 and groups["body_no_decay"]["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in groups["body"]["params"])
    assert all(p.ndim <= 1 for p in groups["body_no_decay"]["params"])
    head_ids = {id(p) for n, p in model.named_parameters() if n in head_parameter_names(model)}
    assert {id(p) for g in ("head", "head_no_decay") for p in groups[g]["params"]} == head_ids
    total = sum(len(g["params"]) for g in groups.values())
    assert total == len(list(model.parameters()))


def test_frozen_parameters_are_not_in_the_optimizer(model, tmp_path):
    freeze_parameters(model, freeze_layers=1)
    args = FinetuneTrainingArguments(
        output_dir=str(tmp_path),
        learning_rate=2e-4,
        head_lr_multiplier=3,
        eval_strategy="no",
        load_best_model_at_end=False,
        eval_on_start=False,
    )
    trainer = FinetuneTrainer(model=model, args=args)
    optimizer = trainer.create_optimizer()
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen and not any(id(p) in in_optimizer for p in frozen)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs["head"] == pytest.approx(6e-4) and lrs["body"] == pytest.approx(2e-4)


def test_a_trainer_built_by_hand_from_fresh_arguments_trains(model, tmp_path):
    """The Python API: FinetuneTrainer(args=FinetuneTrainingArguments(...)) chooses the speed ``auto`` values
    itself (the parsed arguments keep them unset), and trains."""
    import torch

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return {"pixel_values": torch.rand(3, 32, 32), "labels": i % 3}

    args = FinetuneTrainingArguments(
        output_dir=str(tmp_path),
        num_train_epochs=1,
        per_device_train_batch_size=3,
        save_strategy="no",
        eval_strategy="no",
        load_best_model_at_end=False,
        eval_on_start=False,
        report_to=[],
    )
    assert args.dataloader_num_workers is None  # auto: chosen when the run (here: the trainer) is built
    trainer = FinetuneTrainer(model=model, args=args, train_dataset=Images())
    assert isinstance(trainer.args.dataloader_num_workers, int) and isinstance(trainer.args.bf16, bool)
    assert args.dataloader_num_workers is None  # the parsed arguments are not changed
    assert trainer.train().global_step == 2


def test_best_model_and_resume_loads_restore_renamed_vit_tensors(tmp_path):
    """transformers 5 saves ViT in its former tensor layout; the Trainer's own non-strict load of a checkpoint would
    restore only the embeddings and the head. Both loads of FinetuneTrainer restore every tensor bit for bit."""
    import torch
    from safetensors import safe_open
    from transformers import ViTConfig, ViTForImageClassification

    from hf_finetune.config.arguments import FinetuneTrainingArguments
    from hf_finetune.training.trainer import FinetuneTrainer

    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
        patch_size=8, num_labels=3,
    )  # fmt: skip
    model = ViTForImageClassification(config)
    checkpoint = tmp_path / "checkpoint-5"
    model.save_pretrained(checkpoint)
    with safe_open(str(checkpoint / "model.safetensors"), framework="pt") as handle:
        assert set(handle.keys()) - set(model.state_dict())  # the files do use other names
    expected = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    trainer = FinetuneTrainer(
        model=model,
        args=FinetuneTrainingArguments(
            output_dir=str(tmp_path / "out"),
            report_to="none",
            eval_strategy="no",
            save_strategy="no",
            load_best_model_at_end=False,
            eval_on_start=False,
        ),
    )
    for load in ("best", "resume"):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(1.0)
        if load == "best":
            trainer.state.best_model_checkpoint = str(checkpoint)
            trainer._load_best_model()
        else:
            trainer._load_from_checkpoint(str(checkpoint))
        after = model.state_dict()
        assert all(torch.equal(after[name], expected[name]) for name in expected), load
