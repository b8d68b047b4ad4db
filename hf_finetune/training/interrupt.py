"""Stopping on SIGINT/SIGTERM without losing work: the step in flight finishes, a checkpoint is written, and
training ends with :class:`~hf_finetune.errors.TrainingInterrupted`, whose message says how to resume.

:class:`GracefulStop` is a ``TrainerCallback``; :meth:`GracefulStop.handling_signals` installs its signal
handlers for the duration of ``trainer.train()`` (the main thread only) and puts the previous ones back. A
repeated signal does not cut the checkpoint short: under ``accelerate launch`` torchrun forwards the
terminal's Ctrl-C to every process a second time. ``kill -9`` is what stops a run at once; the checkpoint
being written then is never mistaken for a complete one (:class:`hf_finetune.training.trainer.FinetuneTrainer`
writes it under a temporary name and renames it).

Under several processes the ranks agree before stopping (one all-reduce of a flag per step), so that every
rank stops after the same step and takes part in the same checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from hf_finetune.errors import FinalSaveInterrupted

__all__ = ["GracefulStop", "STOP_SIGNALS", "interrupting_final_save"]

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop(TrainerCallback):
    """Finish the current optimizer step, save a checkpoint and stop training when a stop signal arrived."""

    def __init__(self) -> None:
        self.signum: int | None = None  # the signal received, on this process
        self.stopped_at: int | None = None  # the step after which training stopped

    def request(self, signum: int = signal.SIGTERM) -> None:
        """Ask for a stop after the current step (what the signal handler does)."""
        if self.signum is None:
            self.signum = signum
            logger.warning(
                "%s received: finishing this step, then writing a checkpoint (kill -9 stops at once)",
                signal.Signals(signum).name,
            )
        else:
            logger.warning("%s received again: still writing the checkpoint", signal.Signals(signum).name)

    def _handler(self, signum, frame) -> None:
        self.request(signum)

    @contextlib.contextmanager
    def handling_signals(self) -> Iterator[GracefulStop]:
        """Install the handlers for SIGINT and SIGTERM while the block runs (no-op outside the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {signum: signal.signal(signum, self._handler) for signum in STOP_SIGNALS}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _agreed_signal(self) -> int | None:
        """The stop signal, agreed among all ranks: the largest signal number any rank received, or None."""

        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return self.signum
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        flag = torch.tensor([self.signum or 0], dtype=torch.int64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None

    def on_step_end(self, args, state, control, **kwargs):
        signum = self._agreed_signal()
        if signum is not None and not control.should_training_stop:
            self.signum = signum
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        # Stopped in the middle of an epoch: the checkpoint is written; an evaluation (and a second save) at
        # this point would add an entry the uninterrupted run does not have, and could change the best model.
        if self.stopped_at is not None and abs(state.epoch - round(state.epoch)) > 1e-6:
            control.should_evaluate = False
            control.should_save = False
        return control


@contextlib.contextmanager
def interrupting_final_save(max_steps: int, checkpoint: Callable[[], str | None]) -> Iterator[None]:
    """While the block (the final evaluation and save) runs, SIGINT or SIGTERM abandons it at once with
    :class:`~hf_finetune.errors.FinalSaveInterrupted`, which names ``checkpoint()`` (the newest checkpoint);
    a repeated signal is ignored while the caller cleans up. No-op outside the main thread."""

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        for other in STOP_SIGNALS:
            signal.signal(other, signal.SIG_IGN)
        raise FinalSaveInterrupted(signum, max_steps, checkpoint())

    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
