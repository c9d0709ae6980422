"""Preference losses as pure functions of per-sequence log-probs: ORPO (Hong, Lee & Thorne 2024, "ORPO: Monolithic
Preference Optimization without Reference Model", arXiv 2403.07691) and the reference-free pair: CPO (Xu et al. 2024,
"Contrastive Preference Optimization", arXiv 2401.08417) and SimPO (Meng, Xia & Chen 2024, "SimPO: Simple Preference
Optimization with a Reference-Free Reward", arXiv 2405.14734), with CPO-SimPO between them; and how every method's
per-pair terms reduce over an optimizer step. DPO (Rafailov et al. 2023, arXiv 2305.18290) with each of its loss
types, and CPO's other loss types, are autotrain.pair_losses' (built on this module's CpoOutput).

This module imports nothing but torch: the caller computes the log-probs (see autotrain.logprobs), this module
turns them into the loss and its named parts.

Reductions: one optimizer step, one loss, however the step is split
--------------------------------------------------------------------
A step's loss is defined over all of the step's pairs, on every process, never per micro-batch:

    ORPO:  L = (sum of NLL over the step's NLL tokens) / N_tokens  +  beta * (sum over pairs of -log sigma(log-odds)) / N_pairs
    DPO:   L = (sum over pairs of l(pair)) / N_pairs  [+ w_sft * (sum of NLL over the step's NLL tokens) / N_tokens]
           l is the weighted sum of the run's loss types (-log sigma(beta * margin) for sigmoid), w_sft the weight of
           its sft loss type (RPO); any dpo loss type is per pair, so the step reduces it the same way
    CPO:   L = alpha * (sum of NLL over the step's NLL tokens) / N_tokens  +  (sum over pairs of l(pair)) / N_pairs,
           l = -log sigma(beta * (c - r)) for its sigmoid loss type, or its hinge, ipo or alphapo one
    SimPO: as CPO on mean instead of summed log-probs, with a margin gamma: -log sigma(beta * (c - r) - gamma);
           alpha = 0 is SimPO itself, alpha > 0 CPO-SimPO
    SFT:   L = (sum of NLL over the step's NLL tokens) / N_tokens

N_tokens counts the step's NLL targets (`in_nll`: the chosen completion tokens, and the chosen side's prompt tokens
with prompt_loss; SFT: the trained completion tokens) and N_pairs its units: pairs (SFT: examples; a method on
unpaired rows counts its examples, each a row of PairTerms), both summed over
the step's micro-batches and over all processes. So the NLL is a token mean over the whole step, never a mean of
per-micro-batch means, and batch 4 x accumulation 1, 2 x 2, 1 x 4 and 2 processes x 2 x 1 train on one gradient.

Weighted pairs (`PairTerms.weight`, `pair_counts`): the pairs made from one prompt's ranked answers each weigh
1 / (their number), so that each prompt counts once. Every sum above is then a weighted sum (a pair's NLL and its
NLL tokens, its preference term and every metric, each times its weight) and N_pairs the sum of the weights, the
same under every split of the step; without weights every pair weighs 1.

`PairTerms` holds one micro-batch's per-pair sums; `PairTerms.loss(N_tokens, N_pairs)` is that micro-batch's share
(its sums over the step's counts), and the shares of a step add up to L. Data-parallel wrappers (DDP, FSDP,
DeepSpeed) average gradients over the P processes, so the trainer multiplies each share by P. With no counts given
the share is the micro-batch's own loss (one micro-batch, one process). A term that is defined per micro-batch
(`PairTerms.batch_term`, e.g. an MoE router's auxiliary loss) is averaged over the step's micro-batches (over all
processes). Metrics reduce the same way
(`reduce_columns`): nll_loss is a token mean, every other metric a mean over pairs, over a logging window or a whole
evaluation split.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CpoOutput", "OrpoOutput", "PairTerms", "compute_dtype", "cpo_loss", "log1mexp", "orpo_loss",
           "pair_counts", "reduce_columns", "simpo_loss", "step_loss"]

_LN2 = math.log(2.0)

# Largest log P that orpo_loss lets through. At log P = 0 (P = 1), which a float32 mean log-prob reaches when the
# model is near-certain of every token, log(1 - P) is -inf: the log-odds are +inf (NaN for chosen == rejected
# == 0), and backward multiplies logsigmoid's zero slope by log1mexp's infinite one (NaN). Near 0 the derivative
# of the log-odds is 1 / (1 - P) ~ -1 / log P, so the cap also bounds it by 1 / 1e-7 = 1e7: finite in float32 and
# bf16 and after a sum over a batch (not in fp16, whose max is 65504: pass float32 logps). log P > -1e-7 means
# P > 0.9999999; there the log-odds are capped at -log(1e-7) ~ 16.1 and that sequence gets no gradient from the
# odds-ratio term (its NLL term still applies). Float32 resolves values near -1e-7 finely, so below the cap
# nothing changes.
LOGP_MAX = -1e-7


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0, accurate over the whole range (Maechler 2012, "Accurately computing
    log(1-exp(-|a|)) assessed by the Rmpfr package").

    Two branches, split at x = -ln 2:
      * x < -ln 2: exp(x) < 1/2, so 1 - exp(x) has no cancellation and log1p(-exp(x)) is accurate even where
        exp(x) is far below float eps (where log(1 - exp(x)) rounds to 0);
      * x >= -ln 2: 1 - exp(x) cancels, but -expm1(x) computes it without cancellation, so log(-expm1(x)).
    log1mexp(0) = -inf; x > 0 gives NaN. Each branch is fed an input clamped to its own side of -ln 2, so the
    branch torch.where discards never produces an inf/NaN that would leak into the gradient (0 * inf = NaN).
    Computed in x's dtype; callers wanting float32 accuracy pass float32.
    """
    low = x < -_LN2
    split = torch.full_like(x, -_LN2)
    below = torch.log1p(-torch.exp(torch.where(low, x, split)))
    above = torch.log(-torch.expm1(torch.where(low, split, x)))
    return torch.where(low, below, above)


