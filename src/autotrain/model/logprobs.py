"""Per-token log-probs without materialising the tokens x vocab logits, and per-sequence reductions of them.

A preference batch needs log p(target) only at its target positions, and one float32 logit row costs vocab * 4
bytes (600 KB for a 150k vocabulary), so a full [tokens, vocab] logits tensor, plus the softmax that autograd
keeps for backward, is often the largest allocation of a step. `token_logps` runs the LM head only on the
positions it is given, a chunk at a time, and, past one chunk, under activation checkpointing: the backward pass
recomputes each chunk's logits instead of keeping them, so peak head memory is about chunk_size x vocab, independent
of N.

This module imports nothing but torch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

__all__ = ["segment_mean", "segment_sum", "token_logps"]


class _TargetLogp(torch.autograd.Function):
    """logits [n, V], targets [n] -> logits[i, targets[i]] - logsumexp(logits[i]), computed by the same two ops as
    the plain expression (so the same values), with a backward in one [n, V] pass: g * (onehot(target) - softmax).
    Autograd's own backward of the expression builds a zero [n, V] tensor for the gather's gradient, scatters into it
    and adds it to the log-sum-exp's: two more full passes over the logits."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, targets: Tensor) -> Tensor:
        picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        lse = torch.logsumexp(logits, dim=-1)
        ctx.save_for_backward(logits, targets, lse)
        return picked - lse

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        logits, targets, lse = ctx.saved_tensors
        grad_logits = (logits - lse.unsqueeze(-1)).exp_().mul_(-grad.unsqueeze(-1))
        return grad_logits.scatter_add_(-1, targets.unsqueeze(-1), grad.unsqueeze(-1)), None


def _chunk_logps(
    hidden: Tensor, targets: Tensor, head: torch.nn.Module, softcap: float | None, logit_scale: float | None
) -> Tensor:
    # Upcast before scaling and capping: the log-softmax of bf16 logits loses ~3 significant digits.
    logits = head(hidden)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if logit_scale is not None:
        logits = logits * logit_scale
    if softcap is not None:  # Gemma 2's final-logit soft-capping
        logits = torch.tanh(logits / softcap) * softcap
    return _TargetLogp.apply(logits, targets)


def token_logps(
    hidden: Tensor,
    head: torch.nn.Module,
    targets: Tensor,
    *,
    chunk_size: int = 1024,
    softcap: float | None = None,
    logit_scale: float | None = None,
) -> Tensor:
    """hidden [N, H] (already selected positions), targets [N] int64 -> [N] float32 log p(target | position).

    The result is float32 whatever the head's dtype (float64 if the head computes in float64).

    For each position, logits = head(hidden) (any module mapping [n, H] -> [n, V]: an nn.Linear with or without
    bias, a peft LoRA-wrapped Linear, a Linear tied to the input embedding), upcast to float32, then multiplied
    by `logit_scale` if given (Cohere), then soft-capped as tanh(logits / softcap) * softcap if `softcap` is
    given (Gemma 2); log p = logits[target] - logsumexp(logits).

    The head runs on at most `chunk_size` rows at a time. N <= chunk_size (a CPU micro-batch, most single GPU
    batches of short pairs) runs as one chunk whose [N, V] logits autograd keeps for backward: recomputing them would
    materialise the same chunk at the start of backward, when every activation is still held, so keeping it costs no
    peak memory and saves a third of the head's matmuls. A larger N runs in chunks under non-reentrant activation
    checkpointing: only each chunk's inputs are kept, and backward recomputes its logits (one extra head matmul per
    chunk, the usual checkpointing trade), so the head's memory stays about chunk_size x V whatever N. Checkpointing
    restores the RNG and autocast state, so a LoRA dropout mask or an autocast dtype is the same in the
    recomputation. Targets must lie in [0, V); no ignore index is handled here (select the positions beforehand).
    N = 0 gives an empty tensor.
    """
    if hidden.dim() != 2:
        raise ValueError(f"token_logps needs hidden as [N, H], got shape {tuple(hidden.shape)}")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(
            f"token_logps needs targets as [N] with N = {hidden.shape[0]} (hidden's rows), got shape "
            f"{tuple(targets.shape)}"
        )
    if chunk_size < 1:
        raise ValueError(f"token_logps needs chunk_size >= 1, got {chunk_size}")
    targets = targets.long()
    n = hidden.shape[0]
    if n <= chunk_size:  # one chunk (or none: the head still runs, so the result stays in the autograd graph)
        return _chunk_logps(hidden, targets, head, softcap, logit_scale)
    out = []
    for start in range(0, n, chunk_size):
        h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        if torch.is_grad_enabled():
            out.append(checkpoint(_chunk_logps, h, t, head, softcap, logit_scale, use_reentrant=False))
        else:
            out.append(_chunk_logps(h, t, head, softcap, logit_scale))
    return out[0] if len(out) == 1 else torch.cat(out)


def segment_sum(values: Tensor, segment_ids: Tensor, num_segments: int) -> Tensor:
    """Sum of `values` [N] per segment: [num_segments], entry s = sum of values[i] with segment_ids[i] == s.

    `segment_ids` [N] are integers in [0, num_segments), in any order (not checked: an id out of range raises
    on CPU and is a device-side assert on CUDA). An empty segment sums to 0. Differentiable w.r.t. `values`.
    """
    if values.shape != segment_ids.shape or values.dim() != 1:
        raise ValueError(
            f"segment_sum needs values and segment_ids of the same shape [N], got {tuple(values.shape)} "
            f"and {tuple(segment_ids.shape)}"
        )
    return values.new_zeros(num_segments).index_add(0, segment_ids.long(), values)


def segment_mean(values: Tensor, segment_ids: Tensor, num_segments: int) -> Tensor:
    """Mean of `values` [N] per segment id in [0, num_segments) -> [num_segments].

    An empty segment (no id equal to it) gives 0, not NaN, and no gradient flows anywhere from it; callers that
    can have empty sequences should mask them out rather than read 0 as a log-prob. `values` must be floating
    point; the result has its dtype. Differentiable w.r.t. `values`.
    """
    if not values.is_floating_point():
        raise ValueError(f"segment_mean needs floating-point values, got {values.dtype}")
    sums = segment_sum(values, segment_ids, num_segments)
    # Not torch.bincount: on CUDA it reads max(ids) back to size its output, a host sync every step.
    ones = torch.ones(values.shape, dtype=torch.float32, device=values.device)  # counts exact to 2**24
    counts = segment_sum(ones, segment_ids, num_segments).clamp(min=1)
    return sums / counts.to(sums.dtype)
