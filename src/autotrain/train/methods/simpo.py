"""SimPO (Meng, Xia & Chen 2024): a length-normalised reward with a target margin, no reference model; with an NLL
weight alpha > 0, CPO-SimPO (SimPO's term plus CPO's NLL)."""

from __future__ import annotations

from typing import Any

import torch

from autotrain.model.forward import sequence_logps
from autotrain.params.methods import spec
from autotrain.train.losses import PairTerms, simpo_loss
from autotrain.train.methods.base import Method, ReferenceSums, pair_nll, reward_metrics


def simpo_terms(model: torch.nn.Module, batch: dict[str, Any], beta: float, reference: ReferenceSums | None = None,
                gamma: float = 0.0, alpha: float = 0.0) -> PairTerms:
    """SimPO per pair on mean completion log-probs with margin gamma; the NLL enters weighted by alpha (0: reported
    only). Metrics under TRL's CPOTrainer names (rewards are beta times the mean log-probs)."""
    seqs = sequence_logps(model, batch)
    out = simpo_loss(*seqs.split(seqs.sums), *seqs.split(seqs.counts), seqs.nll, beta, gamma, alpha)
    chosen, rejected = seqs.split(seqs.means)
    # Compared on the mean log-probs, not the rewards, so the accuracy stays meaningful at beta = 0.
    metrics = reward_metrics(out.chosen_rewards, out.rejected_rewards, chosen, rejected, chosen, rejected)
    return PairTerms(*pair_nll(seqs), pair_loss=out.pair_losses, nll_weight=alpha, metrics=metrics,
                     batch_term=seqs.router_loss)


METHOD = Method(spec("simpo"), simpo_terms)
simpo_step = METHOD.step
