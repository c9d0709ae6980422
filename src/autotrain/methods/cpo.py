"""CPO (Xu et al. 2024): a preference term on the policy's own log-probs (sigmoid by default, or hinge, ipo,
alphapo: autotrain.pair_losses) plus alpha times the chosen side's NLL; no reference model."""

from __future__ import annotations

from typing import Any

import torch

from autotrain.forward import sequence_logps
from autotrain.losses import PairTerms
from autotrain.methods import spec
from autotrain.methods.base import Method, ReferenceSums, pair_nll, reward_metrics
from autotrain.pair_losses import CPO_MEAN_LOGPS, cpo_menu_loss


def cpo_terms(model: torch.nn.Module, batch: dict[str, Any], beta: float, reference: ReferenceSums | None = None,
              alpha: float = 1.0, loss_type: tuple[str, ...] = ("sigmoid",), label_smoothing: float = 0.0,
              gamma: float = 0.0, alphapo_alpha: float = 0.0) -> PairTerms:
    """CPO per pair on summed completion log-probs (mean ones for ipo and alphapo, as TRL's CPOTrainer); metrics
    under its names (rewards are beta times what the loss compares)."""
    (name,) = loss_type
    seqs = sequence_logps(model, batch)
    chosen, rejected = seqs.split(seqs.means if name in CPO_MEAN_LOGPS else seqs.sums)
    out = cpo_menu_loss(name, chosen, rejected, seqs.nll, beta, alpha, label_smoothing, gamma, alphapo_alpha)
    # Compared on the log-probs, not the rewards (the same order for beta > 0; AlphaPO's reward grows with them).
    metrics = reward_metrics(out.chosen_rewards, out.rejected_rewards, chosen, rejected, chosen, rejected)
    return PairTerms(*pair_nll(seqs), pair_loss=out.pair_losses, nll_weight=alpha, metrics=metrics,
                     batch_term=seqs.router_loss)


METHOD = Method(spec("cpo"), cpo_terms)
cpo_step = METHOD.step
