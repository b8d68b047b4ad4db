"""``search`` and ``lr-find`` run in one process; a launch of several is refused before anything is loaded.

Under several processes neither command can be right as it stands. ``search``: each rank would run an Optuna study
of its own, draw its own values for "the same" trial (the ranks of one training must agree on them) and write its
own ``trials.csv`` and ``best_recipe.yaml`` into the same folder. ``lr-find``: each rank would ramp its own copy of
the model on its own batches (no gradient is shared outside ``train``) and write the same plot. So ``train``'s
launch flags (``--accelerate_config``, ``--num_processes``, ...) are refused in one line naming the flag, and so
is a process started by a launcher (``accelerate launch``, ``torchrun``, ``mpirun``) among several
(:data:`WORLD_SIZE_ENV`). The best recipe of a search trains under any launch (``hf-finetune train
best_recipe.yaml --accelerate_config ...``). Nothing heavy is imported here.
"""

from __future__ import annotations

import os

from hf_finetune.errors import ConfigError

__all__ = [
    "LAUNCH_ONLY_FLAGS",
    "WORLD_SIZE_ENV",
    "WHY",
    "refuse_launch_flags",
    "refuse_several_processes",
    "world_size",
]

# train's flags that start or place several processes (hf_finetune.runtime.launch: ACCELERATE_CONFIG_FLAG,
# LAUNCH_FLAGS, RDZV_TIMEOUT_FLAG), spelled with underscores
LAUNCH_ONLY_FLAGS = (
    "--accelerate_config", "--num_processes", "--num_machines", "--machine_rank", "--main_process_ip",
    "--main_process_port", "--mixed_precision", "--rdzv_timeout",
)  # fmt: skip
# Where a launcher says how many processes the job has (torchrun and accelerate: WORLD_SIZE; MPI launchers)
WORLD_SIZE_ENV = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
WHY = {
    "search": "under several, each process would run an Optuna study of its own, with its own values for each "
    "trial, and write its own trials.csv and best_recipe.yaml",
    "lr-find": "under several, each process would ramp its own copy of the model on its own batches and write "
    "the same plot",
}
AFTER = {
    "search": "; train its best_recipe.yaml under any launch",
    "lr-find": "",
}


def world_size() -> int:
    """How many processes the launcher that started this one says the job has (1 without a launcher)."""
    for name in WORLD_SIZE_ENV:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return 1


def refuse_launch_flags(command: str, argv: list[str]) -> None:
    """A :class:`ConfigError` naming the first of ``train``'s launch flags (:data:`LAUNCH_ONLY_FLAGS`; ``--flag``,
    ``--flag=value``, ``--flag-name`` alike) in ``argv``: ``command`` runs in one process."""
    for arg in argv:
        flag = arg.partition("=")[0]
        if not flag.startswith("--"):
            continue
        flag = "--" + flag[2:].replace("-", "_")
        if flag in LAUNCH_ONLY_FLAGS:
            raise ConfigError(
                f"{flag}: {command} runs in one process ({WHY[command]}); expected no {flag}{AFTER[command]}"
            )


def refuse_several_processes(command: str) -> None:
    """A :class:`ConfigError` when this process is one of several started by a launcher (:func:`world_size`)."""
    size = world_size()
    if size > 1:
        rank = os.environ.get("RANK", os.environ.get("PMI_RANK", "?"))
        raise ConfigError(
            f"WORLD_SIZE {size}: {command} started as process {rank} of {size} (accelerate launch, torchrun or "
            f"mpirun); {command} runs in one process ({WHY[command]}); expected hf-finetune {command} started "
            f"alone, without a launcher{AFTER[command]}"
        )
