"""A flex_attention BlockMask built without the dense row x row mask.

torch's uncompiled `create_block_mask` evaluates the mask_mod on every (query, key) pair of a row at once: an
[R, T, T] boolean mask plus its temporaries, so its memory grows with the square of a packed row's tokens (a batch of
8 long pairs packs into one row of ~13k tokens). Compiling it (`_compile=True`) avoids that but compiles once per new
row width. `strip_block_mask` evaluates the same mask_mod one strip of query blocks at a time and keeps only each
128 x 128 block's state (empty, partial, full), so its peak memory is [R, strip, T] booleans: linear in T. The
result is what `create_block_mask` gives (the same block lists, the same mask_mod for the partial blocks);
BENCHMARKS.md has the two side by side.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

BLOCK = 128  # flex_attention's default sparse block size
STRIP_BLOCKS = 4  # query blocks evaluated at once: [R, 4 * 128, T] booleans at a time


def strip_block_mask(mask_mod: Callable[..., torch.Tensor], rows: int, width: int, device: torch.device | str,
                     block: int = BLOCK, strip_blocks: int = STRIP_BLOCKS) -> Any:
    """`create_block_mask(mask_mod, rows, None, width, width, device=device)` (full blocks kept apart), built one
    strip of `strip_blocks` query blocks at a time. No host sync: every step is a tensor op on `device`."""
    from torch.nn.attention.flex_attention import BlockMask

    blocks = -(-width // block)
    batch = torch.arange(rows, device=device)[:, None, None]
    kv = torch.arange(width, device=device)[None, None, :]
    partial, full = [], []
    for first in range(0, blocks, strip_blocks):
        q = torch.arange(first * block, min((first + strip_blocks) * block, width), device=device)
        allowed = mask_mod(batch, None, q[None, :, None], kv).expand(rows, len(q), width)
        # Positions past the row's end count as masked, as create_block_mask pads them.
        allowed = F.pad(allowed, (0, blocks * block - width, 0, -(-len(q) // block) * block - len(q)))
        tiles = allowed.view(rows, -1, block, blocks, block)  # boolean reductions: no wider copy of the strip
        every = tiles.all(dim=4).all(dim=2)
        full.append(every)
        partial.append(tiles.any(dim=4).any(dim=2) & ~every)
    return BlockMask.from_kv_blocks(*_ordered(torch.cat(partial, 1)), *_ordered(torch.cat(full, 1)),
                                    BLOCK_SIZE=block, mask_mod=mask_mod, seq_lengths=(width, width))


def _ordered(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[R, Q blocks, KV blocks] booleans -> (count per query block, the key blocks' indices with the present first),
    shaped [R, 1, ...] (one head), int32: the layout BlockMask.from_kv_blocks takes."""
    dense = dense[:, None].to(torch.int32)
    return (dense.sum(-1).to(torch.int32),
            torch.argsort(dense, dim=-1, descending=True, stable=True).to(torch.int32))
