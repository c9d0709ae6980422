"""The accelerate config of a launch, built from the params: `<project>/accelerate_config.yaml`.

autotrain.run.launch writes it before it starts the processes; a user copies it to launch on several machines
(docs/scale-out.md). Keys are those accelerate 1.x's ClusterConfig reads; tests check each backend's config against
accelerate's own loader, launcher and plugins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autotrain.params import LLMTrainingParams
from autotrain.run import processes


def accelerate_config(params: LLMTrainingParams, num_processes: int) -> dict[str, Any]:
    """The content of `<project>/accelerate_config.yaml` (keys as accelerate 1.x's ClusterConfig reads them).

    - ddp: MULTI_GPU, accelerate's torchrun launcher. Without CUDA it is the same launcher with `use_cpu`: the
      processes join with gloo (launch() also sets ACCELERATE_USE_CPU for them). accelerate's MULTI_CPU type would
      start a single process unless it is run under mpirun.
    - fsdp: FSDP2 (`fully_shard`, accelerate's `fsdp_version: 2`), each transformer block (the model's
      `_no_split_modules`) its own unit, resharded after its forward (ZeRO-3-like), FULL_STATE_DICT so that saving
      gathers the full weights on the main process. Not FSDP1: its root backward hook hangs on the returned logits,
      which this tool's loss (computed in a forward hook on the decoder, autotrain.train.trainer) never uses,
      so a full fine-tune fails in its first backward and a LoRA run is left mid-backward (saving fails). FSDP2
      shards per parameter, so frozen and trainable weights (LoRA) share a unit with no `use_orig_params` (FSDP1's
      setting for that; FSDP2 has none). It runs on CPU processes joined by gloo too. Gradient (activation)
      checkpointing stays with the trainer (`--disable-gradient-checkpointing`), not FSDP's own.
    - deepspeed: ZeRO stage `deepspeed_stage` (2 or 3) without offload; gradient accumulation and clipping are the
      params' (transformers refuses a DeepSpeed config that disagrees with its own arguments). Stage 3 gathers
      16-bit weights when saving and sets `zero3_init_flag`, so that each process loads only its shard of the
      weights (transformers partitions them while loading, once TrainingArguments have announced ZeRO-3:
      autotrain.project builds them before it loads the model).

    One machine (`num_machines: 1`, `machine_rank: 0`) and a free port (`main_process_port: 0`); for several
    machines edit `num_machines`, `num_processes` (the total), `machine_rank`, `main_process_ip` and
    `main_process_port` (see docs/scale-out.md).
    """
    backend = processes.backend_of(params)
    cpu = processes.cuda_devices() == 0
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
            "fsdp_version": 2,
            "fsdp_reshard_after_forward": True,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_state_dict_type": "FULL_STATE_DICT",
            "fsdp_offload_params": False,
            "fsdp_cpu_ram_efficient_loading": False,
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
            "zero3_init_flag": stage == 3,
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
