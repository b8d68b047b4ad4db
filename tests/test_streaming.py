"""``streaming: true``: parquet, arrow/save_to_disk and WebDataset shards streamed while training; labels from the
features or ``labels:``; each sample once per epoch across 2 processes; an exact resume inside a stream; the bad
inputs of a stream, each one line."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import ROOT
from PIL import Image
from transformers import TrainerCallback

from hf_finetune.config.parser import parse_train_args
from hf_finetune.data.image_check import decode_failures
from hf_finetune.data.stream_dataset import rank_stream
from hf_finetune.data.stream_pause import join_closers
from hf_finetune.data.streaming import load_streamed_data, rank_length, refuse_unstreamable
from hf_finetune.data.transforms import make_batch_transform
from hf_finetune.errors import ConfigError, DataError

NAMES = ["cat", "dog", "fox"]
FEATURES = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)})


def _png(seed: int, broken: bool = False) -> bytes:
    if broken:
        return b"\x89PNG\r\n\x1a\n this is not the rest of a PNG"
    pixels = np.random.default_rng(seed).integers(0, 255, (20, 20, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def _parquet(folder: Path, shards: int, per_shard: int, start: int = 0, broken=()) -> Path:
    """``shards`` parquet files of ``per_shard`` images named img<ID>.png, labelled ID % 3 (a ClassLabel)."""
    folder.mkdir(parents=True, exist_ok=True)
    for shard in range(shards):
        ids = range(start + shard * per_shard, start + (shard + 1) * per_shard)
        rows = [
            {"image": {"bytes": _png(i, i in broken), "path": f"img{i}.png"}, "label": i % 3} for i in ids
        ]
        datasets.Dataset.from_list(rows, features=FEATURES).to_parquet(str(folder / f"part-{shard}.parquet"))
    return folder


def _tar(path: Path, samples: dict[str, str]) -> Path:
    """A WebDataset shard: KEY.png + KEY.txt (the class name) per sample."""
    with tarfile.open(path, "w") as archive:
        for i, (key, label) in enumerate(samples.items()):
            for ext, data in (("png", _png(i)), ("txt", label.encode())):
                member = tarfile.TarInfo(f"{key}.{ext}")
                member.size = len(data)
                archive.addfile(member, io.BytesIO(data))
    return path


@pytest.fixture(autouse=True)
def _no_shutdown_sleep(monkeypatch):
    """datasets sleeps 5 s each time a parquet stream's reader threads shut down (each epoch's end, a take()),
    against an Arrow crash at interpreter exit (apache/arrow#45214): time only, not behaviour; off in these tests."""
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    _parquet(root / "train", shards=4, per_shard=4)  # 16 training images
    _parquet(root / "val", shards=1, per_shard=5, start=1000)  # odd: 2 processes cannot split it evenly
    return root


def _args(tmp: Path, checkpoint: Path, shards: Path, *extra: str):
    return parse_train_args(
        [
            "--model_name_or_path", str(checkpoint),
            "--train_file", str(shards / "train" / "*.parquet"),
            "--validation_file", str(shards / "val"),
            "--streaming", "true",
            "--shuffle_buffer_size", "5",
            "--image_size", "24",
            "--per_device_train_batch_size", "4",
            "--bf16", "false",
            "--eval_strategy", "no",
            "--eval_on_start", "false",
            "--load_best_model_at_end", "false",
            "--save_strategy", "steps",
            "--save_steps", "5",
            "--report_to", "none",
            "--disable_tqdm", "true",
            "--seed", "3",
            "--output_dir", str(tmp),
            *extra,
        ]
    )  # fmt: skip


class RecordIds(TrainerCallback):
    """Test only: the sample of every example the training loader collates, in order."""

    def __init__(self):
        self.ids: list[str] = []

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        loader = getattr(train_dataloader, "base_dataloader", train_dataloader)
        collate = loader.collate_fn

        def recording(examples):
            self.ids.extend(example["key"] for example in examples)
            return collate(examples)

        loader.collate_fn = recording


class StopAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def _train(args, *callbacks, resume=None):
    from hf_finetune.run.build import build_trainer

    model_args, data_args, training_args = args
    trainer, _, data = build_trainer(model_args, data_args, training_args, callbacks=list(callbacks))
    trainer.train(resume_from_checkpoint=resume)
    return trainer, data


def test_epochs_from_the_metadata_and_an_interrupted_run_resumes_exactly(
    tmp_path, shards, tiny_hf_checkpoint
):
    """2 epochs of 16 streamed images (size from the parquet footers): 8 steps, each image once per epoch in
    a new order; a run stopped after its checkpoint at step 5 (one step into epoch 1) and resumed sees, before +
    after, exactly the samples of the uninterrupted run in the same order (none repeated, none skipped)."""
    whole = RecordIds()
    trainer, data = _train(
        _args(tmp_path / "a", tiny_hf_checkpoint, shards, "--num_train_epochs", "2"), whole
    )
    assert data.train_size == 16 and trainer.state.max_steps == 2 * 16 // 4
    first, second = whole.ids[:16], whole.ids[16:]
    assert sorted(first) == sorted(second) == sorted(f"img{i}.png" for i in range(16))
    assert first != second  # set_epoch: a new seeded order each epoch

    before, after = RecordIds(), RecordIds()
    args = _args(tmp_path / "b", tiny_hf_checkpoint, shards, "--num_train_epochs", "2")
    _train(args, before, StopAt(7))  # checkpoint-5 written, then 2 more steps that the resume redoes
    state = json.loads((tmp_path / "b" / "checkpoint-5" / "stream_state.json").read_text())
    assert (state["epoch"], state["examples_into_epoch"]) == (1, 4)
    trainer, _ = _train(args, after, resume=str(tmp_path / "b" / "checkpoint-5"))
    assert trainer.state.global_step == 8
    assert before.ids[: 5 * 4] + after.ids == whole.ids


def test_an_open_parquet_shard_holds_pages_not_its_row_group(tmp_path):
    """4 parquet shards of one 8 MiB row group each (as datasets' to_parquet writes up to 100 MB), all 4 read at once
    by the shuffle: the open shards hold under half a row group of Arrow memory each (a read buffer and a page;
    8.2 MiB in all measured), where pyarrow's dataset scanner (datasets' parquet builder) held each one's whole
    row group decoded (32.2 MiB in all) and its raw bytes besides."""
    import pyarrow

    rng = np.random.default_rng(0)
    for shard in range(4):
        rows = {
            "image": [{"bytes": rng.bytes(4096), "path": f"s{shard}-{i}.png"} for i in range(2048)],
            "label": [i % 3 for i in range(2048)],
        }
        datasets.Dataset.from_dict(rows, features=FEATURES).to_parquet(
            str(tmp_path / f"part-{shard}.parquet")
        )
    args = parse_train_args(["--train_file", str(tmp_path), "--validation_file", str(tmp_path / "part-0.parquet"),
                             "--streaming", "true", "--model_name_or_path", "x", "--output_dir", str(tmp_path)])  # fmt: skip
    data = load_streamed_data(args[1], seed=0)
    before = pyarrow.total_allocated_bytes()
    rows = iter(data.dataset["train"])
    first = [next(rows) for _ in range(300)]
    held = pyarrow.total_allocated_bytes() - before
    rows.close()
    join_closers()
    assert len({row["key"].split("-")[0] for row in first}) == 4  # the 4 shards were open
    assert held < 16 * 2**20, f"{held / 2**20:.1f} MiB of Arrow memory for 4 open shards"


def test_the_pause_when_a_stream_stops_is_paid_beside_training(monkeypatch, tmp_path, shards):
    """datasets pauses SLEEP_TIME_ON_THREADS_SHUTDOWN (1 s here) when a shuffled stream of its parquet builder stops
    (a Hub dataset; these files are read without it); two epochs, a stop after 3 examples and the head sample each
    hand the pause to a closing thread: the reader waits far less than one pause per stop, and join_closers then
    waits for the pauses (the closers were still running)."""
    args = parse_train_args(["--train_file", str(shards / "train"), "--validation_file", str(shards / "val"),
                             "--streaming", "true", "--model_name_or_path", "x", "--output_dir", str(tmp_path)])  # fmt: skip
    data = load_streamed_data(args[1], seed=0)
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 1.0)
    stream = rank_stream(data.dataset["train"], lambda batch: {"label": batch["label"]}, 4, 1, 16)
    started = time.perf_counter()
    epochs = []
    for epoch in range(2):
        stream.set_epoch(epoch)
        epochs.append([example["key"] for example in stream])
    early = iter(stream)
    head = [next(early) for _ in range(3)]
    early.close()
    sample = data.head_sample(2)
    read = time.perf_counter() - started
    assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(f"img{i}.png" for i in range(16))
    assert head[0]["key"] == epochs[1][0] and len(sample) == 2
    assert read < 1.0  # 4 stops: 4 s if paid in the reader
    assert join_closers() == 0
    assert time.perf_counter() - started >= 1.0  # the pauses ran, in the closing threads


