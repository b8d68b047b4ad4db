"""``cache_images`` on disk: the free-space check before anything is written (falls back to decoding on the
fly with one log line), the ``image_cache_dir`` key that moves the cache, and nothing left behind."""

from __future__ import annotations

import logging
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from hf_finetune import DataArguments, FinetuneTrainingArguments, ModelArguments, finetune
from hf_finetune.data import image_cache
from hf_finetune.data.loading import load_image_dataset
from hf_finetune.data.transforms import build_transforms, data_config_from_processor
from hf_finetune.models.loading import load_image_processor
from hf_finetune.run import build, inputs

Usage = namedtuple("Usage", "total used free")
SPACE_LINE = "cache_images: not enough free space"
SETTINGS = {
    "max_steps": 2,
    "per_device_train_batch_size": 8,
    "seed": 3,
    "cache_images": True,
    "eval_on_start": False,
}


@pytest.fixture(scope="module")
def pipeline(tiny_image_folder, tiny_hf_checkpoint):
    data = load_image_dataset(DataArguments(train_dir=str(tiny_image_folder)))
    config = data_config_from_processor(load_image_processor(str(tiny_hf_checkpoint)))
    train_t, eval_t = build_transforms(config, "rrc_flip")
    splits = {"train": data.dataset["train"], "validation": data.dataset["validation"]}
    return splits, config, train_t, eval_t


class Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def log_lines():
    handler = Lines()
    logger = logging.getLogger("hf_finetune")
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


def _free(monkeypatch, free: int, under: Path) -> list[Path]:
    """``shutil.disk_usage`` reports ``free`` bytes for paths under ``under`` (the real figures elsewhere);
    returns the paths under ``under`` it was asked."""
    asked: list[Path] = []
    real = shutil.disk_usage

    def usage(path):
        if not Path(path).is_relative_to(under):
            return real(path)
        asked.append(Path(path))
        return Usage(10 * free + 1, 9 * free + 1, free)

    monkeypatch.setattr(image_cache.shutil, "disk_usage", usage)
    return asked


def test_the_estimate_matches_the_cache_and_the_margin_decides(pipeline, tmp_path, monkeypatch, log_lines):
    splits, config, train_t, eval_t = pipeline
    estimate = image_cache.estimate_cache_bytes(splits, config, "rrc_flip", 0.25)
    # the tiny images (40x32) are below the side limit: kept whole for training; validation at the 32x32 crop
    pixels = 3 * (40 * 32 * len(splits["train"]) + 32 * 32 * len(splits["validation"]))
    assert pixels < estimate < pixels * 1.2
    needed = int(estimate * image_cache.SPACE_MARGIN) + image_cache.SPACE_RESERVE

    _free(
        monkeypatch, needed, tmp_path
    )  # just enough: the cache is written, and the estimate was not below it
    cache = image_cache.build_image_cache(
        splits, config, "rrc_flip", 0.25, 0.5, train_t, eval_t, tmp_path / "a"
    )
    assert cache is not None and cache.nbytes <= estimate * image_cache.SPACE_MARGIN
    assert cache.nbytes > pixels and not log_lines

    asked = _free(monkeypatch, needed - 1, tmp_path)  # one byte short: nothing written, one line saying why
    folder = tmp_path / "b" / "rank0"
    assert (
        image_cache.build_image_cache(splits, config, "rrc_flip", 0.25, 0.5, train_t, eval_t, folder) is None
    )
    assert not (tmp_path / "b").exists() and asked == [tmp_path]  # the nearest folder that exists
    assert len(log_lines) == 1 and SPACE_LINE in log_lines[0]
    assert (
        f"{needed / 2**20:.1f} MiB" in log_lines[0] and f"{(needed - 1) / 2**20:.1f} MiB free" in log_lines[0]
    )
    assert str(tmp_path) in log_lines[0]

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two processes of this machine write a cache each
    _free(monkeypatch, needed, tmp_path)
    assert not image_cache.cache_fits(estimate, folder)
    _free(monkeypatch, int(2 * estimate * image_cache.SPACE_MARGIN) + image_cache.SPACE_RESERVE, tmp_path)
    assert image_cache.cache_fits(estimate, folder)


def _spy(monkeypatch, fail: bool = False) -> list[tuple[Path, list[str]]]:
    """Wrap the run's ``build_image_cache``: record each cache's folder and files (and optionally fail the run
    right after the cache was written)."""
    built: list[tuple[Path, list[str]]] = []
    real = inputs.build_image_cache

    def spy(*args, **kwargs):
        cache = real(*args, **kwargs)
        if cache is not None:
            built.append((cache.folder, sorted(p.name for p in cache.folder.iterdir())))
        if fail:
            raise RuntimeError("stopped after caching")
        return cache

    monkeypatch.setattr(inputs, "build_image_cache", spy)
    return built


def _train(checkpoint, data_dir, out: Path, **extra):
    return finetune(
        ModelArguments(model_name_or_path=str(checkpoint)),
        DataArguments(train_dir=str(data_dir), image_size=32),
        FinetuneTrainingArguments(output_dir=str(out), **SETTINGS, **extra),
    )


def _cache_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.suffix == ".arrow" or p.name.startswith(image_cache.CACHE_DIR)]


def test_the_key_moves_the_cache_and_nothing_is_left(
    tiny_hf_checkpoint, tiny_image_folder, tmp_path, monkeypatch
):
    built = _spy(monkeypatch)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    out = tmp_path / "out"
    _train(tiny_hf_checkpoint, tiny_image_folder, out, image_cache_dir=str(scratch))
    [(folder, files)] = built
    assert folder.parent.parent == scratch and folder.name == "rank0"
    assert files == ["train.arrow", "validation.arrow"]
    assert out.is_dir() and (out / "model.safetensors").exists()
    assert _cache_files(out) == [] and list(scratch.iterdir()) == []  # removed at the end


def test_a_failed_run_removes_the_cache_at_the_key(
    tiny_hf_checkpoint, tiny_image_folder, tmp_path, monkeypatch
):
    built = _spy(monkeypatch, fail=True)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(RuntimeError, match="stopped after caching"):
        _train(tiny_hf_checkpoint, tiny_image_folder, tmp_path / "failed", image_cache_dir=str(scratch))
    assert len(built) == 1 and built[0][0].is_relative_to(scratch)
    assert list(scratch.iterdir()) == [] and not (tmp_path / "failed").exists()


def test_short_of_space_the_run_decodes_on_the_fly(
    tiny_hf_checkpoint, tiny_image_folder, tmp_path, monkeypatch, log_lines
):
    """The run's inputs fall back to the images decoded per batch (the run is stopped once they are built)."""
    built = _spy(monkeypatch)
    asked = _free(monkeypatch, 2**20, tmp_path)
    made = []

    def inputs_then_stop(*args, **kwargs):
        made.append(inputs.training_inputs(*args, **kwargs))
        raise RuntimeError("stopped after the inputs")

    monkeypatch.setattr(build, "training_inputs", inputs_then_stop)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="stopped after the inputs"):
        _train(tiny_hf_checkpoint, tiny_image_folder, out)
    assert built == [] and asked == [out]  # the default location: inside the output folder
    assert len([line for line in log_lines if SPACE_LINE in line]) == 1
    [made] = made
    assert made.image_cache is None and len(made.train_dataset) == 36
    first = made.train_dataset[0]
    assert tuple(first["pixel_values"].shape) == (3, 32, 32) and "pixels" not in first
    assert not out.exists()
