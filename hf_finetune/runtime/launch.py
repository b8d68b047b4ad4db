"""Running the same recipe under ``accelerate launch``: named hardware configs and process placement.

Hardware lives in accelerate config files (``recipes/accelerate_configs/*.yaml``), hyperparameters in
recipes. ``hf-finetune train RECIPE --accelerate_config NAME_OR_PATH`` is the same as::

    accelerate launch --config_file recipes/accelerate_configs/NAME.yaml -m hf_finetune train RECIPE

A multi-process launch on a machine where no GPU is visible trains on the CPU over gloo: without it, each
process would believe it is alone and train, evaluate and write the output folder by itself.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from accelerate.commands.config.config_args import load_config_from_file

from hf_finetune.errors import ConfigError, suggest

__all__ = [
    "ACCELERATE_CONFIG_FLAG",
    "accelerate_config_dirs",
    "available_accelerate_configs",
    "resolve_accelerate_config",
    "pop_accelerate_config",
    "launch_command",
    "launch",
    "use_cpu_when_no_gpu",
    "COMMAND_ENV",
]

ACCELERATE_CONFIG_FLAG = "--accelerate_config"
COMMAND_ENV = "HF_FINETUNE_COMMAND"  # the user's command line, for the "resume with: ..." hint of the ranks


def accelerate_config_dirs() -> list[Path]:
    """Where named configs are looked up: ``./recipes/accelerate_configs``, then the one beside the package."""
    here = Path.cwd() / "recipes" / "accelerate_configs"
    beside = Path(__file__).resolve().parents[2] / "recipes" / "accelerate_configs"
    dirs = [here] if here.is_dir() else []
    if beside.is_dir() and beside.resolve() not in {d.resolve() for d in dirs}:
        dirs.append(beside)
    return dirs


def available_accelerate_configs() -> dict[str, Path]:
    """Config name (file stem) -> path, first directory first."""
    found: dict[str, Path] = {}
    for directory in accelerate_config_dirs():
        for path in sorted(directory.glob("*.yaml")):
            found.setdefault(path.stem, path)
    return found


def resolve_accelerate_config(value: str) -> Path:
    """A config file for ``value``: an existing path, or a name from :func:`available_accelerate_configs`.

    Raises :class:`ConfigError` naming the available configs when ``value`` is neither, and when the file
    is not a config accelerate can read.
    """
    path = Path(value).expanduser()
    if not path.is_file():
        configs = available_accelerate_configs()
        name = path.name.removesuffix(".yaml")
        if len(path.parts) > 1 or name not in configs:  # a path that does not exist, or an unknown name
            names = ", ".join(configs) or "none found"
            raise ConfigError(
                f"accelerate_config: {value!r} is neither an existing file nor a known config name"
                f"{suggest(name, list(configs))}; available: {names}"
            )
        path = configs[name]

    try:
        load_config_from_file(str(path))
    except (ValueError, TypeError, KeyError, OSError) as err:
        raise ConfigError(f"accelerate_config: {path} is not a valid accelerate config: {err}") from None
    return path


def pop_accelerate_config(argv: list[str]) -> tuple[str | None, list[str]]:
    """Take ``--accelerate_config X`` / ``--accelerate-config=X`` out of ``argv``."""
    rest: list[str] = []
    value: str | None = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        flag, eq, inline = arg.partition("=")
        if flag in (ACCELERATE_CONFIG_FLAG, "--accelerate-config"):
            if eq:
                value = inline
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value = argv[i + 1]
                i += 1
            else:
                raise ConfigError("--accelerate_config: expected a config name (e.g. cpu_ddp) or a file path")
            i += 1
            continue
        rest.append(arg)
        i += 1
    return value, rest


def launch_command(config: Path, train_argv: list[str]) -> list[str]:
    """The ``accelerate launch`` command line that trains ``train_argv`` under ``config``."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config),
        "-m",
        "hf_finetune",
        "train",
        *train_argv,
    ]


def launch(config: Path, train_argv: list[str], accelerate_config: str | None = None) -> int:
    """Run ``hf_finetune train`` under ``accelerate launch`` with ``config`` (a file, as
    :func:`resolve_accelerate_config` returns it); returns its exit status.

    The launched processes get a process group of their own, and SIGINT/SIGTERM sent to this process (or
    Ctrl-C in its terminal) reach each of them exactly once: every rank then finishes its step and writes
    the checkpoint (:mod:`hf_finetune.training.interrupt`), and this process waits for all of them to exit."""

    command = launch_command(config, train_argv)
    print(f"hf-finetune: accelerate launch --config_file {config} -m hf_finetune train ...", flush=True)
    env = dict(os.environ)
    env[COMMAND_ENV] = shlex.join(
        ["hf-finetune", "train", *train_argv, ACCELERATE_CONFIG_FLAG, accelerate_config or str(config)]
    )
    process = subprocess.Popen(command, env=env, start_new_session=True)
    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            pass

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        returncode = process.wait()
        while received:  # the launcher may exit before the ranks have written their checkpoint
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        return 128 + received[0]
    if returncode < 0:  # killed by a signal
        return 128 - returncode
    return returncode


def use_cpu_when_no_gpu() -> bool:
    """In a multi-process launch where no GPU is visible, make the Trainer use CPU DDP (gloo).

    accelerate's MULTI_GPU launcher (torchrun) is the one that starts several local processes without MPI;
    on a CPU-only machine each process would otherwise initialise no process group and train alone.
    Returns True when it switched ``ACCELERATE_USE_CPU`` on.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or os.environ.get("ACCELERATE_USE_CPU"):
        return False

    if torch.cuda.is_available():
        return False
    if getattr(torch, "xpu", None) is not None and torch.xpu.is_available():
        return False
    os.environ["ACCELERATE_USE_CPU"] = "true"
    return True
