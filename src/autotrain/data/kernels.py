"""Which attention kernel runs a packed batch, and the mask that kernel takes; the collator each model gets.

A packed row (autotrain.data.pack) needs a mask that is neither causal over the row nor a padding mask. Each
attention implementation of transformers 5 takes it its own way:

    config._attn_implementation   layout            what the decoder receives
    sdpa                          shared prompt     boolean [R, 1, T, T] attention_mask
    eager                         shared prompt     additive float [R, 1, T, T] attention_mask (0 or dtype min)
    flex_attention                shared prompt     a flex_attention BlockMask (masked 128x128 blocks are skipped)
    flash_attention_2 / _3        one segment per   position_ids and cu_seq_lens_* / max_length_* (varlen);
                                  sequence          the prompt is computed twice, as flash cannot express
                                                    "rejected sees the prompt but not chosen"
    anything else                 padded            PaddedCollator (logged once)

transformers passes a 4-D attention_mask (tensor or BlockMask) to the attention layers as is
(masking_utils._preprocess_mask_arguments returns early on it), which is what makes the first three work.

Only the SDPA and eager paths run in this project's tests (CPU). The flex and varlen paths follow the documented
APIs of torch (create_block_mask) and transformers (FlashAttentionKwargs) but have not run on a GPU here.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Callable

import torch
import torch.nn.functional as F

from autotrain.data.collate import PaddedCollator
from autotrain.data.pack import PAD_SEGMENT, PackedCollator, dense_mask, segment_mask_mod
from autotrain.models import unwrap

logger = logging.getLogger("autotrain")

__all__ = ["DENSE_TOKEN_BUDGET", "KERNELS", "decoder_inputs", "make_collator", "packing_kernel"]

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

# flex_attention's default block size; the BlockMask and the mask_mod lookups are sized in whole blocks.
_FLEX_BLOCK = 128

_logged: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        logger.warning(message)


def packing_kernel(model: torch.nn.Module) -> tuple[str | None, str]:
    """(kernel, why): the KERNELS value that runs a packed batch on this model, or None and the reason it can't."""
    base = unwrap(model)
    config = base.config
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl not in KERNELS:
        return None, f"attention implementation '{impl}' takes no custom mask"
    if getattr(config, "is_encoder_decoder", False) or not getattr(config, "is_causal", True):
        return None, "not a causal decoder-only model"
    # A multimodal model (Gemma 3 from 4B up loads as Gemma3ForConditionalGeneration) keeps them in its text config.
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layer_types = getattr(text, "layer_types", None) or []
    if any(kind != "full_attention" for kind in layer_types):
        # A 4-D mask overrides every layer's own: a sliding window would be lost, and recurrent or linear-attention
        # layers would carry state from one pair into the next.
        return None, f"layer types {sorted(set(layer_types))} (not all full attention)"
    if not layer_types and getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True):
        return None, "sliding-window attention"
    if getattr(config, "alibi", False):
        return None, "ALiBi positions are computed from the padding mask, not from position_ids"
    if "position_ids" not in inspect.signature(base.get_decoder().forward).parameters:
        return None, "the decoder takes no position_ids"
    kernel = KERNELS[impl]
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
) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """The collator for this model: packed where its attention takes a packed mask, padded otherwise.

    A batch is still `batch_size` pairs (the loss averages over the same pairs and tokens in either layout); the
    packed collator lays them out in one or more rows of about `token_budget` tokens. None chooses per kernel:
    DENSE_TOKEN_BUDGET for sdpa/eager, the whole batch in one row for flex and varlen. Without a model the packed
    layout for sdpa/eager is assumed; `decoder_inputs` refuses a batch the model's kernel cannot run.
    """
    if not packing:
        return PaddedCollator(pad_id=pad_id, prompt_loss=prompt_loss)
    kernel, why = packing_kernel(model) if model is not None else ("dense", "no model given")
    if kernel is None:
        _log_once(f"packing is off for this model ({why}); using the padded layout")
        return PaddedCollator(pad_id=pad_id, prompt_loss=prompt_loss)
    if kernel == "varlen":
        return PackedCollator(pad_id, prompt_loss, token_budget, share_prompt=False)
    if kernel == "flex":
        return PackedCollator(pad_id, prompt_loss, token_budget, pad_to_multiple_of=_FLEX_BLOCK)
    return PackedCollator(pad_id, prompt_loss, token_budget if token_budget is not None else DENSE_TOKEN_BUDGET)


def decoder_inputs(model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
    """The decoder's keyword arguments for a padded or a packed batch; builds the packed mask on the batch's device.

    Nothing here reads a device value back to the host: masks are built with tensor ops from `segment_ids`, and
    the varlen lengths were computed by the collator on the host.
    """
    if "segment_ids" not in batch:  # the padded layout
        args = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if "position_ids" in batch:
            args["position_ids"] = batch["position_ids"]
        return args
    impl = getattr(unwrap(model).config, "_attn_implementation", None) or "eager"
    kernel = KERNELS.get(impl)
    shared = "cu_seq_lens" not in batch
    if kernel is None or (kernel == "varlen" and shared):
        raise ValueError(
            f"this packed batch cannot run on attention implementation '{impl}'; build the collator with "
            "autotrain.data.kernels.make_collator(model=...) so it falls back to a layout this model can run"
        )
    args = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    segment_ids = batch["segment_ids"]
    if kernel == "dense":
        args["attention_mask"] = dense_mask(segment_ids)
    elif kernel == "additive":
        dtype = unwrap(model).get_input_embeddings().weight.dtype
        allowed = dense_mask(segment_ids)
        args["attention_mask"] = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
            ~allowed, torch.finfo(dtype).min
        )
    elif kernel == "flex":
        args["attention_mask"] = _block_mask(segment_ids)
    else:  # varlen: no mask at all; flash reads the sequence boundaries
        cu = batch["cu_seq_lens"].to(device=segment_ids.device, dtype=torch.int32)
        length = int(batch["max_seq_len"])  # a host int from the collator, not a device read
        args.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=length, max_length_k=length)
    return args


def _block_mask(segment_ids: torch.Tensor) -> Any:
    """A flex_attention BlockMask for segment_ids [R, T] (untested here: CPU flex_attention has no backward)."""
    from torch.nn.attention.flex_attention import create_block_mask

    rows, width = segment_ids.shape
    # The kernel may evaluate mask_mod on a whole block past the row's end; pad the lookup table so those reads stay
    # in bounds (transformers' own flex masks do the same). Padding segments attend to nothing real.
    table = F.pad(segment_ids, (0, (width // _FLEX_BLOCK + 1) * _FLEX_BLOCK - width), value=PAD_SEGMENT)
    # Uncompiled create_block_mask materialises [R, T, T] intermediates of the table's dtype; segment ids are below
    # 3 * T, so int16 holds them for rows under ~10k tokens (decided from the shape: no device read).
    table = table.to(torch.int16 if 3 * table.shape[1] < torch.iinfo(torch.int16).max else torch.int32)
    # Not compiled: the dense [R, T, T] intermediate is small next to the activations, and compiling would add a
    # recompilation per new row width.
    return create_block_mask(segment_mask_mod(table), rows, None, width, width, device=segment_ids.device)
