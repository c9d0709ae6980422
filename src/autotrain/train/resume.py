"""What a resume needs from the Trainer once the model is loaded (the checks before it: autotrain.outputs.resuming).

- `check_weights`: the checkpoint's tensors have the shapes of the model they are loaded into (another vocabulary,
  another width), checked from the safetensors header before anything is written to the project folder;
- `RatesFromSchedule`: after the checkpoint's optimizer and schedule load, their learning rates are those of the
  run being resumed. A resume that changes the schedule's peak or length (lr, warmup_ratio, epochs, max_steps)
  sets them from the new schedule at the resumed step: from there the rates are what a run with the new settings
  would use at those steps, the first resumed step included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from autotrain.errors import ParamsError
from autotrain.outputs.resuming import SCHEDULE
from autotrain.private import set_last_rates


def check_weights(model: torch.nn.Module, checkpoint: Path | None, peft: bool, name: str) -> None:
    """Refuse a checkpoint whose tensors do not fit `model` (`name`: how the user named it). Keys the model does not
    have are left to the loader (a family may save under other names than it holds)."""
    path = None if checkpoint is None else checkpoint / ("adapter_model.safetensors" if peft else "model.safetensors")
    if path is None or not path.is_file():
        return  # sharded, FSDP or DeepSpeed states: their loaders check them
    from safetensors import safe_open

    if peft:
        from peft import get_peft_model_state_dict

        expected = get_peft_model_state_dict(model)
    else:
        expected = model.state_dict()
    with safe_open(str(path), framework="pt") as saved:
        for key in saved.keys():
            want = expected.get(key)
            shape = list(saved.get_slice(key).get_shape())
            if want is not None and list(want.shape) != shape:
                raise ParamsError(
                    f"resume_from_checkpoint: {checkpoint} does not fit {name}: {key} has shape {shape} there, "
                    f"{list(want.shape)} in the model; resume it with the model (and LoRA settings) it was trained with"
                )


class RatesFromSchedule(TrainerCallback):
    """Sets the resumed optimizer's learning rates from this run's schedule at the resumed step.

    The checkpoint's scheduler state carries the old peak (`base_lrs`) and its optimizer state the old step's rate;
    transformers builds the schedule's shape from this run's arguments (steps, warmup). Schedules that are not a
    function of the step (reduce_lr_on_plateau) are left alone: a new lr is refused for them (autotrain.outputs.resuming)."""

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):  # noqa: D102
        scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate's wrapper, where there is one
        if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR) or optimizer is None:
            return control
        scheduler.base_lrs = [args.learning_rate for _ in optimizer.param_groups]
        for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["initial_lr"] = base
            group["lr"] = base * factor(scheduler.last_epoch)
        set_last_rates(scheduler, [group["lr"] for group in optimizer.param_groups])  # the rate logged for this step
        return control


def schedule_callbacks(changed: dict[str, Any]) -> list[TrainerCallback]:
    """[RatesFromSchedule()] when the resume changed the schedule (`changed`: autotrain.outputs.resuming.changed_since), else
    none: a resume with the same settings keeps the checkpoint's rates, bit for bit."""
    return [RatesFromSchedule()] if any(name in changed for name in SCHEDULE) else []
