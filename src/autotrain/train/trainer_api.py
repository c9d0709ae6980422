"""The few transformers.Trainer members this loop relies on that are not documented hooks, checked at start-up
(`check_trainer_api`), so an upgrade that renames one fails loudly instead of quietly changing the objective. The
step guard is autotrain.train.guards, the head check autotrain.train.head_check; the private members reached outside
the Trainer, autotrain.private."""

from __future__ import annotations

import inspect
from typing import Any

import torch

# Trainer members the loop overrides or calls that are not documented hooks, with their leading parameters.
TRAINER_MEMBERS: dict[str, list[str]] = {
    "_clip_grad_norm": ["self", "model"],
    "_prepare_inputs": ["self", "inputs"],
    "get_batch_samples": ["self", "epoch_iterator", "num_batches"],
    "_get_output_dir": ["self", "trial"],
    "_save_checkpoint": ["self", "model", "trial"],
    "_issue_warnings_after_load": ["self", "load_result"],
}


def check_trainer_api(trainer_class: type) -> None:
    """Fail at start-up if a Trainer member this loop relies on (beyond the documented hooks) is gone or changed.

    - `_clip_grad_norm(model)`: returns the step's gradient norm before the optimizer steps; the non-finite guard
      runs there (no public hook sees the norm before the step).
    - `_prepare_inputs(inputs)`: moves a batch to the device, for the evaluation and reference passes.
    - `get_batch_samples(epoch_iterator, num_batches, ...)`: its second result reaches compute_loss as
      num_items_in_batch; it carries the step's token and pair counts here.
    - `_save_checkpoint(model, trial)`, which must find its folder through `_get_output_dir(trial)`: a checkpoint is
      written under a staging folder and published by rename (autotrain.outputs.checkpoints), so a half-written one is
      never taken for a checkpoint (no public hook runs around the whole save).
    - `_issue_warnings_after_load(load_result)`: the tied weight a checkpoint stores once is not reported missing.
    - The loss returned by compute_loss must reach backward undivided by the accumulation steps: declared by the
      `loss_is_scaled_for_ga` class attribute (transformers >= 5.19); before it, training_step divides unless
      `model_accepts_loss_kwargs` is set and num_items_in_batch is given (both are, here). A run-time check of the
      first accumulated step backs this up (MethodTrainer.training_step).
    """
    for name, parameters in TRAINER_MEMBERS.items():
        member = getattr(trainer_class, name, None)
        found = list(inspect.signature(member).parameters)[: len(parameters)] if callable(member) else None
        if found != parameters:
            raise RuntimeError(
                f"transformers.Trainer.{name} is not what this version of aitraining was written for (expected "
                f"parameters {parameters}, found {found}); install a transformers version between 5.17 and 5.24"
            )
    if "_get_output_dir" not in _source(trainer_class._save_checkpoint, "_get_output_dir"):
        raise RuntimeError(
            "transformers.Trainer._save_checkpoint no longer finds its folder through _get_output_dir, so checkpoints "
            "would not be staged; install a transformers version between 5.17 and 5.24"
        )
    if "loss_is_scaled_for_ga" in _class_attributes(trainer_class):
        return
    source = _source(trainer_class.training_step, "model_accepts_loss_kwargs num_items_in_batch")
    if "model_accepts_loss_kwargs" not in source or "num_items_in_batch" not in source:
        raise RuntimeError(
            "transformers.Trainer.training_step has neither loss_is_scaled_for_ga nor the model_accepts_loss_kwargs "
            "rule, so the gradient-accumulation scaling cannot be controlled; install transformers 5.17 to 5.24"
        )


def _source(function: Any, assumed: str) -> str:
    """The function's source; `assumed` (the words looked for) where there is none to read (a compiled build): the
    run-time checks still apply then."""
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        return assumed


def check_undivided(backward_loss: torch.Tensor, returned_loss: torch.Tensor) -> None:
    """The loss training_step backpropagated (and returned) must be compute_loss's, undivided."""
    if not torch.equal(backward_loss, returned_loss):
        raise RuntimeError(
            "transformers.Trainer divided the loss by the accumulation steps although this trainer declares it "
            "scaled (loss_is_scaled_for_ga); this transformers version is not supported"
        )


def _class_attributes(cls: type) -> set[str]:
    return {name for klass in cls.__mro__ if klass.__module__.startswith("transformers") for name in vars(klass)}