def test_each_rank_reads_its_own_shards_and_validation_counts_once(tmp_path, shards, tiny_hf_checkpoint):
    """2 CPU processes (accelerate launch, gloo): the ranks' samples are disjoint and together every training
    image once per epoch (no second split by accelerate); the 5 validation images are scored once each: the
    run's metrics equal one process evaluating the saved model."""
    script = tmp_path / "two.py"
    script.write_text(
        "import json, os, sys\n"
        f"sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "from test_streaming import RecordIds, _args\n"
        "import datasets.config\n"
        "datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0  # as _no_shutdown_sleep\n"
        "from hf_finetune.run.train import main\n"
        "from pathlib import Path\n"
        "record = RecordIds()\n"
        f"args = _args(Path({str(tmp_path / 'run')!r}), Path(sys.argv[1]), Path(sys.argv[2]), '--num_train_epochs', '2',"
        " '--eval_strategy', 'epoch', '--save_strategy', 'epoch', '--per_device_eval_batch_size', '2')\n"
        "main(*args, explicit=args.explicit, callbacks=[record])\n"
        f"Path({str(tmp_path)!r}, 'ids-' + os.environ['RANK'] + '.json').write_text(json.dumps(record.ids))\n"
        "import torch.distributed as dist\n"
        "dist.barrier()\n"
        "dist.destroy_process_group()\n"
    )
    # ACCELERATE_USE_CPU: gloo on this GPU-less machine, as hf-finetune's own launch sets it (runtime/launch.py)
    env = dict(
        os.environ,
        CUDA_VISIBLE_DEVICES="",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT),
        ACCELERATE_USE_CPU="true",
    )
    config = ROOT / "recipes" / "accelerate_configs" / "cpu_ddp.yaml"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), str(script)]
    proc = subprocess.run(
        [*command, str(tiny_hf_checkpoint), str(shards)], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"ids-{rank}.json").read_text()) for rank in (0, 1)]
    assert [len(ids) for ids in ranks] == [16, 16]  # 8 per epoch each: 2 epochs
    every = sorted(f"img{i}.png" for i in range(16))
    for epoch in (0, 1):
        zero, one = (ids[epoch * 8 : (epoch + 1) * 8] for ids in ranks)
        assert not set(zero) & set(one) and sorted(zero + one) == every

    from hf_finetune.config.arguments import DataArguments
    from hf_finetune.inference.evaluation import evaluate_model

    metrics = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert metrics["eval_samples"] == 5
    single = evaluate_model(
        str(tmp_path / "run"),
        DataArguments(train_file=str(shards / "val" / "part-0.parquet"), validation_file=str(shards / "val")),
        seed=0,
        batch_size=3,
    )
    assert single["num_images"] == 5
    assert single["accuracy"] == pytest.approx(metrics["eval_accuracy"], abs=1e-9)
    assert single["macro_f1"] == pytest.approx(metrics["eval_macro_f1"], abs=1e-9)


