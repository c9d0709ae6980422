"""The accelerate config of a launch, built from the params: `<project>/accelerate_config.yaml`.

autotrain.launch writes it before it starts the processes; a user copies it to launch on several machines (README,
"Scale out"). Keys are those accelerate 1.x's ClusterConfig reads; tests check each backend's config against
accelerate's own loader, launcher and plugins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autotrain import preflight
from autotrain.params import LLMTrainingParams


def accelerate_config(params: LLMTrainingParams, num_processes: int) -> dict[str, Any]:
    """The content of `<project>/accelerate_config.yaml` (keys as accelerate 1.x's ClusterConfig reads them).

    - ddp: MULTI_GPU, accelerate's torchrun launcher. Without CUDA it is the same launcher with `use_cpu`: the
      processes join with gloo (launch() also sets ACCELERATE_USE_CPU for them). accelerate's MULTI_CPU type would
      start a single process unless it is run under mpirun.
    - fsdp: FSDP (version 1), full sharding, wrapping each transformer block (the model's `_no_split_modules`),
      `use_orig_params` (LoRA: frozen and trainable weights in one flat parameter) and FULL_STATE_DICT, so that
      saving gathers the full weights on the main process. Gradient (activation) checkpointing stays with the
      trainer (`--disable-gradient-checkpointing`), not FSDP's own.
    - deepspeed: ZeRO stage `deepspeed_stage` (2 or 3) without offload; gradient accumulation and clipping are the
      params' (transformers refuses a DeepSpeed config that disagrees with its own arguments). Stage 3 gathers
      16-bit weights when saving.

    One machine (`num_machines: 1`, `machine_rank: 0`) and a free port (`main_process_port: 0`); for several
    machines edit `num_machines`, `num_processes` (the total), `machine_rank`, `main_process_ip` and
    `main_process_port` (see the README, "Scale out").
    """
    backend = preflight.backend_of(params)
    cpu = preflight.cuda_devices() == 0
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed": "DEEPSPEED"}[backend],
        "num_processes": num_processes,
        "num_machines": 1,
        "machine_rank": 0,
        "main_process_port": 0,
        "rdzv_backend": "static",
        "same_network": True,
        "gpu_ids": "all",
        "mixed_precision": params.mixed_precision or "no",
        "use_cpu": cpu,
        "debug": False,
        "downcast_bf16": "no",
    }
    if backend == "fsdp":
        config["fsdp_config"] = {
            "fsdp_version": 1,
            "fsdp_sharding_strategy": "FULL_SHARD",
            "fsdp_reshard_after_forward": "FULL_SHARD",
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_backward_prefetch": "BACKWARD_PRE",
            "fsdp_forward_prefetch": False,
            "fsdp_state_dict_type": "FULL_STATE_DICT",
            "fsdp_use_orig_params": True,
            "fsdp_offload_params": False,
            "fsdp_cpu_ram_efficient_loading": False,
            "fsdp_sync_module_states": True,
            "fsdp_activation_checkpointing": False,
        }
    if backend == "deepspeed":
        stage = params.deepspeed_stage
        config["deepspeed_config"] = {
            "zero_stage": stage,
            "offload_optimizer_device": "none",
            "offload_param_device": "none",
            "gradient_accumulation_steps": params.gradient_accumulation,
            "gradient_clipping": params.max_grad_norm,
            "zero3_init_flag": False,
            **({"zero3_save_16bit_model": True} if stage == 3 else {}),
        }
    return config


_CONFIG_HEADER = """\
# accelerate config written by aitraining from {params}.
# Single machine. For N machines, copy this file and the data to each machine, set num_machines: N,
# num_processes: the total over all machines, machine_rank: 0..N-1, main_process_ip: the rank-0 machine's
# address, main_process_port: a free port there, and run on each machine:
#   accelerate launch --config_file THIS_FILE -m autotrain.trainers.clm --training_config {params}
"""

_CPU_NOTE = """\
# distributed_type MULTI_GPU + use_cpu: accelerate's torchrun launcher with CPU processes joined by gloo
# (set ACCELERATE_USE_CPU=true when launching it yourself; python -m autotrain.trainers.clm does it when no GPU is
# visible). MULTI_CPU would start one process unless run under mpirun.
"""


def write_accelerate_config(config: dict[str, Any], path: Path, params_file: Path) -> None:
    import yaml

    header = _CONFIG_HEADER.format(params=params_file)
    if config.get("use_cpu") and config["distributed_type"] == "MULTI_GPU":
        header += _CPU_NOTE
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
