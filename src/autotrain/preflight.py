"""What a run checks before it writes anything, shared by a run in this process (autotrain.project) and a launch
of several processes (autotrain.launch); and which process of a run this one is.

The checks, in the order a run takes them, each only as costly as it has to be:

1. the project folder (`autotrain.project_folder.resume_point`), under the folder's lock, before the data is read;
2. `check_inputs`: the data (files, splits, columns) and the models' files or hub ids, without importing torch or
   transformers (seconds), so the first error in the input comes in well under a second;
3. `check_device`: what the machine and the installed transformers support (optimizer and scheduler names, mixed
   precision, quantization); a launch adds `check_launch` (the backend against the machine, the process count).

`needs_launch` decides whether the run trains here or in launched processes.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from autotrain import methods
from autotrain.errors import ParamsError
from autotrain.params import DEFAULT_MODEL, LLMTrainingParams

logger = logging.getLogger("autotrain")

NUM_PROCESSES_ENV = "AITRAINING_NUM_PROCESSES"
CPU_PROCESSES = 2  # `--distributed-backend ddp` on a machine without CUDA, when AITRAINING_NUM_PROCESSES is unset
# Set by autotrain.launch for the processes it starts: the folder was checked and prepared by the parent.
LAUNCHED_ENV = "AITRAINING_LAUNCHED"

# Set in every process that a launcher (torchrun, accelerate launch, deepspeed, mpirun) started: such a process
# trains itself and never launches again. ACCELERATE_MIXED_PRECISION and ACCELERATE_DYNAMO_BACKEND are set by each
# of accelerate's launchers, also for a single process.
_LAUNCHED_MARKERS = (
    "WORLD_SIZE", "LOCAL_RANK", "RANK", "ACCELERATE_MIXED_PRECISION", "ACCELERATE_DYNAMO_BACKEND",
    "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", LAUNCHED_ENV,
)


def project_dir(params: LLMTrainingParams) -> Path:
    return Path(params.project_name).expanduser().resolve()


def check_inputs(params: LLMTrainingParams) -> Any:
    """Open the data (files, splits, columns) and check the models' files or hub ids; return the opened data
    (autotrain.data.prepare.OpenedData). Imports neither torch nor transformers."""
    from autotrain import model_files
    from autotrain.data import cache_store
    from autotrain.data.prepare import open_data

    if params.save_processed_data != "none":
        cache_store.max_bytes()  # the cache's size cap, from the environment
    opened = open_data(params, paired=methods.spec(params.trainer).paired)
    for name in (params.model, params.model_ref):
        if name is not None and name != DEFAULT_MODEL:  # the embedded default is checked when it is converted
            model_files.check(name)
    return opened


def check_device(params: LLMTrainingParams) -> None:
    """What the machine and the installed transformers must support, before the model loads."""
    import torch
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    # params checks the names against its own copy of transformers' lists; the installed version decides.
    if params.optimizer not in {o.value for o in OptimizerNames}:
        raise ParamsError(f"optimizer: '{params.optimizer}' is not an optimizer of the installed transformers")
    if params.scheduler not in {s.value for s in SchedulerType}:
        raise ParamsError(f"scheduler: '{params.scheduler}' is not a scheduler of the installed transformers")
    if params.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ParamsError("mixed_precision: fp16 needs a CUDA GPU; on CPU leave it unset (fp32)")
    if params.mixed_precision == "bf16" and torch.cuda.is_available() and not _bf16_accelerator():
        raise ParamsError("mixed_precision: bf16 needs an Ampere or newer GPU; use fp16 on this one")
    if bf16_on_cpu(params):
        # bf16 autocast on CPU is what a GPU run computes, so a GPU config can be tried on a laptop, only slower.
        if not torch.amp.is_autocast_available("cpu"):
            raise ParamsError("mixed_precision: bf16 needs a GPU or a torch with CPU autocast; leave it unset (fp32)")
        logger.warning("mixed_precision bf16 on CPU: training runs under CPU bf16 autocast, which is far slower than "
                       "fp32 on most CPUs")
    check_kernel_here(params.attention)
    if params.quantization is not None:
        if not torch.cuda.is_available():
            raise ParamsError(f"quantization: {params.quantization} (bitsandbytes) needs a CUDA GPU; on CPU leave it unset")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ParamsError(f"quantization: {params.quantization} needs bitsandbytes: pip install bitsandbytes")


def check_kernel_here(attention: str | None) -> None:
    """Refuse an attention kernel chosen by name that cannot train on this machine, before the model loads: torch's
    flex_attention has no backward on CPU or MPS (the first training step would raise), flash-attn runs on CUDA only
    and must be installed. Whether the model's class supports the kernel is autotrain.models.check_attention's."""
    import torch

    if attention not in ("flex_attention", "flash_attention_2", "flash_attention_3"):
        return
    gpu = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    if attention == "flex_attention" and not gpu:
        raise ParamsError("attn_implementation flex_attention: torch's flex_attention has no backward pass on CPU or "
                          "MPS, so it cannot train on this machine (no CUDA GPU is visible); choose sdpa or eager, or "
                          "leave --attn-implementation unset")
    if attention == "flex_attention":
        return
    if not torch.cuda.is_available():
        raise ParamsError(f"attn_implementation {attention}: flash-attn runs on CUDA GPUs only and none is visible; "
                          "choose sdpa or eager, or leave --attn-implementation unset")
    # transformers can also fetch the kernel from the hub through the `kernels` package: then it decides at load.
    module, package = (("flash_attn", "flash-attn") if attention == "flash_attention_2"
                       else ("flash_attn_interface", "flash-attn-3"))
    if importlib.util.find_spec(module) is None and importlib.util.find_spec("kernels") is None:
        raise ParamsError(f"attn_implementation {attention}: needs the {package} package, which is not installed; "
                          "install it, or choose sdpa, or leave --attn-implementation unset")


def _bf16_accelerator() -> bool:
    from transformers.utils import is_torch_bf16_gpu_available

    return bool(is_torch_bf16_gpu_available())


def bf16_on_cpu(params: LLMTrainingParams) -> bool:
    """bf16 asked for and no accelerator here that does it: the run trains on the CPU under bf16 autocast."""
    import torch

    return params.mixed_precision == "bf16" and not torch.cuda.is_available() and not _bf16_accelerator()


def cuda_devices() -> int:
    """The CUDA devices this process sees (CUDA_VISIBLE_DEVICES selects them)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def backend_of(params: LLMTrainingParams) -> str:
    """The backend a launch uses: the one asked for, else ddp (several GPUs)."""
    return params.distributed_backend or "ddp"


def check_launch(params: LLMTrainingParams) -> None:
    """What a launch needs besides `check_device`: the backend fits the machine, its packages are installed, and
    the number of processes is one this machine can run."""
    backend = backend_of(params)
    gpus = cuda_devices()
    # FSDP2 (fully_shard) runs on CPU processes joined by gloo, as ddp does; DeepSpeed needs CUDA.
    if backend == "deepspeed" and gpus == 0:
        raise ParamsError(
            f"distributed_backend: {backend} needs CUDA GPUs and none is visible; on CPU use --distributed-backend ddp"
        )
    if backend == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise ParamsError("distributed_backend: deepspeed needs the deepspeed package (pip install deepspeed)")
    if backend in ("fsdp", "deepspeed") and params.quantization is not None:
        raise ParamsError(
            f"quantization {params.quantization} is not supported with distributed_backend {backend}; use ddp"
        )
    num_processes(params)


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
    """Whether this process owns the project folder for its run: not a process that autotrain.launch started (its
    parent holds the lock), and only the first process (rank 0) of a run under torchrun, slurm or mpirun."""
    return not os.environ.get(LAUNCHED_ENV) and global_rank() == 0
