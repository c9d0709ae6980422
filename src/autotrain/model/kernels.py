"""Which attention kernel runs a packed batch, and the mask that kernel takes; the collator each model gets.

A packed row (autotrain.batch.packed) needs a mask that is neither causal over the row nor a padding mask. Each
attention implementation of transformers 5 takes it its own way:

    config._attn_implementation   layout            what the decoder receives
    sdpa                          shared prompt     boolean [R, 1, T, T] attention_mask
    eager                         shared prompt     additive float [R, 1, T, T] attention_mask (0 or dtype min)
    flex_attention                shared prompt     a flex_attention BlockMask (masked 128x128 blocks are skipped)
    flash_attention_2 / _3        one segment per   position_ids and cu_seq_lens_* / max_length_* (varlen);
                                  sequence          the prompt is computed twice, as flash cannot express
                                                    "rejected sees the prompt but not chosen"
    anything else                 padded            PaddedFallback (its first batch logs why and what it costs)

transformers passes a 4-D attention_mask (tensor or BlockMask) to the attention layers as is
(masking_utils._preprocess_mask_arguments returns early on it), which is what makes the first three work. A model
whose layers differ in type (sliding windows next to full attention: Gemma 2 and 3, Cohere 2, Qwen2 with windows)
gets a dict of such masks, one per layer type (autotrain.model.layer_masks); the varlen kernels take each layer's
window from the layer itself. Gemma 2's attention softcapping is applied by the kernel: eager (its default; it has
no SDPA) softcaps before adding the mask, flex_attention in transformers' score_mod.

Only the SDPA and eager paths train in this project's tests (CPU); flex runs forward only there (CPU flex_attention
has no backward), and varlen against a plain-torch stand-in for flash-attn. The flex and varlen paths follow the
documented APIs of torch (create_block_mask) and transformers (FlashAttentionKwargs) but have not run on a GPU here.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from autotrain.batch.packed import PAD_SEGMENT, PackedCollator, dense_mask, segment_mask_mod
from autotrain.batch.padded import PaddedCollator
from autotrain.model.block_mask import strip_block_mask
from autotrain.model.kernel_dtypes import use_one_dtype
from autotrain.model.layer_masks import layer_windows, per_layer, unpackable_layers, windowed_mask_mod, within_window
from autotrain.model.loading import unwrap
from autotrain.model.vision_collate import vision_inputs
from autotrain.private import attention_of

logger = logging.getLogger("autotrain")

__all__ = ["DENSE_TOKEN_BUDGET", "EAGER_TOKEN_BUDGET", "KERNELS", "PaddedFallback", "decoder_inputs", "make_collator",
           "packing_kernel"]

# config._attn_implementation -> how a packed batch reaches it.
KERNELS = {
    "sdpa": "dense",
    "eager": "additive",
    "flex_attention": "flex",
    "flash_attention_2": "varlen",
    "flash_attention_3": "varlen",
}

# Tokens per packed row for the dense-mask kernels. SDPA with an explicit mask computes every [T, T] score of a row,
# masked or not, so a longer row buys no less padding but more attention work; on the 2-core CPU bench
# (bench/orpo_bench.py, rows of 512 to 2,560 tokens) a step took about 1.4x as long at 2,048 tokens a row as at
# 512 to 1,024. A pair longer than the budget still gets a row of its own. Flex and varlen skip masked work, so they
# pack the whole batch into one row.
DENSE_TOKEN_BUDGET = 1024
# Eager attention materialises every fp32 score of a row, several times (softcap, mask, softmax, their gradients), so
# it pays the square of the row length more dearly: on the Gemma-2-shaped CPU bench model (bench/orpo_bench.py
# --family gemma2), a forward and backward of 8 pairs took 17.0 CPU s in rows of 1,007 tokens, 13.0 s in rows of 560
# (one pair each), 11.8 s padded (16 rows of 350, the prompt twice).
EAGER_TOKEN_BUDGET = 512

# flex_attention's default block size; the BlockMask and the mask_mod lookups are sized in whole blocks.
_FLEX_BLOCK = 128

_logged: set[str] = set()


def packing_kernel(model: torch.nn.Module) -> tuple[str | None, str]:
    """(kernel, why): the KERNELS value that runs a packed batch on this model, or None and the reason it can't."""
    base = unwrap(model)
    config = base.config
    impl = attention_of(config)
    if impl not in KERNELS:
        return None, f"attention implementation '{impl}' takes no custom mask"
    if getattr(config, "is_encoder_decoder", False) or not getattr(config, "is_causal", True):
        return None, "not a causal decoder-only model"
    kernel = KERNELS[impl]
    why = unpackable_layers(config, base.get_decoder(), per_sequence=kernel == "varlen")
    if why is not None:
        return None, why
    if getattr(config, "alibi", False):
        return None, "ALiBi positions are computed from the padding mask, not from position_ids"
    if "position_ids" not in inspect.signature(base.get_decoder().forward).parameters:
        return None, "the decoder takes no position_ids"
    if kernel == "flex" and not _has_flex():
        return None, "flex_attention needs torch >= 2.5"
    return kernel, impl


def _has_flex() -> bool:
    try:
        from torch.nn.attention.flex_attention import create_block_mask  # noqa: F401
    except ImportError:
        return False
    return True