def test_webdataset_labels_from_the_recipe_and_a_label_outside_them(tmp_path):
    """Text labels of a WebDataset stream need labels:; a sample whose label is not listed is one error naming
    the sample's key and the label; the size of tar shards is unknown, so max_steps is required."""
    _tar(tmp_path / "a.tar", {"s0": "cat", "s1": "dog", "s2": "wolf"})
    _tar(tmp_path / "v.tar", {"v0": "cat"})
    base = [
        "--train_file",
        str(tmp_path / "a.tar"),
        "--validation_file",
        str(tmp_path / "v.tar"),
        "--streaming",
        "true",
    ]
    args = parse_train_args([*base, "--model_name_or_path", "x", "--output_dir", str(tmp_path / "o")])
    with pytest.raises(DataError, match=r"not a ClassLabel, and the recipe has no labels: list"):
        load_streamed_data(args[1])
    args = parse_train_args(
        [*base, "--labels", "cat", "dog", "--model_name_or_path", "x", "--output_dir", str(tmp_path / "o")]
    )
    data = load_streamed_data(args[1], seed=0)
    assert data.labels == ["cat", "dog"] and data.rank_size is None
    assert list(data.dataset["validation"]["label"]) == [0]
    with pytest.raises(DataError) as err:
        list(data.dataset["train"])
    assert "sample s2 (" in str(err.value) and "label 'wolf' is not one of the 2 declared classes" in str(
        err.value
    )

    from hf_finetune.run.build import load_data

    with pytest.raises(
        ConfigError, match=r"max_steps: unset, and the size of the stream .* is not in its metadata"
    ):
        load_data(args[1], args[2])


