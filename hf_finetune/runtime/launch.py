"""Running the same recipe under ``accelerate launch``: named hardware configs and process placement.

Hardware lives in accelerate config files (``recipes/accelerate_configs/*.yaml``), hyperparameters in
recipes. ``hf-finetune train RECIPE --accelerate_config NAME_OR_PATH`` is the same as::

    accelerate launch --config_file recipes/accelerate_configs/NAME.yaml -m hf_finetune train RECIPE

A multi-process launch on a machine where no GPU is visible trains on the CPU over gloo: without it, each
process would believe it is alone and train, evaluate and write the output folder by itself. FSDP there too
(:func:`enable_fsdp_on_cpu`: accelerate turns it on for GPU-like devices only), and DeepSpeed in fp32 over
gloo with DeepSpeed's CPU accelerator (``hf_finetune.config.arguments.deepspeed_backend_on_cpu``).

Several machines: the same command on each, with accelerate's placement flags (:data:`LAUNCH_FLAGS`:
``--machine_rank``, ``--num_machines``, ``--num_processes``, ``--main_process_ip``, ``--main_process_port``,
``--mixed_precision``) and ``--rdzv_timeout S``; only machine 0's launcher checks and locks the output folder
(:func:`main_machine`), and a machine that never joins ends the job in one line
(:mod:`hf_finetune.runtime.rendezvous`).
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from hf_finetune.errors import ConfigError, suggest

__all__ = [
    "ACCELERATE_CONFIG_FLAG",
    "accelerate_config_dirs",
    "available_accelerate_configs",
    "resolve_accelerate_config",
    "pop_accelerate_config",
    "LAUNCH_FLAGS",
    "MIXED_PRECISION",
    "RDZV_TIMEOUT_FLAG",
    "pop_launch_flags",
    "main_machine",
    "enable_fsdp_on_cpu",
    "fsdp_launch",
    "deepspeed_launch",
    "fsdp_ready",
    "launch_command",
    "launch",
    "use_cpu_when_no_gpu",
    "COMMAND_ENV",
]

ACCELERATE_CONFIG_FLAG = "--accelerate_config"
COMMAND_ENV = "HF_FINETUNE_COMMAND"  # the user's command line, for the "resume with: ..." hint of the ranks
# accelerate launch's flags that fill in a config (multi_node.yaml's variables), passed through: flag -> the
# smallest number it takes (None: not a number)
LAUNCH_FLAGS = {
    "--num_processes": 1,
    "--num_machines": 1,
    "--machine_rank": 0,
    "--main_process_ip": None,
    "--main_process_port": 1,
    "--mixed_precision": None,  # no, fp16, bf16: the template's bf16 is for GPUs
}
MIXED_PRECISION = ("no", "fp16", "bf16")
# seconds a machine waits for the others: torchrun's --rdzv_conf timeout=S
RDZV_TIMEOUT_FLAG = "--rdzv_timeout"


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


def _flag_value(flag: str, value: str) -> str:
    """``value`` checked for ``flag`` (a ConfigError naming both when it is not what accelerate expects)."""
    if flag == "--mixed_precision":
        if value not in MIXED_PRECISION:
            raise ConfigError(f"{flag}: expected one of {', '.join(MIXED_PRECISION)}, got {value!r}")
        return value
    if flag == "--main_process_ip":
        if not value.strip():
            raise ConfigError(f"{flag}: expected the main machine's address, got an empty value")
        return value
    smallest = 1 if flag == RDZV_TIMEOUT_FLAG else LAUNCH_FLAGS[flag]
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < smallest or (flag == "--main_process_port" and number > 65535):
        expected = "a port, 1-65535" if flag == "--main_process_port" else f"a whole number >= {smallest}"
        raise ConfigError(f"{flag}: expected {expected}, got {value!r}")
    return str(number)


def pop_launch_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    """Take accelerate launch's placement flags (:data:`LAUNCH_FLAGS`) and ``--rdzv_timeout S`` out of
    ``argv``: ``(flags, the rest)``, the flags as ``[--flag, value, ...]``. ``--flag VALUE``, ``--flag=VALUE``
    and ``--flag-name`` alike; a missing or bad value is a ConfigError naming the flag."""
    flags: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        flag, eq, inline = argv[i].partition("=")
        flag = flag.replace("-", "_").replace("__", "--", 1)
        if flag not in LAUNCH_FLAGS and flag != RDZV_TIMEOUT_FLAG:
            rest.append(argv[i])
            i += 1
            continue
        if eq:
            value = inline
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value = argv[i + 1]
            i += 1
        else:
            raise ConfigError(f"{flag}: expected a value after it")
        value = _flag_value(flag, value)
        flags += [flag, value]
        i += 1
    return flags, rest


def main_machine(config: Path, launch_flags: list[str]) -> bool:
    """True on the job's main machine (``machine_rank`` 0, from the flags or else the config): its launcher
    alone checks, locks and writes the output folder; the other machines' launchers only start their ranks."""
    if "--machine_rank" in launch_flags:
        return int(launch_flags[launch_flags.index("--machine_rank") + 1]) == 0
    return int(getattr(load_config_from_file(str(config)), "machine_rank", 0) or 0) == 0