@dataclass(frozen=True)
class OrpoOutput:
    """ORPO's loss and its parts. Per-pair tensors are [B]; scalars are 0-dim. All float32 (float64 for float64
    inputs). `loss`, `nll`, `or_loss`, `log_odds` and `log_odds_ratio` are attached to the autograd graph (detach
    them before logging); the rewards are detached."""

    loss: Tensor  # scalar: nll + beta * or_loss
    nll: Tensor  # scalar: the nll passed in (upcast)
    or_loss: Tensor  # scalar: mean over pairs of -logsigmoid(log_odds), not weighted by beta
    log_odds: Tensor  # [B]: log-odds(chosen) - log-odds(rejected)   (TRL logs its mean as "log_odds_chosen")
    log_odds_ratio: Tensor  # [B]: logsigmoid(log_odds)              (TRL logs its mean as "log_odds_ratio")
    chosen_rewards: Tensor  # [B]: beta * chosen_logps, detached     ("rewards/chosen")
    rejected_rewards: Tensor  # [B]: beta * rejected_logps, detached ("rewards/rejected")


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def orpo_loss(chosen_logps: Tensor, rejected_logps: Tensor, nll: Tensor, beta: float) -> OrpoOutput:
    """ORPO: L = NLL + beta * mean over pairs of -log sigmoid(log-odds(chosen) - log-odds(rejected)).

    Conventions:
      * `chosen_logps` / `rejected_logps` are [B], one entry per preference pair: the MEAN (not the sum) of the
        per-token log-probs log p(y_t | x, y_<t) over that sequence's completion tokens only, i.e. the response
        tokens the model predicts after the prompt, including the closing EOS/end-of-turn token the template
        appends; prompt tokens and padding do not count. Values are <= 0. P = exp(mean) is the paper's
        length-normalised likelihood P_theta(y|x).
      * odds(y) = P / (1 - P), log-odds(y) = log P - log(1 - P), with log(1 - P) = log1mexp(log P). log P is
        first clamped to at most LOGP_MAX = -1e-7 (P = 1 would give infinite log-odds and NaN gradients).
      * `log_odds` = log-odds(chosen) - log-odds(rejected): positive when the model prefers the chosen response.
        `or_loss` = mean over pairs of -log sigmoid(log_odds) >= 0, lower is better; it is minimised by raising
        the chosen odds relative to the rejected ones.
      * `nll` is the paper's SFT term, a scalar the caller computes: the mean negative log-likelihood (positive)
        over the CHOSEN completion tokens of the whole batch, averaged per token, not per sequence (rejected
        tokens and padding excluded; prompt tokens excluded unless the caller opts into a prompt loss). It is
        passed through unchanged (upcast) and gradients flow into it.
      * `beta` is ORPO's lambda, the weight of the odds-ratio term (the paper uses 0.1 to 0.25; the CLI calls it
        `dpo_beta` for compatibility with autotrain). beta = 0 gives loss == nll. It also scales the logged
        rewards, as TRL does.

    Computed in float32 (bf16/fp16 inputs are upcast; float64 inputs stay float64). Finite loss and gradients for
    any logps in [-1e4, 0], 0 included. Algebraically the same as TRL's ORPOTrainer, whose
    log_odds = (c - r) - (log1p(-exp(c)) - log1p(-exp(r))) and loss = nll - beta * logsigmoid(log_odds).mean().
    """
    if chosen_logps.dim() != 1 or chosen_logps.shape != rejected_logps.shape:
        raise ValueError(
            f"orpo_loss needs chosen_logps and rejected_logps of the same shape [B], got "
            f"{tuple(chosen_logps.shape)} and {tuple(rejected_logps.shape)}"
        )
    if chosen_logps.numel() == 0:
        raise ValueError("orpo_loss needs at least one preference pair, got B = 0")
    if nll.dim() != 0:
        raise ValueError(f"orpo_loss needs nll as a scalar (0-dim) tensor, got shape {tuple(nll.shape)}")
    dtype = compute_dtype(chosen_logps, rejected_logps, nll)
    chosen = chosen_logps.to(dtype)
    rejected = rejected_logps.to(dtype)
    nll = nll.to(dtype)

    def log_odds_of(logp: Tensor) -> Tensor:
        logp = logp.clamp(max=LOGP_MAX)
        return logp - log1mexp(logp)

    log_odds = log_odds_of(chosen) - log_odds_of(rejected)
    log_odds_ratio = F.logsigmoid(log_odds)
    or_loss = -log_odds_ratio.mean()
    return OrpoOutput(
        loss=nll + beta * or_loss,
        nll=nll,
        or_loss=or_loss,
        log_odds=log_odds,
        log_odds_ratio=log_odds_ratio,
        chosen_rewards=(beta * chosen).detach(),
        rejected_rewards=(beta * rejected).detach(),
    )