def test_a_bad_image_is_skipped_counted_and_named_and_a_saved_dataset_streams(tmp_path, shards):
    """An image that fails to decode is skipped and recorded with the sample's name; a save_to_disk folder
    streams with its length known."""
    _parquet(tmp_path / "bad", shards=1, per_shard=6, broken={3})
    args = parse_train_args(
        ["--train_file", str(tmp_path / "bad"), "--validation_file", str(shards / "val"), "--streaming", "true",
         "--shuffle_buffer_size", "0", "--model_name_or_path", "x", "--output_dir", str(tmp_path / "o")]
    )  # fmt: skip
    data = load_streamed_data(args[1])
    stream = rank_stream(data.dataset["train"], make_batch_transform(lambda image: image.size), 4, 2, 6)
    examples = list(stream)
    assert [e["key"] for e in examples] == [f"img{i}.png" for i in range(6)]
    assert [e["pixel_values"] is None for e in examples] == [i == 3 for i in range(6)]
    assert [path for path, _ in decode_failures()] == ["img3.png"]

    # No loader worker (threads 0): read and decoded in the training thread, the same examples in the same order,
    # a resume's skip included. A chunk is a training batch: one whose images all failed takes the last good
    # image and label (as a map-style batch does); a thread's part of a chunk does not decide that alone.
    def stream(threads, chunk=4):
        transform = make_batch_transform(lambda image: image.size, repeat_failed_batch=False)
        return rank_stream(data.dataset["train"], transform, chunk, threads, 6)

    inline, threaded = stream(0), stream(3)  # 3 threads: img3 alone in its part of the chunk img2..img5
    inline.resume_at(2)
    threaded.resume_at(2)
    assert inline.threads == 0 and list(inline) == list(threaded) == examples[2:]
    one_by_one = list(stream(0, chunk=1))
    assert one_by_one[3] == {**examples[2], "key": "img3.png"}
    assert [e["key"] for e in one_by_one] == [e["key"] for e in examples]

    saved = tmp_path / "saved"
    datasets.load_dataset(
        "parquet", data_files=str(shards / "train" / "*.parquet"), split="train"
    ).save_to_disk(saved)
    args = parse_train_args(
        ["--train_file", str(saved), "--validation_file", str(shards / "val"), "--streaming", "true",
         "--model_name_or_path", "x", "--output_dir", str(tmp_path / "o")]
    )  # fmt: skip
    data = load_streamed_data(args[1], rank=1, world_size=2)
    keys = [example["key"] for example in data.dataset["train"]]
    assert data.train_size == 16 and data.rank_size == 8 and len(keys) == 8 and len(set(keys)) == 8

    # dataset_name: a saved DatasetDict, and a folder laid out in splits as on the Hub (datasets finds them)
    splits = datasets.DatasetDict(
        {name: datasets.load_dataset("parquet", data_files=str(shards / folder / "*.parquet"), split="train")
         for name, folder in (("train", "train"), ("validation", "val"))}
    )  # fmt: skip
    splits.save_to_disk(tmp_path / "dict")
    layout = tmp_path / "hub" / "data"
    layout.mkdir(parents=True)
    for name, split in splits.items():
        split.to_parquet(str(layout / f"{name}-00000-of-00001.parquet"))
    for name in (tmp_path / "dict", tmp_path / "hub"):
        args = parse_train_args(
            ["--dataset_name", str(name), "--streaming", "true", "--model_name_or_path", "x",
             "--output_dir", str(tmp_path / "o")]
        )  # fmt: skip
        data = load_streamed_data(args[1])
        keys = [example["key"] for example in data.dataset["train"]]
        assert sorted(keys) == sorted(f"img{i}.png" for i in range(16)) and data.labels == NAMES
        assert sorted(data.dataset["validation"]["key"]) == sorted(f"img{i}.png" for i in range(1000, 1005))


