"""The router load-balancing loss of mixture-of-experts models (Mixtral, Qwen3-MoE, ...), on padded and packed batches.

transformers' MoE models compute this auxiliary loss in their forward, from the 2-D attention mask; a packed batch has
none (its mask is 4-D, a BlockMask or absent), and its 4-D mask crashes `load_balancing_loss_func`. So the model is
asked for its router logits only (the decoder returns them; the outer forward computes nothing), and the loss is
computed here with the family's own `load_balancing_loss_func` and a weight per token:

    padded layout      the attention mask (1 real, 0 padding): what the model's forward, and so TRL, computes;
    packed layout      0 padding, 1 a completion token, 2 a shared prompt token of a preference pair.

The function averages the routing statistics over the tokens, weighting each by its mask value, and the padded layout
holds each prompt twice (once per side): weight 2 on a shared prompt token gives the padded layout's loss exactly. In
the per-sequence packed layout (varlen kernels) each side holds its own copy of the prompt, weight 1; so does a
supervised (SFT) row, whose prompt appears once in either layout.

As TRL's ORPOTrainer does, the loss is added only when the model's config sets `output_router_logits`, weighted by
its `router_aux_loss_coef`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from autotrain.batch.packed import PROMPT, REJECTED, part_of
from autotrain.errors import ModelError
from autotrain.private import load_balancing_loss

__all__ = ["RouterLoss", "ask_for_router_logits", "router_loss", "token_weights"]


@dataclass(frozen=True)
class RouterLoss:
    """What one model's auxiliary loss needs: coef * function(router_logits, num_experts, top_k, weights)."""

    coef: float
    function: Callable[..., torch.Tensor]
    num_experts: int
    top_k: int

    def __call__(self, router_logits: tuple[torch.Tensor, ...], batch: dict[str, Any]) -> torch.Tensor:
        """coef * the load-balancing loss over the batch's real tokens (see the module docstring)."""
        return self.coef * self.function(router_logits, self.num_experts, self.top_k, token_weights(batch))


def router_loss(model: torch.nn.Module) -> RouterLoss | None:
    """The auxiliary loss `model` (a transformers causal LM, no wrapper) asks for, or None when it asks for none."""
    config = model.config.get_text_config()
    if not getattr(config, "output_router_logits", False):
        return None
    coef = float(getattr(config, "router_aux_loss_coef", 0.0) or 0.0)
    if coef == 0.0:
        return None
    # The family's own function, as its forward calls it (module-level in every transformers MoE modeling file).
    function = load_balancing_loss(model)
    experts, top_k = getattr(model, "num_experts", None), getattr(model, "num_experts_per_tok", None)
    if function is None or experts is None or top_k is None:
        raise ModelError(
            f"output_router_logits: {type(model).__name__} computes its router loss in a way this tool does not know; "
            "set output_router_logits to false in the model's config.json to train without it"
        )
    return RouterLoss(coef, function, int(experts), int(top_k))


def ask_for_router_logits(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict]:
    """A forward pre-hook (with_kwargs=True) for the decoder: return the router logits, whatever the caller said."""
    return args, {**kwargs, "output_router_logits": True}


def token_weights(batch: dict[str, Any]) -> torch.Tensor:
    """[rows, T] weight of each position in the load-balancing statistics (module docstring), on the batch's device.

    Tensor ops only, no host read. Packed segment ids: autotrain.batch.packed's encoding (the per-sequence layout
    marks every sequence CHOSEN).
    """
    if "segment_ids" not in batch:
        return batch["attention_mask"]
    segments = batch["segment_ids"]
    real = segments >= 0
    shared_prompt = real & (part_of(segments) == PROMPT)
    # A preference batch has a rejected side for every pair, a supervised one for none (padding reads REJECTED: mask).
    paired = (real & (part_of(segments) == REJECTED)).any()
    return real.float() + (shared_prompt & paired).float()