@dataclass(frozen=True)
class CpoOutput:
    """CPO's or SimPO's loss and its parts: `loss`, `pair_losses`, `margin` and `nll` are graph-attached, the rewards
    detached. Per-pair tensors are [B], the rest 0-dim."""

    loss: Tensor  # scalar: mean of pair_losses + alpha * nll
    pair_losses: Tensor  # [B]: -log sigmoid(beta * (chosen - rejected) - gamma)
    nll: Tensor  # scalar: the nll passed in (upcast), whatever alpha (reported even when it is not trained on)
    margin: Tensor  # [B]: beta * (chosen - rejected) - gamma, the argument of log sigmoid
    chosen_rewards: Tensor  # [B]: beta * chosen log-prob (CPO: summed, SimPO: mean), detached ("rewards/chosen")
    rejected_rewards: Tensor  # [B]: beta * rejected log-prob, detached                          ("rewards/rejected")


def cpo_loss(chosen_logps: Tensor, rejected_logps: Tensor, nll: Tensor, beta: float, alpha: float,
             gamma: float = 0.0) -> CpoOutput:
    """CPO: L = mean over pairs of -log sigmoid(beta * (log pi(c) - log pi(r)) - gamma) + alpha * NLL.

    Conventions:
      * `chosen_logps` / `rejected_logps` are [B]: the SUM (not the mean) of each completion's token log-probs, the
        prompt excluded (the CPO paper's log pi(y|x); TRL's CPOTrainer with loss_type "sigmoid"). `simpo_loss` passes
        means instead.
      * `nll` is a scalar: the mean NLL (positive) over the chosen completion tokens of the batch, per token (the
        paper's behaviour-cloning term). It is always returned; it enters the loss weighted by `alpha` (1.0 in the
        paper and in TRL; alpha = 0 leaves it out, and then no gradient flows into it).
      * `gamma` is SimPO's target margin (0 for CPO): subtracted from beta * (c - r) inside log sigmoid, so a pair
        stops contributing only once its reward margin exceeds gamma. TRL writes it as beta * (c - r - gamma / beta).
      * rewards are beta * log-prob, as TRL logs them; beta = 0 gives the constant log(1 + e^gamma) and no gradient.
    log sigmoid is evaluated stably for any margin. Computed in float32 (float64 inputs stay float64).
    """
    if chosen_logps.dim() != 1 or chosen_logps.shape != rejected_logps.shape or chosen_logps.numel() == 0:
        raise ValueError(f"cpo_loss needs chosen_logps and rejected_logps of one shape [B], B >= 1, got "
                         f"{tuple(chosen_logps.shape)} and {tuple(rejected_logps.shape)}")
    if nll.dim() != 0:
        raise ValueError(f"cpo_loss needs nll as a scalar (0-dim) tensor, got shape {tuple(nll.shape)}")
    dtype = compute_dtype(chosen_logps, rejected_logps, nll)
    chosen, rejected, nll = chosen_logps.to(dtype), rejected_logps.to(dtype), nll.to(dtype)
    margin = beta * (chosen - rejected) - gamma
    pair_losses = -F.logsigmoid(margin)
    loss = pair_losses.mean() + alpha * nll if alpha else pair_losses.mean()
    return CpoOutput(
        loss=loss,
        pair_losses=pair_losses,
        nll=nll,
        margin=margin,
        chosen_rewards=(beta * chosen).detach(),
        rejected_rewards=(beta * rejected).detach(),
    )