def make_collator(
    packing: bool,
    pad_id: int,
    prompt_loss: bool,
    model: torch.nn.Module | None = None,
    token_budget: int | None = None,
    padding_side: str = "right",
    ld_alpha: float | None = None,
) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """The collator for this model: packed where its attention takes a packed mask, padded otherwise.

    A batch is still `batch_size` pairs (the loss averages over the same pairs and tokens in either layout); the
    packed collator lays them out in one or more rows of about `token_budget` tokens. None chooses per kernel:
    DENSE_TOKEN_BUDGET for sdpa, EAGER_TOKEN_BUDGET for eager, the whole batch in one row for flex and varlen.
    Without a model the packed layout for sdpa is assumed; `decoder_inputs` refuses a batch the model's kernel cannot
    run. A model that cannot take a packed mask gets PaddedFallback, whose first batch says why and what it costs.
    `padding_side` is the padded layout's (packed rows have no padding to place); `ld_alpha` gives every batch
    LD-DPO's `completion_weight` (autotrain.batch.contract).
    """
    use_one_dtype()  # q, k and v in one dtype at every kernel under autocast (autotrain.model.kernel_dtypes)
    if not packing:
        return PaddedCollator(pad_id=pad_id, prompt_loss=prompt_loss, padding_side=padding_side, ld_alpha=ld_alpha)
    kernel, why = packing_kernel(model) if model is not None else ("dense", "no model given")
    if kernel is None:
        return PaddedFallback(pad_id=pad_id, prompt_loss=prompt_loss, padding_side=padding_side, ld_alpha=ld_alpha,
                              reason=why)
    if kernel == "varlen":
        return PackedCollator(pad_id, prompt_loss, token_budget, share_prompt=False, ld_alpha=ld_alpha)
    if kernel == "flex":
        return PackedCollator(pad_id, prompt_loss, token_budget, pad_to_multiple_of=_FLEX_BLOCK, bucketed=True,
                              ld_alpha=ld_alpha)
    default = EAGER_TOKEN_BUDGET if kernel == "additive" else DENSE_TOKEN_BUDGET
    return PackedCollator(pad_id, prompt_loss, token_budget if token_budget is not None else default,
                          ld_alpha=ld_alpha)


@dataclass(frozen=True)
class PaddedFallback(PaddedCollator):
    """The padded layout for a model that cannot take a packed mask; its first batch logs, once per reason, what
    forced it and what it costs."""

    reason: str = ""

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().__call__(features)
        if self.reason not in _logged:
            _logged.add(self.reason)
            padding = 1 - batch["num_real_tokens"] / batch["input_ids"].numel()  # host ints: no device read
            logger.warning(
                f"packing is off for this model ({self.reason}); padded layout: {padding:.0%} of computed tokens are "
                "padding (first batch)"
            )
        return batch


def decoder_inputs(model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
    """The decoder's keyword arguments for a padded or a packed batch; builds the packed mask on the batch's device.

    Nothing here reads a device value back to the host: masks are built with tensor ops from `segment_ids`, and
    the varlen lengths were computed by the collator on the host.
    """
    if "segment_ids" not in batch:  # the padded layout
        args = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if "position_ids" in batch:
            args["position_ids"] = batch["position_ids"]
        args.update(vision_inputs(model, batch, args))  # a vision-language batch's images (and positions)
        return args
    impl = attention_of(unwrap(model).config)
    kernel = KERNELS.get(impl)
    shared = "cu_seq_lens" not in batch
    if kernel is None or (kernel == "varlen" and shared):
        raise ValueError(
            f"this packed batch cannot run on attention implementation '{impl}'; build the collator with "
            "autotrain.model.kernels.make_collator(model=...) so it falls back to a layout this model can run"
        )
    args = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    segment_ids, positions = batch["segment_ids"], batch["position_ids"]
    # One mask per distinct window; a dict keyed by layer type when the layers differ (autotrain.model.layer_masks).
    windows = layer_windows(unwrap(model).config)
    if kernel in ("dense", "additive"):
        allowed = dense_mask(segment_ids)
        dtype = unwrap(model).get_input_embeddings().weight.dtype if kernel == "additive" else None

        def build(window: int | None) -> torch.Tensor:
            mask = allowed if window is None else allowed & within_window(positions, window)
            if dtype is None:
                return mask
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)

        args["attention_mask"] = per_layer(windows, build)
    elif kernel == "flex":
        args["attention_mask"] = per_layer(windows, lambda w: _block_mask(segment_ids, positions, w))
    else:  # varlen: no mask at all; flash reads the sequence boundaries
        cu = batch["cu_seq_lens"].to(device=segment_ids.device, dtype=torch.int32)
        length = int(batch["max_seq_len"])  # a host int from the collator, not a device read
        args.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=length, max_length_k=length)
    args.update(vision_inputs(model, batch, args))  # a vision-language batch's images and positions
    return args


def _block_mask(segment_ids: torch.Tensor, position_ids: torch.Tensor | None = None, window: int | None = None) -> Any:
    """A flex_attention BlockMask for segment_ids [R, T], within `window` positions when given (position_ids [R, T]).

    The forward is checked on CPU; CPU flex has no backward."""
    rows, width = segment_ids.shape
    # The kernel may evaluate mask_mod on a whole block past the row's end; pad the lookup table so those reads stay
    # in bounds (transformers' own flex masks do the same). Padding segments attend to nothing real.
    extra = (width // _FLEX_BLOCK + 1) * _FLEX_BLOCK - width
    table = F.pad(segment_ids, (0, extra), value=PAD_SEGMENT)
    mask_mod = segment_mask_mod(table)
    if window is not None and position_ids is not None:
        mask_mod = windowed_mask_mod(mask_mod, F.pad(position_ids, (0, extra)).to(table.dtype), window)
    # Built a strip of query blocks at a time: torch's uncompiled create_block_mask holds the dense [R, T, T] mask
    # (1.7 GiB at 13k tokens, BENCHMARKS.md), and compiling it would recompile per row width.
    return strip_block_mask(mask_mod, rows, width, segment_ids.device, block=_FLEX_BLOCK)
