"""The forward pass every method shares: the model body once, the LM head only at the batch's targets.

`sequence_logps` gives each sequence's summed and mean completion log-prob, its NLL terms and, for a mixture-of-
experts model that asks for it, the router loss; a method (autotrain.params.methods) turns these into its loss terms with
a pure function of autotrain.train.losses. The chunked head is autotrain.model.logprobs'; the model's head is found by
autotrain.model.head; the mask of a packed batch is autotrain.model.kernels'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from autotrain.errors import ModelError
from autotrain.model import moe
from autotrain.model.head import decoder_and_head
from autotrain.model.kernels import decoder_inputs
from autotrain.model.loading import unwrap
from autotrain.model.logprobs import segment_sum, token_logps

__all__ = ["SequenceLogps", "sequence_logps"]


@dataclass(frozen=True)
class SequenceLogps:
    """Completion log-probs of a batch's 2B sequences (chosen i is row i, rejected i is row B + i)."""

    sums: torch.Tensor  # [2B] sum of completion-token log-probs per sequence (DPO's log pi(y|x); LD-DPO-weighted)
    counts: torch.Tensor  # [2B] completion tokens per sequence (0 for the absent rejected side of SFT)
    nll: torch.Tensor  # scalar: mean NLL over the batch's `in_nll` targets
    pairs: int
    nll_sums: torch.Tensor  # [2B] summed NLL of each sequence's `in_nll` targets (only chosen sequences have any)
    nll_counts: torch.Tensor  # [2B] the number of those targets
    # coef * the MoE router load-balancing loss when the model's config asks for it (autotrain.model.moe), else None;
    # every method adds it to its loss, as TRL does (a per-micro-batch term: PairTerms.batch_term).
    router_loss: torch.Tensor | None = None

    @property
    def means(self) -> torch.Tensor:  # [2B] mean completion-token log-prob (ORPO's length-normalised log P)
        return self.sums / self.counts.clamp(min=1)

    def split(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return values[: self.pairs], values[self.pairs :]


def sequence_logps(model: torch.nn.Module, batch: dict[str, Any], own_logits: int = 0) -> SequenceLogps:
    """Run the model body once and the LM head only at the batch's targets (the batch contract: autotrain.batch.contract).

    Takes a padded or a packed batch (autotrain.batch.packed); autotrain.model.kernels turns the latter's segment ids into
    the mask the model's attention kernel takes. The call goes through the outermost module, so a DDP, FSDP or
    DeepSpeed wrapper sees a normal forward (gradient sync, parameter gathering); a forward hook on the decoder
    takes its hidden states and runs the chunked head inside that forward, while the model's own head runs on no
    position (`logits_to_keep` an empty index; `own_logits` > 0 keeps that many last positions per row, for a check
    to compare with). An int 1 would cost a [rows, 1, H] by [H, V] product that torch runs as a batched matmul with
    the weight expanded per row (the slice is not contiguous), reading the whole head once per row; and given an
    int, Gemma 4 computes its KV-sharing layers for the kept positions only. No step here reads a device value back
    to the host: targets are
    selected by index and masked by `torch.where`, never by boolean indexing (a `nonzero`, hence a sync, on CUDA).
    A mixture-of-experts model whose config sets `output_router_logits` also gives its router logits, from which
    `router_loss` is computed over the batch's real tokens in either layout (autotrain.model.moe).
    """
    inner = unwrap(model)
    decoder, head, extras = decoder_and_head(inner)
    router = moe.router_loss(inner)
    found: list[torch.Tensor] = []
    routed: list[Any] = []

    def take_hidden(module: torch.nn.Module, args: Any, output: Any) -> None:
        hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
        hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch["hidden_index"])
        found.append(
            token_logps(hidden, head, batch["target_ids"], softcap=extras["softcap"], logit_scale=extras["logit_scale"])
        )
        if router is not None:
            routed.append(getattr(output, "router_logits", None))

    handles = [decoder.register_forward_hook(take_hidden)]
    extra: dict[str, Any] = {}
    if router is not None:
        # The decoder returns the router logits; the outer forward must not compute the loss from the batch's mask,
        # which is 4-D when packed (autotrain.model.moe).
        handles.append(decoder.register_forward_pre_hook(moe.ask_for_router_logits, with_kwargs=True))
        extra["output_router_logits"] = False
    try:
        # The last `own_logits` positions as an index tensor, never an int (see above); none by default.
        width = batch["input_ids"].shape[-1]
        keep = torch.arange(width - own_logits, width, device=batch["input_ids"].device)
        model(**decoder_inputs(inner, batch), use_cache=False, logits_to_keep=keep, **extra)
    finally:
        for handle in handles:
            handle.remove()
    (logps,) = found
    router_term: torch.Tensor | None = None
    if router is not None:
        if routed[0] is None or len(routed[0]) == 0:
            raise ModelError(f"output_router_logits: {type(decoder).__name__} returned no router logits")
        router_term = router(routed[0], batch)
    n = 2 * batch["num_pairs"]
    keep = batch["in_completion"]
    # Dropped entries add an exact 0 to their segment's sum and count (torch.where, not a product: 0 * -inf is NaN).
    # LD-DPO's weights (autotrain.batch.contract) scale the completion targets past the pair's shared length.
    weight = batch.get("completion_weight")
    sums = segment_sum(torch.where(keep, logps if weight is None else logps * weight, 0.0), batch["target_seq"], n)
    counts = segment_sum(keep.to(logps.dtype), batch["target_seq"], n)
    nll = -_masked_mean(logps, batch["in_nll"])
    nll_sums = -segment_sum(torch.where(batch["in_nll"], logps, 0.0), batch["target_seq"], n)
    nll_counts = segment_sum(batch["in_nll"].to(logps.dtype), batch["target_seq"], n)
    return SequenceLogps(sums, counts, nll, batch["num_pairs"], nll_sums, nll_counts, router_term)


def _masked_mean(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    # No kept entry gives NaN, as the mean of an empty selection does (the collators never produce one).
    return torch.where(keep, values, 0.0).sum() / keep.sum().to(values.dtype)
