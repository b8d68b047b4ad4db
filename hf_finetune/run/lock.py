"""One run per output folder: an exclusive lock, held for the whole run.

The lock is ``OUTPUT/.hf-finetune.lock``, a file holding the pid, host and start time of the run that holds it,
locked with ``flock`` (released by the kernel when that process ends, even under ``kill -9``). A second run
into the same folder stops at once with one line naming the holder. A lock file left by a process that is gone
(killed, crashed machine) is stale: the next run says so, naming the dead holder, and takes it over.

``hf-finetune train --accelerate_config ...`` takes the lock in the launching process and tells its ranks so
through :data:`LOCK_ENV`; on several machines only machine 0's launcher does (``--machine_rank 0``,
:func:`hf_finetune.runtime.launch.main_machine`): the others start their ranks, whose global ``RANK`` is not 0,
without it. Under a bare ``accelerate launch`` the global rank-0 process takes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from hf_finetune.errors import ConfigError

__all__ = ["LOCK_NAME", "LOCK_ENV", "output_lock", "lock_delegated", "read_lock", "check_unlocked"]

LOCK_NAME = ".hf-finetune.lock"
LOCK_ENV = "HF_FINETUNE_OUTPUT_LOCK"  # the output folder whose lock the launching process holds for its ranks

logger = logging.getLogger("hf_finetune")


def lock_delegated(output_dir: str | Path) -> bool:
    """True when this process need not take the lock: the launching process holds it (:data:`LOCK_ENV`), or
    this is a rank other than global rank 0 (another machine's ranks included) of a launch whose launcher did
    not lock for it."""
    held = os.environ.get(LOCK_ENV)
    if held:
        return held == str(Path(output_dir).resolve())
    return os.environ.get("RANK", "0") != "0"


def read_lock(path: str | Path) -> dict:
    """The holder recorded in a lock file (``{}`` when it is empty or unreadable)."""
    try:
        holder = json.loads(Path(path).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    if not holder:
        return "a process that recorded no pid"
    return f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('started')}"


def _locked_fd(path: Path) -> int:
    """An open descriptor of ``path`` holding its exclusive lock; ConfigError when another process holds it."""
    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                f"output_dir: {path.parent} is in use by another run ({_describe(read_lock(path))}; lock file "
                f"{path}); wait for that run to end, or train into another folder with --output_dir NEW"
            ) from None
        try:  # the holder may have removed the file between our open and our lock: lock the current one
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
    raise ConfigError(f"output_dir: could not lock {path}: it keeps being replaced by another process")


def check_unlocked(output_dir: str | Path, key: str = "output_dir") -> None:
    """A :class:`ConfigError` naming the holder when a run holds the lock of ``output_dir`` (it is writing
    there: ``hf-finetune push`` would upload a folder half old, half new)."""
    path = Path(output_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file: no run there
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(
            f"{key}: {Path(output_dir)} is being written by a run ({_describe(read_lock(path))}; lock file "
            f"{path}); wait until that run has finished"
        ) from None
    finally:
        os.close(fd)  # releases the shared lock taken to look


@contextlib.contextmanager
def output_lock(output_dir: str | Path) -> Iterator[Path]:
    """Hold the lock of ``output_dir`` (created if missing) while the block runs; yields the lock file."""
    out = Path(output_dir)
    path = out / LOCK_NAME
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = _locked_fd(path)
    except OSError as err:  # a read-only folder, a full disk
        raise ConfigError(
            f"output_dir: cannot create the lock file {path} ({type(err).__name__}: {err.strerror or err}); "
            "expected a folder this process may write into"
        ) from None
    try:
        stale = read_lock(path)
        if stale:  # the file outlived its process: that run was killed or its machine went down
            logger.warning(
                "output_dir: %s: stale lock left by %s (that run ended without releasing it: killed?); taking it over",
                out,
                _describe(stale),
            )
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still locked: nobody can take a lock on this file in between
        os.close(fd)