def fsdp_launch() -> bool:
    """True in a rank of an ``accelerate launch`` with ``distributed_type: FSDP`` (its ``ACCELERATE_USE_FSDP``)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def deepspeed_launch() -> bool:
    """True in a rank of an ``accelerate launch`` with ``distributed_type: DEEPSPEED`` (``ACCELERATE_USE_DEEPSPEED``)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def enable_fsdp_on_cpu(accelerator) -> bool:
    """FSDP on a CPU launch (gloo), as accelerate does it on GPUs; True when it turned it on.

    ``accelerate launch`` with ``distributed_type: FSDP`` sets ``ACCELERATE_USE_FSDP`` for every rank, but
    accelerate 1.15's ``AcceleratorState`` switches to FSDP only for GPU-like devices (MULTI_GPU, XPU, NPU...):
    under ``MULTI_CPU`` the plugin is dropped and every rank would train a full DDP copy. This is the same
    switch for ``MULTI_CPU`` (torch's FSDP2 ``fully_shard`` runs on CPU over gloo); call it right after the
    Accelerator is made, before anything is prepared."""
    state = accelerator.state
    if (
        not fsdp_launch()
        or state.distributed_type != DistributedType.MULTI_CPU
        or getattr(state, "fsdp_plugin", None) is not None
    ):
        return False
    plugin = FullyShardedDataParallelPlugin()  # from the launch's FSDP_* variables, as accelerate does
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as accelerate's own switch does
    return True


def fsdp_ready(accelerator, model) -> bool:
    """Ready ``model`` for the Trainer's FSDP preparation; True when FSDP is on (on CPUs through
    :func:`enable_fsdp_on_cpu`). Call it right after the Accelerator is made.

    accelerate 1.15's ``fsdp2_prepare_model`` asks every model for its input embeddings (to shard them on
    their own), and transformers' image models (ResNet, ViT, TimmWrapper...) have none: they raise
    NotImplementedError. Such a model answers None instead (this instance only), as a model without them."""
    enable_fsdp_on_cpu(accelerator)
    if getattr(accelerator.state, "fsdp_plugin", None) is None:
        return False
    try:
        if model is not None:
            model.get_input_embeddings()
    except NotImplementedError:
        model.get_input_embeddings = lambda: None
    except AttributeError:  # not a transformers model: accelerate asks with a default
        pass
    return True


