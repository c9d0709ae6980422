"""DPO (Rafailov et al. 2023) with any of its loss types (autotrain.pair_losses) on summed completion log-probs
against a frozen reference's."""

from __future__ import annotations

from typing import Any

import torch

from autotrain.forward import sequence_logps
from autotrain.losses import PairTerms
from autotrain.methods import spec
from autotrain.methods.base import Method, ReferenceSums, pair_nll, reward_metrics
from autotrain.pair_losses import dpo_loss


def dpo_terms(model: torch.nn.Module, batch: dict[str, Any], beta: float, reference: ReferenceSums | None = None,
              loss_type: tuple[str, ...] = ("sigmoid",), loss_weights: tuple[float, ...] | None = None,
              label_smoothing: float = 0.0, discopop_tau: float = 0.05) -> PairTerms:
    """DPO per pair; the NLL is reported, and trained on with the weight of the sft loss type (0 without it).
    Metrics under TRL's DPOTrainer names, the same for every loss type (rewards are beta times the log-ratios)."""
    if reference is None:
        raise ValueError("dpo_terms needs the reference's log-probs (the trainer supplies them)")
    seqs = sequence_logps(model, batch)
    with torch.no_grad():
        ref_chosen, ref_rejected = seqs.split(reference(batch))
    chosen, rejected = seqs.split(seqs.sums)
    out = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta, loss_type, loss_weights, *seqs.split(seqs.counts),
                   nll=seqs.nll, label_smoothing=label_smoothing, discopop_tau=discopop_tau)
    # DPO's implicit reward: the chosen answer gained more log-probability over the reference than the rejected.
    metrics = reward_metrics(out.chosen_rewards, out.rejected_rewards, chosen, rejected, out.chosen_rewards,
                             out.rejected_rewards)
    return PairTerms(*pair_nll(seqs), pair_loss=out.pair_losses, nll_weight=out.nll_weight, metrics=metrics,
                     batch_term=seqs.router_loss)


METHOD = Method(spec("dpo"), dpo_terms)
dpo_step = METHOD.step