def simpo_loss(chosen_sums: Tensor, rejected_sums: Tensor, chosen_counts: Tensor, rejected_counts: Tensor,
               nll: Tensor, beta: float, gamma: float, alpha: float = 0.0) -> CpoOutput:
    """SimPO: L = mean over pairs of -log sigmoid(beta * (c / |c| - r / |r|) - gamma), plus alpha * NLL (CPO-SimPO).

    `chosen_sums` / `rejected_sums` [B] are summed completion-token log-probs (prompt excluded) and the counts [B]
    their completion tokens, the closing EOS / end-of-turn token included: SimPO's reward is beta times the MEAN
    token log-prob, beta / |y| * log pi(y|x) (TRL's CPOTrainer with loss_type "simpo" averages the same tokens). A
    count of 0 reads as 1 (the collators never produce an empty completion). The paper's beta is 2.0 to 2.5 and
    gamma / beta about 0.5; alpha = 0 is SimPO itself, alpha > 0 adds CPO's NLL term (TRL's default cpo_alpha 1.0
    with loss_type "simpo" is CPO-SimPO, not SimPO). Rewards are beta times the mean log-probs.
    """
    shapes = {tuple(t.shape) for t in (chosen_sums, rejected_sums, chosen_counts, rejected_counts)}
    if len(shapes) != 1:
        raise ValueError(f"simpo_loss needs four tensors of one shape [B], got {sorted(shapes)}")
    dtype = compute_dtype(chosen_sums, rejected_sums)
    chosen = chosen_sums.to(dtype) / chosen_counts.to(dtype).clamp(min=1)
    rejected = rejected_sums.to(dtype) / rejected_counts.to(dtype).clamp(min=1)
    return cpo_loss(chosen, rejected, nll, beta, alpha, gamma)


# The per-pair columns (PairTerms.columns) that the reduction itself reads; every other column is a metric reported as
# its mean over pairs.
NLL, NLL_TOKENS, PAIR_LOSS, PAIRS = "nll_sum", "nll_tokens", "pair_loss", "pairs"
_OWN_COLUMNS = (NLL, NLL_TOKENS, PAIR_LOSS, PAIRS)


def step_loss(nll_sum: Tensor, pair_loss_sum: Tensor, num_tokens: Tensor | float, num_pairs: Tensor | float,
              nll_weight: float) -> Tensor:
    """nll_weight * nll_sum / num_tokens + pair_loss_sum / num_pairs: the reduction of the module docstring.

    `nll_sum` and `pair_loss_sum` are sums over some pairs (a micro-batch, a step, a split); the counts are those of
    whatever the loss is normalised over (the step's, for a micro-batch's share). A count of 0 reads as 1 (its sum
    is then 0 too), so the result stays finite; nll_weight 0 leaves the NLL out altogether (DPO).
    """
    loss = pair_loss_sum / _at_least_one(num_pairs)
    if nll_weight:
        loss = loss + nll_weight * nll_sum / _at_least_one(num_tokens)
    return loss


