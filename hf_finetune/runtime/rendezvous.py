"""``accelerate launch`` whose rendezvous failure is one line, not a hang or a traceback.

``hf-finetune train RECIPE --accelerate_config NAME`` starts ``python -m hf_finetune.runtime.rendezvous
ACCELERATE-LAUNCH-ARGS``: accelerate's own launcher (its parser, its torchrun agent), run in this process so
that a rendezvous that fails is caught where it is raised. A machine of a several-machine job waits at most
the rendezvous timeout (``--rdzv_timeout S``, passed to torchrun as ``--rdzv_conf timeout=S``; torch's default
is 600 s) for the others: the main machine for the others to join (``DistStoreError: Timed out ... waiting for
clients``), another machine for the main one to answer (``DistNetworkError``). Either way the launcher prints
``hf-finetune: error: rendezvous at IP:PORT ...`` and exits 2. Anything else (a rank that fails) is
accelerate's own report, unchanged.
"""

from __future__ import annotations

import os
import sys

__all__ = ["rendezvous_message", "main"]

_CPP_LOG_LEVEL = "TORCH_CPP_LOG_LEVEL"


def rendezvous_message(args, err: BaseException) -> str:
    """The one line for a rendezvous that failed, from accelerate launch's parsed ``args``: the address and
    port, this machine's rank among how many, the timeout, and torch's own reason (its first line)."""
    address = f"{args.main_process_ip}:{args.main_process_port}"
    timeout = "600 (torch's default)"
    for item in str(getattr(args, "rdzv_conf", "") or "").split(","):
        key, _, value = item.partition("=")
        if key.strip() == "timeout" and value.strip():
            timeout = value.strip()
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
    rank, machines = args.machine_rank, args.num_machines
    waited = (
        "the other machines did not join" if rank == 0 else "the main machine (machine_rank 0) did not answer"
    )
    return (
        f"rendezvous at {address} failed: {waited} within {timeout} s (this is machine_rank {rank} of "
        f"{machines} machines; {type(err).__name__}: {reason}); start the same command on every machine with its "
        f"own --machine_rank 0..{machines - 1}, check that {address} is reachable from each of them, or wait "
        "longer with --rdzv_timeout SECONDS"
    )


def main(argv: list[str]) -> int:
    """Run ``accelerate launch ARGV``; 2 and one line on stderr when the rendezvous fails, else its status."""
    # c10d's C++ retry messages ("client socket has timed out ... retrying") are this process's own: its
    # workers read the variable afresh, so they get the user's setting back.
    saved = os.environ.get(_CPP_LOG_LEVEL)
    os.environ[_CPP_LOG_LEVEL] = "FATAL"
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed import DistError

    if saved is None:
        os.environ.pop(_CPP_LOG_LEVEL, None)
    else:
        os.environ[_CPP_LOG_LEVEL] = saved
    args = launch_command_parser().parse_args(argv)
    try:
        launch_command(args)
    except DistError as err:  # DistStoreError (nobody joined), DistNetworkError (nobody answered)
        print(f"hf-finetune: error: {rendezvous_message(args, err)}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
