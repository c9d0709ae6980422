"""One packed mask per attention-layer type: full attention, and sliding windows counted in each sequence's positions.

transformers 5 models whose layers differ (Gemma 2 and 3, Cohere 2, Qwen2 with `use_sliding_window`, ...) list them
in `config.layer_types` and, when `attention_mask` is a dict, hand each layer the mask of its type
(`if not isinstance(causal_mask_mapping := attention_mask, dict)` in their decoder's forward). Models without
`layer_types` (Mistral, Mixtral, Phi-3, Starcoder2, ...) apply `config.sliding_window`, when set, to every layer,
and take one 4-D mask for all of them.

A sliding layer lets query q see key k only when k is among the last `window` positions up to q
(masking_utils.sliding_window_overlay: k > q - window). In a packed row the distance is taken between the two
tokens' `position_ids`, not their places in the row: every key a query may see (autotrain.batch.packed) belongs to the
query's own sequence, whose positions are those it has alone, so the rejected sequence, whose positions restart
after the shared prompt, counts its distance to the prompt exactly as if it were a separate row.

The varlen (flash) kernels need nothing from here: each layer passes its own `sliding_window` to the kernel as
`window_size` (modeling_flash_attention_utils), and their per-sequence layout restarts positions at every sequence.
"""

from __future__ import annotations

import inspect
import re
from typing import Any, Callable, TypeVar

import torch
from torch import Tensor

__all__ = ["ALL_LAYERS", "FULL", "SLIDING", "layer_windows", "per_layer", "unpackable_layers", "within_window",
           "windowed_mask_mod"]

FULL, SLIDING = "full_attention", "sliding_attention"
ALL_LAYERS = ""  # the key of the one mask a model without layer types applies to every layer

# transformers' idiom for "a dict of masks per layer type is used as is".
_TAKES_DICT = re.compile(r"isinstance\(\s*(?:\w+\s*:=\s*)?attention_mask\s*,\s*dict\s*\)")

Mask = TypeVar("Mask")


def _text_config(config: Any) -> Any:
    # A multimodal model (Gemma 3 from 4B up loads as Gemma3ForConditionalGeneration) keeps them in its text config.
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def layer_windows(config: Any) -> dict[str, int | None]:
    """Layer type -> the window its mask needs (None: full causal), as the model's own mask functions decide it.

    One entry keyed ALL_LAYERS for a model without `layer_types`.
    """
    text = _text_config(config)
    window = getattr(text, "sliding_window", None) if getattr(text, "use_sliding_window", True) else None
    types = getattr(text, "layer_types", None)
    if not types:
        return {ALL_LAYERS: window or None}
    return {kind: (window or None) if kind == SLIDING else None for kind in dict.fromkeys(types)}


def unpackable_layers(config: Any, decoder: torch.nn.Module, per_sequence: bool) -> str | None:
    """Why this model's layers cannot take a packed mask, or None when they can.

    `per_sequence`: the varlen kernels, which take no mask (each layer's window goes to the kernel itself).
    """
    types = list(dict.fromkeys(getattr(_text_config(config), "layer_types", None) or []))
    other = [kind for kind in types if kind not in (FULL, SLIDING)]
    if other:
        # Linear-attention, recurrent or chunked layers would carry state, or see keys, across the pairs of a row.
        return f"layer types {types}: {', '.join(other)} layers take no packed mask"
    if len(types) > 1 and not per_sequence and not _takes_mask_dict(decoder):
        return f"layer types {types}: {type(decoder).__name__} takes no mask per layer type"
    return None


def _takes_mask_dict(decoder: torch.nn.Module) -> bool:
    try:
        source = inspect.getsource(type(decoder).forward)
    except (OSError, TypeError):
        return False
    return bool(_TAKES_DICT.search(source))


def per_layer(windows: dict[str, int | None], build: Callable[[int | None], Mask]) -> Mask | dict[str, Mask]:
    """`build(window)` once per distinct window: the one mask, or a dict from layer type to its mask."""
    built: dict[int | None, Mask] = {}
    for window in windows.values():
        if window not in built:
            built[window] = build(window)
    if len(built) == 1:
        return next(iter(built.values()))
    return {kind: built[window] for kind, window in windows.items()}


def within_window(position_ids: Tensor, window: int) -> Tensor:
    """position_ids [R, T] -> boolean [R, 1, T, T]: the key (dim 3) is among the query's (dim 2) last `window`
    positions. Combined with the packed segment rule, which only ever pairs tokens of one sequence."""
    distance = position_ids[:, :, None] - position_ids[:, None, :]
    return (distance < window)[:, None]


def windowed_mask_mod(mask_mod: Callable[..., Tensor], positions: Tensor, window: int) -> Callable[..., Tensor]:
    """A flex_attention mask_mod that also keeps the key within `window` of the query's position (positions [R, T'],
    padded as far as the segment table the mask_mod reads)."""

    def windowed(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return mask_mod(b, h, q, kv) & (positions[b, q] - positions[b, kv] < window)

    return windowed
