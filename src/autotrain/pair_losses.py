"""The --loss-type menus of DPO and CPO (TRL's `loss_type` names) as pure functions of per-pair log-probs.

One function per loss, each from its paper's equation, each returning the [B] per-pair losses (mean over pairs is
the loss of a batch; how a step of several micro-batches reduces them is autotrain.losses'). Conventions:

  * `margin` [B]: the DPO margin (log pi(c) - log ref(c)) - (log pi(r) - log ref(r)) on SUMMED completion log-probs
    (prompt excluded), or CPO's log pi(c) - log pi(r); `chosen` / `rejected` [B]: the two log-ratios alone.
  * `beta` > 0 scales every margin inside its loss (IPO's and SPPO's targets are 1 / (2 beta)).
  * ipo and sigmoid_norm read per-token margins: each log-ratio divided by its completion's token count, as TRL does
    (for IPO "confirmed with the IPO authors", TRL's comment).
  * `label_smoothing` e is the probability that a label is flipped (cDPO, rDPO) or EXO's epsilon.
Computed in float32 (float64 inputs stay float64); logsigmoid keeps every loss finite for any margin.

`dpo_loss` and `cpo_menu_loss` pick and weigh these by name (autotrain.methods.loss_types lists the names, titles
and authors' defaults); the `sft` loss type is the NLL of the chosen tokens, which the step reduces as a token mean
(PairTerms.nll_weight), so it is a weight here, not a per-pair term. TRL's `aot` and `aot_unpaired` are not here:
they sort across the batch, so no per-pair function can state them (autotrain.methods.loss_types says why).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from autotrain.losses import CpoOutput, compute_dtype

__all__ = ["CPO_MEAN_LOGPS", "DpoOutput", "alphapo_reward", "apo_down_loss", "apo_zero_loss", "bco_pair_loss",
           "cpo_menu_loss", "discopop_loss", "dpo_loss", "exo_pair_loss", "hinge_loss", "ipo_loss", "nca_pair_loss",
           "robust_loss", "sigmoid_loss", "sppo_hard_loss"]


def sigmoid_loss(margin: Tensor, beta: float, label_smoothing: float = 0.0) -> Tensor:
    """DPO (Rafailov et al. 2023, eq. 7): -log sigma(beta m). With label smoothing e, cDPO (Mitchell 2023, "A note
    on DPO with noisy preferences"): the expected loss when each label is flipped with probability e,
    (1 - e) * -log sigma(beta m) + e * -log sigma(-beta m)."""
    loss = -F.logsigmoid(beta * margin)
    if label_smoothing:
        loss = (1 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-beta * margin)
    return loss


def hinge_loss(margin: Tensor, beta: float) -> Tensor:
    """SLiC's calibration hinge (Zhao et al. 2023) with margin delta = 1 / beta, scaled by beta: max(0, 1 - beta m)."""
    return torch.relu(1 - beta * margin)


def ipo_loss(margin: Tensor, beta: float) -> Tensor:
    """IPO (Azar et al. 2023, eq. 17, tau = beta): (m - 1 / (2 tau))^2, on the per-token margin."""
    return (margin - 1 / (2 * beta)) ** 2


def exo_pair_loss(margin: Tensor, beta: float, label_smoothing: float) -> Tensor:
    """EXO (Ji et al. 2024, eq. 16, K = 2): KL(p_theta || p_e) between the model's preference distribution
    p_theta = (sigma(beta m), sigma(-beta m)) and the smoothed labels p_e = (1 - e, e); e > 0."""
    chosen, rejected = beta * margin, -beta * margin
    return (torch.sigmoid(chosen) * (F.logsigmoid(chosen) - math.log1p(-label_smoothing))
            + torch.sigmoid(rejected) * (F.logsigmoid(rejected) - math.log(label_smoothing)))


def robust_loss(margin: Tensor, beta: float, label_smoothing: float) -> Tensor:
    """rDPO (Chowdhury et al. 2024), unbiased under label flips of probability e < 1/2:
    ((1 - e) * -log sigma(beta m) - e * -log sigma(-beta m)) / (1 - 2 e)."""
    clean = -F.logsigmoid(beta * margin)
    flipped = -F.logsigmoid(-beta * margin)
    return ((1 - label_smoothing) * clean - label_smoothing * flipped) / (1 - 2 * label_smoothing)


def nca_pair_loss(chosen: Tensor, rejected: Tensor, beta: float) -> Tensor:
    """NCA (Chen et al. 2024) for K = 2 responses, on the log-ratios r = beta * (log pi - log ref) of each answer:
    -log sigma(r_c) - 1/2 log sigma(-r_c) - 1/2 log sigma(-r_r)."""
    return (-F.logsigmoid(beta * chosen) - 0.5 * F.logsigmoid(-beta * chosen)
            - 0.5 * F.logsigmoid(-beta * rejected))


def bco_pair_loss(chosen: Tensor, rejected: Tensor, beta: float) -> Tensor:
    """BCO on pairs (Jung et al. 2024) without its reward shift delta, as TRL's bco_pair: -log sigma(r_c) - log sigma(-r_r)."""
    return -F.logsigmoid(beta * chosen) - F.logsigmoid(-beta * rejected)


def sppo_hard_loss(chosen: Tensor, rejected: Tensor, beta: float) -> Tensor:
    """SPPO (Wu et al. 2024, eq. 4.7 with hard win probabilities 1 and 0, eta = 1 / beta):
    (chosen - 1 / (2 beta))^2 + (rejected + 1 / (2 beta))^2 on the unscaled log-ratios."""
    return (chosen - 0.5 / beta) ** 2 + (rejected + 0.5 / beta) ** 2


def apo_zero_loss(chosen: Tensor, rejected: Tensor, beta: float) -> Tensor:
    """APO-zero (D'Oosterlinck et al. 2024, eq. 7): 1 - sigma(r_c) + sigma(r_r)."""
    return 1 - torch.sigmoid(beta * chosen) + torch.sigmoid(beta * rejected)


def apo_down_loss(chosen: Tensor, rejected: Tensor, beta: float) -> Tensor:
    """APO-down (D'Oosterlinck et al. 2024, eq. 8): sigma(r_c) + 1 - sigma(r_c - r_r)."""
    return torch.sigmoid(beta * chosen) + 1 - torch.sigmoid(beta * (chosen - rejected))


def discopop_loss(margin: Tensor, beta: float, tau: float) -> Tensor:
    """DiscoPOP (Chris Lu et al. 2024, eq. 5), x = beta m: the log-ratio modulated blend
    (1 - sigma(x / tau)) * -log sigma(x) + sigma(x / tau) * exp(-x).
    The second product is computed as exp(-x + log sigma(x / tau)): for a very negative x, exp(-x) alone
    overflows to inf and inf * 0 is NaN, while the sum in the exponent goes to -inf (tau < 1) and the product to 0."""
    x = beta * margin
    weight = torch.sigmoid(x / tau)
    return -F.logsigmoid(x) * (1 - weight) + torch.exp(-x + F.logsigmoid(x / tau))


def alphapo_reward(mean_logps: Tensor, alpha: float) -> Tensor:
    """AlphaPO's reward (Gupta et al. 2025) on the mean token probability p = exp(mean log-prob):
    (1 - p^-alpha) / alpha, computed as -expm1(-alpha * mean) / alpha; alpha = 0 is its limit, log p (SimPO)."""
    return mean_logps if alpha == 0 else -torch.expm1(-alpha * mean_logps) / alpha


# How each dpo loss type reads a pair: from the margin, the per-token margin, or the two log-ratios.
_DPO_MARGIN = {"sigmoid": lambda m, s: sigmoid_loss(m, s.beta, s.label_smoothing),
               "hinge": lambda m, s: hinge_loss(m, s.beta),
               "exo_pair": lambda m, s: exo_pair_loss(m, s.beta, s.label_smoothing),
               "robust": lambda m, s: robust_loss(m, s.beta, s.label_smoothing),
               "discopop": lambda m, s: discopop_loss(m, s.beta, s.discopop_tau)}
_DPO_PER_TOKEN = {"ipo": lambda m, s: ipo_loss(m, s.beta), "sigmoid_norm": lambda m, s: sigmoid_loss(m, s.beta)}
_DPO_RATIOS = {"nca_pair": nca_pair_loss, "bco_pair": bco_pair_loss, "sppo_hard": sppo_hard_loss,
               "apo_zero": apo_zero_loss, "apo_down": apo_down_loss}
SFT = "sft"


@dataclass(frozen=True)
class _Settings:
    beta: float
    label_smoothing: float
    discopop_tau: float


@dataclass(frozen=True)
class DpoOutput:
    """DPO's loss and its parts: `loss`, `pair_losses` and `margin` are graph-attached, the rewards detached."""

    loss: Tensor  # scalar: mean of pair_losses (+ the sft weight x nll with the sft loss type)
    pair_losses: Tensor  # [B]: the weighted sum of the pair's losses, every loss type but sft
    margin: Tensor  # [B]: (log pi(c) - log ref(c)) - (log pi(r) - log ref(r))
    chosen_rewards: Tensor  # [B]: beta * (log pi(c) - log ref(c)), detached ("rewards/chosen", whatever the loss)
    rejected_rewards: Tensor  # [B]: beta * (log pi(r) - log ref(r)), detached ("rewards/rejected")
    nll_weight: float = 0.0  # the sft loss type's weight: the NLL's in the step's loss (PairTerms.nll_weight)


def dpo_loss(chosen_logps: Tensor, rejected_logps: Tensor, ref_chosen_logps: Tensor, ref_rejected_logps: Tensor,
             beta: float, loss_type: Sequence[str] = ("sigmoid",), loss_weights: Sequence[float] | None = None,
             chosen_tokens: Tensor | None = None, rejected_tokens: Tensor | None = None, nll: Tensor | None = None,
             label_smoothing: float = 0.0, discopop_tau: float = 0.05) -> DpoOutput:
    """DPO with any of its loss types, summed with `loss_weights` (1 each by default) as TRL's DPOTrainer does:
    L = mean over pairs of sum_k w_k l_k(pair) + w_sft * nll.

    The four log-prob inputs are [B]: the SUM of a completion's token log-probs under the policy and the frozen
    reference, prompt excluded (the reference's carry no gradient: detached here). `chosen_tokens` /
    `rejected_tokens` [B] count each completion's tokens (ipo and sigmoid_norm divide by them; a count of 0 reads
    as 1); `nll` (scalar, the chosen tokens' mean NLL) is needed with the sft loss type only. beta = 0 gives every
    pair ln 2 in sigmoid and no gradient; the params refuse it.
    """
    shapes = {tuple(t.shape) for t in (chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)}
    if len(shapes) != 1 or chosen_logps.dim() != 1 or chosen_logps.numel() == 0:
        raise ValueError(f"dpo_loss needs four log-prob tensors of one shape [B], B >= 1, got {sorted(shapes)}")
    weights = list(loss_weights) if loss_weights is not None else [1.0] * len(loss_type)
    if len(weights) != len(loss_type):
        raise ValueError(f"dpo_loss needs one weight per loss type, got {len(weights)} for {list(loss_type)}")
    dtype = compute_dtype(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    chosen = chosen_logps.to(dtype) - ref_chosen_logps.detach().to(dtype)
    rejected = rejected_logps.to(dtype) - ref_rejected_logps.detach().to(dtype)
    margin = chosen - rejected
    settings = _Settings(beta, label_smoothing, discopop_tau)
    pair_losses = torch.zeros_like(margin)
    nll_weight = 0.0
    for name, weight in zip(loss_type, weights):
        if name == SFT:
            if nll is None:
                raise ValueError("dpo_loss needs the nll with the sft loss type")
            nll_weight += weight
        elif name in _DPO_MARGIN:
            pair_losses = pair_losses + weight * _DPO_MARGIN[name](margin, settings)
        elif name in _DPO_PER_TOKEN:
            if chosen_tokens is None or rejected_tokens is None:
                raise ValueError(f"dpo_loss needs the completions' token counts with the {name} loss type")
            per_token = (chosen / chosen_tokens.to(dtype).clamp(min=1)
                         - rejected / rejected_tokens.to(dtype).clamp(min=1))
            pair_losses = pair_losses + weight * _DPO_PER_TOKEN[name](per_token, settings)
        elif name in _DPO_RATIOS:
            pair_losses = pair_losses + weight * _DPO_RATIOS[name](chosen, rejected, beta)
        else:
            raise ValueError(f"dpo_loss has no loss type {name!r}")
    loss = pair_losses.mean()
    if nll_weight:
        loss = loss + nll_weight * nll.to(dtype)
    return DpoOutput(loss=loss, pair_losses=pair_losses, margin=margin, chosen_rewards=(beta * chosen).detach(),
                     rejected_rewards=(beta * rejected).detach(), nll_weight=nll_weight)


# CPO's loss types that read mean token log-probs (TRL's CPOTrainer: average_log_prob for ipo and simpo) rather
# than summed ones.
CPO_MEAN_LOGPS = frozenset({"ipo", "alphapo"})


def cpo_menu_loss(loss_type: str, chosen_logps: Tensor, rejected_logps: Tensor, nll: Tensor, beta: float,
                  alpha: float, label_smoothing: float = 0.0, gamma: float = 0.0, alphapo_alpha: float = 0.0
                  ) -> CpoOutput:
    """CPO with one of its loss types, as TRL's CPOTrainer: L = mean over pairs of l(pair) + alpha * NLL.

    `chosen_logps` / `rejected_logps` [B] are summed completion log-probs for sigmoid and hinge, mean ones for the
    types in CPO_MEAN_LOGPS (ipo, alphapo), prompt excluded; `nll` is the chosen tokens' mean NLL (scalar).
      sigmoid: -log sigma(beta (c - r)) (conservative with label smoothing, as sigmoid_loss)
      hinge:   max(0, 1 - beta (c - r));   ipo: (c - r - 1 / (2 beta))^2
      alphapo: -log sigma(beta (u_c - u_r) - gamma) with u = alphapo_reward(mean log-prob, alphapo_alpha)
    Rewards are beta times what the loss compares (c, r, or u), as TRL logs them; `margin` is beta times its
    difference, minus gamma.
    """
    if chosen_logps.dim() != 1 or chosen_logps.shape != rejected_logps.shape or chosen_logps.numel() == 0:
        raise ValueError(f"cpo_menu_loss needs chosen_logps and rejected_logps of one shape [B], B >= 1, got "
                         f"{tuple(chosen_logps.shape)} and {tuple(rejected_logps.shape)}")
    dtype = compute_dtype(chosen_logps, rejected_logps, nll)
    chosen, rejected, nll = chosen_logps.to(dtype), rejected_logps.to(dtype), nll.to(dtype)
    if loss_type == "alphapo":
        chosen, rejected = alphapo_reward(chosen, alphapo_alpha), alphapo_reward(rejected, alphapo_alpha)
    difference = chosen - rejected
    if loss_type == "sigmoid":
        pair_losses = sigmoid_loss(difference, beta, label_smoothing)
    elif loss_type == "hinge":
        pair_losses = hinge_loss(difference, beta)
    elif loss_type == "ipo":
        pair_losses = ipo_loss(difference, beta)
    elif loss_type == "alphapo":
        pair_losses = -F.logsigmoid(beta * difference - gamma)
    else:
        raise ValueError(f"cpo_menu_loss has no loss type {loss_type!r}")
    loss = pair_losses.mean() + alpha * nll if alpha else pair_losses.mean()
    return CpoOutput(loss=loss, pair_losses=pair_losses, nll=nll, margin=beta * difference - gamma,
                     chosen_rewards=(beta * chosen).detach(), rejected_rewards=(beta * rejected).detach())
