"""The one training loop: a transformers.Trainer whose loss is the method's.

transformers owns the loop, the optimizer, the schedule, checkpoints and mixed precision. This module owns only
what it lacks: the forward pass that computes log-probs at the collator's targets (never the full logits), the
method's loss, and metrics that stay on the device until a logging step reads them.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import Trainer

from autotrain.attention import decoder_inputs
from autotrain.errors import TrainingError
from autotrain.logprobs import segment_sum, token_logps
from autotrain.losses import orpo_loss
from autotrain.models import decoder_and_head
from autotrain.trainers.clm import safety


@dataclass(frozen=True)
class SequenceLogps:
    chosen: torch.Tensor  # [B] mean completion-token log-prob of each chosen sequence
    rejected: torch.Tensor  # [B]
    nll: torch.Tensor  # scalar: mean NLL over the batch's `in_nll` targets


def sequence_logps(model: torch.nn.Module, batch: dict[str, Any]) -> SequenceLogps:
    """Run the model body once and the LM head only at the batch's targets (see autotrain.data.collate).

    Takes a padded or a packed batch (autotrain.data.pack); autotrain.attention turns the latter's segment ids into
    the mask the model's attention kernel takes. No step here reads a device value back to the host: targets are
    selected by index and masked by `torch.where`, never by boolean indexing (a `nonzero`, hence a sync, on CUDA).
    """
    decoder, head, extras = decoder_and_head(model)
    hidden = decoder(**decoder_inputs(model, batch), use_cache=False).last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch["hidden_index"])
    logps = token_logps(hidden, head, batch["target_ids"], softcap=extras["softcap"], logit_scale=extras["logit_scale"])
    pairs = batch["num_pairs"]
    per_seq = _masked_segment_mean(logps, batch["in_completion"], batch["target_seq"], 2 * pairs)
    nll = -_masked_mean(logps, batch["in_nll"])
    return SequenceLogps(per_seq[:pairs], per_seq[pairs:], nll)


def _masked_segment_mean(values: torch.Tensor, keep: torch.Tensor, segment_ids: torch.Tensor, n: int) -> torch.Tensor:
    # Dropped entries add an exact 0 to their segment's sum and count (torch.where, not a product: 0 * -inf is NaN).
    sums = segment_sum(torch.where(keep, values, 0.0), segment_ids, n)
    counts = segment_sum(keep.to(values.dtype), segment_ids, n).clamp(min=1)
    return sums / counts


def _masked_mean(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    # No kept entry gives NaN, as the mean of an empty selection does (the collators never produce one).
    return torch.where(keep, values, 0.0).sum() / keep.sum().to(values.dtype)


def orpo_step(model: torch.nn.Module, batch: dict[str, Any], beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ORPO's loss and its metrics (TRL's names), all still on the device."""
    seqs = sequence_logps(model, batch)
    out = orpo_loss(seqs.chosen, seqs.rejected, seqs.nll, beta)
    metrics = {
        "nll_loss": out.nll.detach(),
        "log_odds_ratio": out.log_odds_ratio.detach().mean(),
        "log_odds_chosen": out.log_odds.detach().mean(),
        "rewards/chosen": out.chosen_rewards.mean(),
        "rewards/rejected": out.rejected_rewards.mean(),
        # Compared on log-probs, not rewards, so the accuracy stays meaningful at beta = 0 (log-odds are monotone in
        # log P, so this is "chosen log-odds beat rejected").
        "rewards/accuracies": (seqs.chosen > seqs.rejected).float().mean(),
        "rewards/margins": (out.chosen_rewards - out.rejected_rewards).mean(),
        "logps/chosen": seqs.chosen.detach().mean(),
        "logps/rejected": seqs.rejected.detach().mean(),
    }
    return out.loss, metrics


# A method is its loss step; the collator and the columns it needs are chosen in autotrain.pipeline.
METHODS: dict[str, Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]] = {"orpo": orpo_step}


class PreferenceTrainer(Trainer):
    """transformers.Trainer with a method's loss; metrics are averaged between logging steps."""

    # compute_loss returns a per-micro-batch mean; let Trainer divide it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, method: str, beta: float, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.method_step, self.beta = METHODS[method], beta
        # Running sums stay on the device: reading them is a host sync, done only when logging.
        self._sums: dict[str, dict[str, torch.Tensor]] = {"train": {}, "eval": {}}
        self._counts: dict[str, int] = defaultdict(int)
        self._loss_finite: torch.Tensor | None = None  # device flag over this step's micro-batches
        self._staging = False

    def training_step(self, model, inputs, num_items_in_batch=None):  # noqa: D102
        loss = super().training_step(model, inputs, num_items_in_batch)
        finite = torch.isfinite(loss)
        self._loss_finite = finite if self._loss_finite is None else self._loss_finite & finite
        return loss

    def _clip_grad_norm(self, model):
        grad_norm = super()._clip_grad_norm(model)
        # The one host sync per optimizer step: deciding whether to step at all. A NaN would otherwise reach the
        # weights (Trainer's own nan filter only hides it from the logged loss).
        finite = bool(torch.isfinite(torch.as_tensor(grad_norm)).all() and self._loss_finite.all())
        self._loss_finite = None
        if not finite:
            done = safety.checkpoints(Path(self.args.output_dir))
            last = f"the last good checkpoint is {done[-1]}" if done else "no checkpoint was saved yet"
            raise TrainingError(
                f"non-finite loss or gradient at step {self.state.global_step + 1}; the weights were not updated "
                f"and no final model was saved; {last} (try a lower --lr or fp32)"
            )
        return grad_norm

    def _get_output_dir(self, trial):
        # While saving a checkpoint, transformers writes under the staging folder; _save_checkpoint publishes it.
        root = super()._get_output_dir(trial)
        return os.path.join(root, safety.STAGING) if self._staging else root

    def _save_checkpoint(self, model, trial):
        root = Path(super()._get_output_dir(trial))
        name = f"{safety.CHECKPOINT_PREFIX}{self.state.global_step}"
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = False
        if self.args.should_save:
            safety.publish(root / safety.STAGING / name, root / name)
            safety.rotate(root, self.args.save_total_limit)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: D102
        loss, metrics = self.method_step(model, inputs, self.beta)
        mode = "train" if model.training else "eval"
        sums = self._sums[mode]
        for name, value in metrics.items():
            sums[name] = sums[name] + value if name in sums else value.clone()
        self._counts[mode] += 1
        return (loss, metrics) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):  # noqa: D102
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:  # noqa: D102
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        if self._counts[mode]:
            prefix = "eval_" if mode == "eval" else ""
            # One stacked transfer for all metrics instead of one sync per value.
            names = list(self._sums[mode])
            values = torch.stack([self._sums[mode][n].float() for n in names]).cpu() / self._counts[mode]
            logs.update({prefix + n: round(v, 6) for n, v in zip(names, values.tolist())})
            self._sums[mode], self._counts[mode] = {}, 0
        super().log(logs, start_time)