def reduce_columns(sums: Mapping[str, Tensor | float], nll_weight: float) -> dict[str, Tensor | float]:
    """Metrics from column sums (each PairTerms column summed over any set of pairs): `loss` (step_loss over those
    pairs), `nll_loss` (the token mean of their NLL) and every other column's mean over the pairs. Tensors or floats."""
    pairs = sums[PAIRS]
    nll_loss = sums[NLL] / _at_least_one(sums[NLL_TOKENS])
    metrics = {"loss": step_loss(sums[NLL], sums[PAIR_LOSS], sums[NLL_TOKENS], pairs, nll_weight), "nll_loss": nll_loss}
    metrics.update({name: value / _at_least_one(pairs) for name, value in sums.items() if name not in _OWN_COLUMNS})
    return metrics


def pair_counts(batch: Mapping[str, Any]) -> tuple[Tensor, Tensor | int]:
    """(NLL targets, pairs) of one micro-batch (the batch contract of autotrain.data.batch), as the step's reduction
    counts them: with a `pair_weight` [B], each pair and each of its NLL targets at its weight, in float64 (float32
    on MPS, which has no float64); without, the target count (a device sum) and the pair count (a host int)."""
    weight = batch.get("pair_weight")
    if weight is None:
        return batch["in_nll"].sum(), batch["num_pairs"]
    weight = weight.to(torch.float32 if weight.device.type == "mps" else torch.float64)
    per_target = weight[batch["target_seq"] % batch["num_pairs"]]  # NLL targets are chosen's: pair i, sequence i
    return torch.where(batch["in_nll"], per_target, 0.0).sum(), weight.sum()


def _at_least_one(count: Tensor | float) -> Tensor | float:
    return count.clamp(min=1) if isinstance(count, Tensor) else max(count, 1)


@dataclass(frozen=True)
class PairTerms:
    """One micro-batch of a method, per pair: what every reduction of the module docstring is computed from.

    `nll` and `pair_loss` are attached to the autograd graph; `metrics` are detached. All are [B] (B pairs; SFT: B
    examples), float32.
    """

    nll: Tensor  # [B] sum of NLL over each pair's NLL targets (`in_nll`)
    nll_tokens: Tensor  # [B] the number of those targets
    pair_loss: Tensor  # [B] each pair's preference term, its weight included (ORPO: beta * L_OR); zeros for SFT
    nll_weight: float  # 1.0 when the NLL is part of the loss (ORPO, SFT), 0.0 when it is only reported (DPO)
    metrics: dict[str, Tensor] = field(default_factory=dict)  # [B] per-pair values, reported as means over pairs
    # A scalar term defined per micro-batch, weight included (e.g. an MoE router's auxiliary loss), which the step
    # averages over its micro-batches; not part of the per-pair evaluation reduction.
    batch_term: Tensor | None = None
    # [B] each pair's weight in every reduction (ranked answers: 1 / the pairs of its prompt); None: 1 each.
    weight: Tensor | None = None

    def _weighted(self, value: Tensor) -> Tensor:
        return value if self.weight is None else value * self.weight.to(value.dtype)

    def loss(self, num_tokens: Tensor | float | None = None, num_pairs: Tensor | float | None = None,
             num_batches: Tensor | float | None = None) -> Tensor:
        """This micro-batch's share of the loss of a step with `num_tokens` NLL targets, `num_pairs` pairs and
        `num_batches` micro-batches; by default the micro-batch alone (its own loss)."""
        own_pairs = self.pair_loss.shape[0] if self.weight is None else self.weight.sum()
        loss = step_loss(
            self._weighted(self.nll).sum(),
            self._weighted(self.pair_loss).sum(),
            self._weighted(self.nll_tokens).sum() if num_tokens is None else num_tokens,
            own_pairs if num_pairs is None else num_pairs,
            self.nll_weight,
        )
        if self.batch_term is not None:
            loss = loss + self.batch_term / _at_least_one(1 if num_batches is None else num_batches)
        return loss

    def columns(self) -> dict[str, Tensor]:
        """Every per-pair value, detached, by name: what an evaluation gathers and a logging window sums."""
        own = {NLL: self.nll, NLL_TOKENS: self.nll_tokens, PAIR_LOSS: self.pair_loss,
               PAIRS: torch.ones_like(self.nll_tokens)}
        return {name: self._weighted(value.detach().float()) for name, value in {**own, **self.metrics}.items()}

    def batch_metrics(self) -> dict[str, Tensor]:
        """This micro-batch's metrics on its own (TRL's names): nll_loss and the means over its pairs."""
        metrics = reduce_columns({name: value.sum() for name, value in self.columns().items()}, self.nll_weight)
        del metrics["loss"]
        return metrics
