"""CPO (Xu et al. 2024): a sigmoid preference term on summed log-probs plus alpha times the chosen side's NLL; no
reference model."""

from __future__ import annotations

from typing import Any

import torch

from autotrain.forward import sequence_logps
from autotrain.losses import PairTerms, cpo_loss
from autotrain.methods import spec
from autotrain.methods.base import Method, ReferenceSums, pair_nll, reward_metrics


def cpo_terms(model: torch.nn.Module, batch: dict[str, Any], beta: float, reference: ReferenceSums | None = None,
              alpha: float = 1.0) -> PairTerms:
    """CPO per pair on summed completion log-probs; metrics under TRL's CPOTrainer names (rewards are beta times the
    summed log-probs)."""
    seqs = sequence_logps(model, batch)
    chosen, rejected = seqs.split(seqs.sums)
    out = cpo_loss(chosen, rejected, seqs.nll, beta, alpha)
    metrics = reward_metrics(out.chosen_rewards, out.rejected_rewards, chosen, rejected, chosen, rejected)
    return PairTerms(*pair_nll(seqs), pair_loss=out.pair_losses, nll_weight=alpha, metrics=metrics,
                     batch_term=seqs.router_loss)


METHOD = Method(spec("cpo"), cpo_terms)
cpo_step = METHOD.step
