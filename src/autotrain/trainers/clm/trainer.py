"""The one training loop: a transformers.Trainer whose loss is the method's.

transformers owns the loop, the optimizer, the schedule, checkpoints and mixed precision. This module owns only
what it lacks: the forward pass that computes log-probs at the collator's targets (never the full logits), the
method's loss, and metrics that stay on the device until a logging step reads them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable

import torch
from transformers import Trainer

from autotrain.logprobs import segment_mean, token_logps
from autotrain.losses import orpo_loss
from autotrain.models import decoder_and_head


@dataclass(frozen=True)
class SequenceLogps:
    chosen: torch.Tensor  # [B] mean completion-token log-prob of each chosen sequence
    rejected: torch.Tensor  # [B]
    nll: torch.Tensor  # scalar: mean NLL over the batch's `in_nll` targets


def sequence_logps(model: torch.nn.Module, batch: dict[str, Any]) -> SequenceLogps:
    """Run the model body once and the LM head only at the batch's targets (see autotrain.data.collate)."""
    decoder, head, extras = decoder_and_head(model)
    forward_args = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if "position_ids" in batch:
        forward_args["position_ids"] = batch["position_ids"]
    hidden = decoder(**forward_args, use_cache=False).last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch["hidden_index"])
    logps = token_logps(hidden, head, batch["target_ids"], softcap=extras["softcap"], logit_scale=extras["logit_scale"])
    pairs = batch["num_pairs"]
    completion = batch["in_completion"]
    per_seq = segment_mean(logps[completion], batch["target_seq"][completion], 2 * pairs)
    nll = -logps[batch["in_nll"]].mean()
    return SequenceLogps(per_seq[:pairs], per_seq[pairs:], nll)


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