def test_bad_shards_and_what_cannot_stream_are_one_line_each(tmp_path, shards):
    train = _parquet(tmp_path / "t", shards=2, per_shard=3)
    (train / "part-1.parquet").write_bytes((train / "part-1.parquet").read_bytes()[:100])  # truncated
    base = ["--validation_file", str(shards / "val"), "--streaming", "true", "--model_name_or_path", "x"]
    args = parse_train_args(["--train_file", str(train), *base, "--output_dir", str(tmp_path / "o")])
    with pytest.raises(
        DataError, match=r"^train_file: shard .*part-1.parquet cannot be read \(.*\); truncated"
    ):
        load_streamed_data(args[1])

    _tar(tmp_path / "w.tar", {f"s{i}": "cat" for i in range(40)})
    (tmp_path / "w.tar").write_bytes((tmp_path / "w.tar").read_bytes()[:20000])  # cut inside a member
    _tar(tmp_path / "v.tar", {"v0": "cat"})
    args = parse_train_args(
        ["--train_file", str(tmp_path / "w.tar"), "--validation_file", str(tmp_path / "v.tar"), "--streaming", "true",
         "--model_name_or_path", "x", "--labels", "cat", "--output_dir", str(tmp_path / "o")]
    )  # fmt: skip
    stream = load_streamed_data(args[1]).train
    with pytest.raises(DataError, match=r"w\.tar"):
        list(rank_stream(load_streamed_data(args[1]).dataset["train"], lambda b: b, 4, 1, None, stream))

    no_validation = parse_train_args(["--train_file", str(shards / "train"), "--streaming", "true",
                                      "--model_name_or_path", "x", "--output_dir", str(tmp_path / "o")])  # fmt: skip
    with pytest.raises(DataError, match=r"^streaming: no validation split; set validation_file"):
        load_streamed_data(no_validation[1])
    for flag, value in (
        ("--cache_images", "true"),
        ("--class_balance", "sampler"),
        ("--label_init_from_data", "true"),
    ):
        parsed = parse_train_args(
            ["--train_file", str(shards / "train"), *base, flag, value, "--output_dir", str(tmp_path / "o")]
        )
        with pytest.raises(ConfigError, match=rf"^{flag[2:]}: cannot be used with streaming: true"):
            refuse_unstreamable(*parsed)
    with pytest.raises(ConfigError, match=r"^streaming: .*an image folder"):
        parse_train_args(["--train_dir", str(tmp_path), "--streaming", "true", "--model_name_or_path", "x"])


def test_every_rank_trains_on_the_smallest_share():
    assert rank_length(24, [6, 6, 6, 6], 4, 2) == 12
    assert rank_length(25, [7, 6, 6, 6], 4, 2) == 12  # whole shards: the two smallest
    assert rank_length(25, [7, 6, 6, 6], 4, 3) == 8  # every 3rd example: at least 25 // 3
    assert rank_length(25, None, 4, 2) is None and rank_length(None, None, 3, 1) is None
