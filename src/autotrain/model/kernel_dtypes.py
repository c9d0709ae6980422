"""One dtype for query, key and value at every attention kernel transformers calls.

Under autocast with fp32 weights (`--mixed-precision bf16`), the q/k/v projections come out in bf16, but rotary
embeddings multiply q and k by fp32 cos/sin outside any autocast-listed op, so the kernel receives q and k in fp32
and v in bf16. torch 2.13's flex_attention casts them back; older torch (the GPU image had 2.11) raises `Expected
query, key, and value to have the same dtype` or runs the fp32 kernel, far slower. `use_one_dtype()` registers, for
each attention implementation transformers dispatches through its AttentionInterface (sdpa, flex_attention, flash
attention), a wrapper that casts q, k and v to the autocast dtype (without autocast: to v's dtype) when they differ,
then calls transformers' own function. Eager attention is the model's own matmuls, which autocast already covers.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

KERNELS = ("sdpa", "flex_attention", "flash_attention_2", "flash_attention_3")
_MARK = "_autotrain_one_dtype"


def one_dtype(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v in one dtype: the autocast dtype of their device when autocast is on, else v's."""
    if query.dtype == key.dtype == value.dtype:
        return query, key, value
    kind = query.device.type
    dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else value.dtype
    return query.to(dtype), key.to(dtype), value.to(dtype)


def _wrap(kernel: Callable[..., Any]) -> Callable[..., Any]:
    def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  *args: Any, **kwargs: Any) -> Any:
        return kernel(module, *one_dtype(query, key, value), *args, **kwargs)

    setattr(attention, _MARK, kernel)
    attention.__name__ = getattr(kernel, "__name__", "attention")
    return attention


def use_one_dtype() -> None:
    """Register the casting wrappers (once per process; transformers' registry is global)."""
    from transformers import AttentionInterface

    registry = AttentionInterface()  # a view of the global registry (a mapping)
    for name in KERNELS:
        kernel = registry.get(name)
        if kernel is not None and not hasattr(kernel, _MARK):
            AttentionInterface.register(name, _wrap(kernel))
