"""A streamed training split in the Trainer: its loader, its epochs and its position in each checkpoint.

* The loader (:func:`stream_train_dataloader`): the rank's own stream (:mod:`hf_finetune.data.stream_dataset`, split
  by ``datasets.distributed.split_dataset_by_node``) must reach the model as it is. ``accelerator.prepare`` would
  split it a second time whatever the ``accelerator_config``: a ``datasets.IterableDataset`` is re-sharded
  (``.shard(num_processes, process_index)``), any other ``IterableDataset`` wrapped in ``IterableDatasetShard``
  (each rank keeps its slice of every batch), and ``dispatch_batches`` has rank 0 read for everyone. So the loader
  goes through accelerate's ``prepare_data_loader`` with ``num_processes=1`` (device placement and the
  end-of-data signal for gradient accumulation only), and ``dispatch_batches``/``split_batches`` are off
  (:func:`stream_accelerator_config`).
* Epochs (:class:`StreamStateCallback`): ``set_epoch`` at the start of each epoch (a new seeded shard order and
  shuffle buffer; the same on every rank).
* Position: each checkpoint holds ``stream_state.json``: the epoch, how many examples this rank's stream had
  given to the steps taken in it, and the geometry that count depends on (processes, batch, accumulation, seed,
  buffer). ``datasets``' own ``IterableDataset.state_dict()`` is not used: it does not hold the shuffle
  buffer's content, so a resume from it would drop the examples that were in the buffer. Instead ``--resume``
  replays the epoch's seeded order and skips that many raw examples without decoding them; the Trainer's own
  fast-forward, which would decode and drop whole batches, is off (``ignore_data_skip``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

from accelerate.data_loader import prepare_data_loader
from torch.utils.data import DataLoader
from transformers import TrainerCallback

from hf_finetune.errors import DataError

__all__ = [
    "STATE_FILE",
    "StreamStateCallback",
    "is_rank_stream",
    "stream_accelerator_config",
    "stream_position",
    "stream_train_dataloader",
]

logger = logging.getLogger("hf_finetune")

STATE_FILE = "stream_state.json"


def is_rank_stream(dataset) -> bool:
    """Whether ``dataset`` is a rank's own stream (:class:`hf_finetune.data.stream_dataset.RankStream`)."""
    return bool(getattr(dataset, "own_rank_stream", False))


def stream_accelerator_config(config):
    """The ``accelerator_config`` (transformers' ``AcceleratorConfig``) of a streamed run, a copy with
    ``dispatch_batches`` and ``split_batches`` off: each rank reads its own stream; nothing is sent from rank 0
    or cut out of a batch."""
    return dataclasses.replace(config, dispatch_batches=False, split_batches=False)


def stream_train_dataloader(trainer) -> DataLoader:
    """The training loader of a rank's stream: batches of ``per_device_train_batch_size``, put on the device by
    accelerate, never split again (see the module doc). Decoding runs in the stream's threads."""
    args = trainer.args
    loader = DataLoader(
        trainer.train_dataset,
        batch_size=args.per_device_train_batch_size,
        collate_fn=trainer.data_collator,
        num_workers=0,
        pin_memory=bool(args.dataloader_pin_memory),
    )
    return prepare_data_loader(
        loader,
        device=args.device,
        num_processes=1,
        process_index=0,
        split_batches=False,
        put_on_device=True,
        dispatch_batches=False,
        even_batches=False,
        use_seedable_sampler=False,
    )


def stream_position(global_step: int, length: int | None, batch: int, accumulation: int) -> tuple[int, int]:
    """(epoch, examples of this rank's stream given to the steps of that epoch) after ``global_step`` optimizer
    steps, by the Trainer's own count of steps per epoch; an unsized stream is one endless epoch."""
    batches_done = global_step * accumulation
    if length is None:
        return 0, batches_done * batch
    batches = math.ceil(length / batch)
    per_epoch = max(batches // accumulation + int(batches % accumulation > 0), 1)
    epoch, steps = divmod(global_step, per_epoch)
    return epoch, min(length, steps * accumulation * batch)


class StreamStateCallback(TrainerCallback):
    """``set_epoch`` each epoch, ``stream_state.json`` in each checkpoint, and the position restored on
    ``--resume`` (see the module doc)."""

    def __init__(self, stream, seed: int, buffer_size: int):
        self.stream = stream
        self.seed = seed
        self.buffer_size = buffer_size
        self.epoch = 0  # the epoch the next on_epoch_begin starts

    def _geometry(self, args) -> dict:
        return {
            "world_size": int(args.world_size),
            "per_device_train_batch_size": int(args.per_device_train_batch_size),
            "gradient_accumulation_steps": int(args.gradient_accumulation_steps),
            "seed": int(self.seed),
            "shuffle_buffer_size": int(self.buffer_size),
            "examples_per_epoch": self.stream.length,
        }

    def _position(self, args, global_step: int) -> tuple[int, int]:
        return stream_position(
            global_step,
            self.stream.length,
            args.per_device_train_batch_size,
            args.gradient_accumulation_steps,
        )

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.stream.set_epoch(self.epoch if self.stream.length is not None else 0)

    def on_epoch_end(self, args, state, control, **kwargs):
        self.epoch += 1

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:
            return
        epoch, examples = self._position(args, state.global_step)
        saved = Path(args.output_dir) / f"checkpoint-{state.global_step}" / STATE_FILE
        if saved.is_file():
            record = json.loads(saved.read_text(encoding="utf-8"))
            changed = {k: (v, record.get(k)) for k, v in self._geometry(args).items() if record.get(k) != v}
            if changed:
                what = ", ".join(f"{k} {old} then, {new} now" for k, (new, old) in changed.items())
                raise DataError(
                    f"--resume: {saved} was saved with other stream settings ({what}); resume with the same ones "
                    "so that the stream continues where it stopped"
                )
            epoch, examples = int(record["epoch"]), int(record["examples_into_epoch"])
        else:
            logger.warning(
                "--resume: %s not found; the stream position is computed from the step count", saved
            )
        self.epoch = epoch
        self.stream.set_epoch(epoch)
        self.stream.resume_at(examples)
        logger.info("streaming: resuming epoch %d, %d examples into this process's stream", epoch, examples)

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        epoch, examples = self._position(args, state.global_step)
        record = {"global_step": state.global_step, "epoch": epoch, "examples_into_epoch": examples}
        if folder.is_dir():
            text = json.dumps({**record, **self._geometry(args)}, indent=2) + "\n"
            (folder / STATE_FILE).write_text(text, encoding="utf-8")
