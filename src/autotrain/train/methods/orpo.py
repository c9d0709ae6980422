"""ORPO (Hong, Lee & Thorne 2024): the chosen side's NLL plus beta times the odds-ratio term; no reference model."""

from __future__ import annotations

from typing import Any

import torch

from autotrain.model.forward import sequence_logps
from autotrain.params.methods import spec
from autotrain.train.losses import PairTerms, orpo_loss
from autotrain.train.methods.base import Method, ReferenceSums, pair_nll, reward_metrics


def orpo_terms(model: torch.nn.Module, batch: dict[str, Any], beta: float, reference: ReferenceSums | None = None
               ) -> PairTerms:
    """ORPO per pair on mean completion log-probs; metrics under TRL's names."""
    seqs = sequence_logps(model, batch)
    chosen, rejected = seqs.split(seqs.means)
    out = orpo_loss(chosen, rejected, seqs.nll, beta)
    return PairTerms(
        *pair_nll(seqs), pair_loss=-beta * out.log_odds_ratio, nll_weight=1.0, batch_term=seqs.router_loss,
        metrics={
            "log_odds_ratio": out.log_odds_ratio.detach(),
            "log_odds_chosen": out.log_odds.detach(),
            # Compared on log-probs, not rewards, so the accuracy stays meaningful at beta = 0 (log-odds are monotone
            # in log P, so this is "chosen log-odds beat rejected").
            **reward_metrics(out.chosen_rewards, out.rejected_rewards, chosen, rejected, chosen, rejected),
        },
    )


METHOD = Method(spec("orpo"), orpo_terms)
orpo_step = METHOD.step
