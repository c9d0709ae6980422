"""The params mapped onto transformers' TrainingArguments: each field that the loop owns goes here."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from autotrain import preflight
from autotrain.params import LLMTrainingParams


def training_arguments(params: LLMTrainingParams, project: Path, train_pairs: int, has_valid: bool) -> Any:
    """Map the params onto transformers' TrainingArguments: each field that the loop owns goes here."""
    from transformers import TrainingArguments

    steps_per_epoch = math.ceil(math.ceil(train_pairs / params.batch_size) / params.gradient_accumulation)
    total = params.max_steps if params.max_steps > 0 else steps_per_epoch * params.epochs
    logging_steps = params.logging_steps if params.logging_steps > 0 else max(1, min(25, total // 20))
    report_to = [] if params.log == "none" else [params.log]
    return TrainingArguments(
        output_dir=str(project),
        num_train_epochs=params.epochs,
        max_steps=params.max_steps,
        per_device_train_batch_size=params.batch_size,
        per_device_eval_batch_size=params.batch_size,
        learning_rate=params.lr,
        gradient_accumulation_steps=params.gradient_accumulation,
        warmup_steps=params.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        optim=params.optimizer,
        # GaLore and APOLLO project the gradients of named modules, and no flag names them: every linear layer.
        optim_target_modules="all-linear" if params.optimizer in preflight.LOW_RANK_OPTIMIZERS else None,
        lr_scheduler_type=params.scheduler,
        lr_scheduler_kwargs={} if params.min_lr_rate is None else {"min_lr_rate": params.min_lr_rate},
        weight_decay=params.weight_decay,
        max_grad_norm=params.max_grad_norm,
        seed=params.seed,
        data_seed=params.seed,
        bf16=params.mixed_precision == "bf16",
        fp16=params.mixed_precision == "fp16",
        # transformers refuses bf16 without a GPU unless told to train on the CPU (under bf16 autocast).
        use_cpu=preflight.bf16_on_cpu(params),
        **_checkpointing_args(TrainingArguments, not params.disable_gradient_checkpointing),
        logging_strategy="steps",
        logging_steps=logging_steps,
        eval_strategy=params.eval_strategy if has_valid else "no",
        eval_steps=params.eval_steps if params.eval_strategy == "steps" else None,
        eval_on_start=has_valid,
        save_strategy=params.save_every,
        save_steps=params.save_steps if params.save_steps > 0 else 500,
        auto_find_batch_size=params.auto_find_batch_size,  # halves the batch on OOM (accelerate)
        ddp_timeout=params.ddp_timeout,
        logging_nan_inf_filter=False,  # a NaN must show, not be replaced by an average (and it costs a sync)
        save_total_limit=params.save_total_limit,
        report_to=report_to,
        run_name=Path(params.project_name).name,
        remove_unused_columns=False,  # the collator reads prompt_ids/chosen_ids/rejected_ids
        dataloader_pin_memory=False,
        disable_tqdm=True,  # autotrain.progress.Progress shows step/total, loss, tokens/s and ETA instead
    )


def _checkpointing_args(arguments_class: Any, enabled: bool) -> dict[str, Any]:
    """transformers 5.x renamed gradient_checkpointing to activation_checkpointing; use whichever exists."""
    fields = arguments_class.__dataclass_fields__
    name = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    # Non-reentrant checkpointing needs no input grads, so it works with frozen embeddings under LoRA.
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False}}
