"""Which process this is and how many a run has: the launchers' markers, this process's rank, whether it owns the
project folder, how many processes a launch starts, and whether the weights are sharded across them. Standard library
only (torch is imported only to count CUDA devices)."""

from __future__ import annotations

import os
from typing import Any

from autotrain.errors import ParamsError
from autotrain.params import LLMTrainingParams

NUM_PROCESSES_ENV = "AITRAINING_NUM_PROCESSES"


CPU_PROCESSES = 2  # `--distributed-backend ddp` on a machine without CUDA, when AITRAINING_NUM_PROCESSES is unset


# Set by autotrain.run.launch for the processes it starts: the folder was checked and prepared by the parent.
LAUNCHED_ENV = "AITRAINING_LAUNCHED"


# Set in every process that a launcher (torchrun, accelerate launch, deepspeed, mpirun) started: such a process
# trains itself and never launches again. ACCELERATE_MIXED_PRECISION and ACCELERATE_DYNAMO_BACKEND are set by each
# of accelerate's launchers, also for a single process.
_LAUNCHED_MARKERS = (
    "WORLD_SIZE", "LOCAL_RANK", "RANK", "ACCELERATE_MIXED_PRECISION", "ACCELERATE_DYNAMO_BACKEND",
    "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", LAUNCHED_ENV,
)


def cuda_devices() -> int:
    """The CUDA devices this process sees (CUDA_VISIBLE_DEVICES selects them)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def backend_of(params: LLMTrainingParams) -> str:
    """The backend a launch uses: the one asked for, else ddp (several GPUs)."""
    return params.distributed_backend or "ddp"


def num_processes(params: LLMTrainingParams) -> int:
    """The visible CUDA devices; AITRAINING_NUM_PROCESSES overrides; without CUDA (ddp only) 2 by default."""
    gpus = cuda_devices()
    text = os.environ.get(NUM_PROCESSES_ENV, "").strip()
    if text:
        if not text.isdigit() or int(text) < 1:
            raise ParamsError(f"{NUM_PROCESSES_ENV}={text!r}: must be a whole number of processes, at least 1")
        count = int(text)
        if gpus and count > gpus:
            raise ParamsError(f"{NUM_PROCESSES_ENV}={count}, but only {gpus} CUDA devices are visible")
        return count
    return gpus if gpus else CPU_PROCESSES


def sharded_weights() -> bool:
    """Whether this process will hold only a shard of the weights (a launch with FSDP, or DeepSpeed ZeRO-3, as
    accelerate's launcher tells its processes): then every process must take part in any forward pass, generate's
    included, or the one that runs alone waits forever for the others' shards."""
    flag = lambda name: os.environ.get(name, "false").lower() == "true"  # noqa: E731
    zero3 = flag("ACCELERATE_USE_DEEPSPEED") and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3"
    return flag("ACCELERATE_USE_FSDP") or zero3


def needs_launch(params: LLMTrainingParams) -> bool:
    """Whether create() must start processes: a backend was asked for, or more than one GPU is visible."""
    if inside_launched_process():
        return False
    if params.distributed_backend is not None:
        return True
    return cuda_devices() > 1


def inside_launched_process() -> bool:
    """True in a process that a launcher started (see _LAUNCHED_MARKERS)."""
    return any(os.environ.get(name) for name in _LAUNCHED_MARKERS)


def global_rank() -> int:
    """This process's rank in its run (0 when no launcher says otherwise: torchrun, mpirun, slurm via either)."""
    text = os.environ.get("RANK") or os.environ.get("OMPI_COMM_WORLD_RANK") or os.environ.get("PMI_RANK") or "0"
    return int(text) if text.strip().isdigit() else 0


def takes_lock() -> bool:
    """Whether this process owns the project folder for its run: not a process that autotrain.run.launch started (its
    parent holds the lock), and only the first process (rank 0) of a run under torchrun, slurm or mpirun."""
    return not os.environ.get(LAUNCHED_ENV) and global_rank() == 0


def process_state(params: LLMTrainingParams) -> Any:
    """accelerate's PartialState, first built here so that the process group gets the run's ddp_timeout (a later
    TrainingArguments cannot change the state once it exists). PartialState does not read ACCELERATE_USE_CPU
    (AcceleratorState does): without `cpu`, processes launched on CPUs would each build a one-process state, each
    be "the main process" and write the project's files at once."""
    from datetime import timedelta

    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"), timeout=timedelta(seconds=params.ddp_timeout))