def launch_command(config: Path, train_argv: list[str], launch_flags: list[str] = ()) -> list[str]:
    """The ``accelerate launch`` command line that trains ``train_argv`` under ``config`` (with accelerate's
    ``launch_flags``, ``--rdzv_timeout S`` as torchrun's ``--rdzv_conf timeout=S``), through
    :mod:`hf_finetune.runtime.rendezvous` (a failed rendezvous in one line)."""
    placement: list[str] = []
    for flag, value in zip(launch_flags[::2], launch_flags[1::2], strict=True):
        placement += ["--rdzv_conf", f"timeout={value}"] if flag == RDZV_TIMEOUT_FLAG else [flag, value]
    return [
        sys.executable,
        "-m",
        "hf_finetune.runtime.rendezvous",
        "--config_file",
        str(config),
        *placement,
        "-m",
        "hf_finetune",
        "train",
        *train_argv,
    ]


def _free_port_flags(config: Path, launch_flags: list[str]) -> list[str]:
    """``--main_process_port P`` with a port free on this machine now, for a one-machine job whose flags and
    config name none (as torchrun's ``--standalone``): two jobs on one machine then do not both ask for
    accelerate's default port 29500. A job of several machines keeps the port its machines agreed on."""
    if "--main_process_port" in launch_flags:
        return []
    loaded = load_config_from_file(str(config))
    machines = (
        launch_flags[launch_flags.index("--num_machines") + 1] if "--num_machines" in launch_flags else None
    )
    if int(machines or getattr(loaded, "num_machines", 1) or 1) > 1 or getattr(
        loaded, "main_process_port", None
    ):
        return []
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return ["--main_process_port", str(probe.getsockname()[1])]


def _deepspeed_installed() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def _check_hardware(config: Path) -> None:
    """A DeepSpeed config is a ConfigError without the deepspeed package, and on a machine without a visible
    GPU unless it is an fp32 one (``mixed_precision: 'no'``, as deepspeed_zero2_cpu.yaml): DeepSpeed's CPU
    accelerator runs ZeRO over gloo in fp32; bf16 there is not proven."""
    loaded = load_config_from_file(str(config))
    if not str(getattr(loaded, "distributed_type", "")).endswith("DEEPSPEED"):
        return
    if not _deepspeed_installed():
        raise ConfigError(
            f"accelerate_config: {config} asks for DeepSpeed, and the deepspeed package is not installed; "
            "install it with pip install 'hf-finetune[deepspeed]'"
        )
    if torch.cuda.is_available() or str(getattr(loaded, "mixed_precision", "no")) == "no":
        return
    raise ConfigError(
        f"accelerate_config: {config} asks for DeepSpeed in {loaded.mixed_precision}, which needs a GPU, and "
        "none is visible here; on CPUs use deepspeed_zero2_cpu (DeepSpeed, fp32), fsdp_cpu (FSDP) or "
        "cpu_ddp (DDP)"
    )


def launch(
    config: Path, train_argv: list[str], accelerate_config: str | None = None, launch_flags: list[str] = ()
) -> int:
    """Run ``hf_finetune train`` under ``accelerate launch`` with ``config`` (a file, as
    :func:`resolve_accelerate_config` returns it); returns its exit status.

    The launched processes get a process group of their own, and SIGINT/SIGTERM sent to this process (or
    Ctrl-C in its terminal) reach each of them exactly once: every rank then finishes its step and writes
    the checkpoint (:mod:`hf_finetune.training.interrupt`), and this process waits for all of them to exit."""

    _check_hardware(config)
    command = launch_command(
        config, train_argv, [*launch_flags, *_free_port_flags(config, list(launch_flags))]
    )
    print(f"hf-finetune: accelerate launch --config_file {config} -m hf_finetune train ...", flush=True)
    env = dict(os.environ)
    env[COMMAND_ENV] = shlex.join(
        [
            "hf-finetune",
            "train",
            *train_argv,
            ACCELERATE_CONFIG_FLAG,
            accelerate_config or str(config),
            *launch_flags,
        ]
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
    if deepspeed_launch():  # accelerate drops DeepSpeed under use_cpu (gloo: config.arguments)
        return False
    if torch.cuda.is_available():
        return False
    if getattr(torch, "xpu", None) is not None and torch.xpu.is_available():
        return False
    os.environ["ACCELERATE_USE_CPU"] = "true"
    return True
