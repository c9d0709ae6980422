"""Shared-prompt packing: several preference pairs per row, padding only at the end of a row.

The padded layout (autotrain.data.collate.PaddedCollator) computes every prompt twice and pads chosen and
rejected to the batch's longest sequence. Here one pair is laid out once as  prompt | chosen | rejected  and pairs
are packed side by side into rows of at most `token_budget` tokens. Three things keep the log-probs those of the
padded layout:

- positions: chosen continues the prompt's positions and rejected *restarts* at len(prompt), so rotary (or
  learned) positions are the ones each sequence has on its own;
- attention: prompt and chosen see themselves causally; rejected sees the prompt and itself, never chosen; a pair
  sees nothing of another pair. Row-end padding sees only padding, so no query row is fully masked (SDPA would
  return NaN for one);
- targets: the rejected's first completion token is predicted from the hidden state of the prompt's last token,
  which `hidden_index` names explicitly (it is not the token just left of it, which is chosen's last token).

The batch carries the same target-list contract as the padded layout (autotrain.data.batch), so the loss is
untouched, plus `position_ids` and `segment_ids`, from which autotrain.data.kernels builds the mask each kernel
takes (a boolean [R, 1, T, T] tensor for SDPA, an additive one for eager, a flex_attention BlockMask). There is no
2-D `attention_mask`.

`segment_ids` [R, T] encode the attention rule with one integer per token: the k-th pair of a row has its prompt
at 3k, its chosen at 3k + 1, its rejected at 3k + 2; padding is -1. Token q may attend key k iff k <= q (row order)
and seg[k] is seg[q] or seg[k] is seg[q] - seg[q] % 3 (the prompt of q's pair). `segment_mask_mod` states that
rule once, for the dense masks and for flex_attention alike.

With `share_prompt=False` (for varlen flash attention, which cannot express "rejected sees the prompt but not
chosen") each sequence is its own segment, prompt | chosen and prompt | rejected, value 3j + 1 for the j-th
sequence of the row; the prompt is then computed twice but there is still no padding inside a row, and the batch
also carries `cu_seq_lens` (int32 boundaries of every segment in the flattened [R * T] stream, row-end padding
being a segment of its own) and `max_seq_len`, computed here on the host so the forward pass never reads them back.

Two pairs, prompt_ids=[[5, 6], [7]], chosen_ids=[[8, 2], [9, 2]], rejected_ids=[[10, 2], [11, 12, 2]], pad 0,
prompt_loss False, token_budget 16 (both pairs fit one row of 12 tokens):

    input_ids     = [[5, 6, 8, 2, 10, 2,   7, 9, 2, 11, 12, 2]]
    position_ids  = [[0, 1, 2, 3,  2, 3,   0, 1, 2,  1,  2, 3]]     # rejected restarts at len(prompt)
    segment_ids   = [[0, 0, 1, 1,  2, 2,   3, 4, 4,  5,  5, 5]]
    hidden_index  = [1, 2,  1, 4,  6, 7,  6, 9, 10]    # 10 (pair 0) and 11 (pair 1) read the prompt's last token
    target_ids    = [8, 2,  10, 2, 9, 2,  11, 12, 2]
    target_seq    = [0, 0,  2, 2,  1, 1,  3, 3, 3]     # chosen of pair i is sequence i, its rejected B + i
    in_completion = all True
    in_nll        = [T, T,  F, F,  T, T,  F, F, F]
    num_pairs     = 2

and the attention mask of that row (row = query, column = key, 1 = may attend):

         5 6 8 2 10 2 7 9 2 11 12 2
    5    1 . . . .  . . . . .  .  .
    6    1 1 . . .  . . . . .  .  .
    8    1 1 1 . .  . . . . .  .  .
    2    1 1 1 1 .  . . . . .  .  .
    10   1 1 . . 1  . . . . .  .  .      rejected: the prompt and itself, not chosen
    2    1 1 . . 1  1 . . . .  .  .
    7    . . . . .  . 1 . . .  .  .      pair 1 sees nothing of pair 0
    9    . . . . .  . 1 1 . .  .  .
    2    . . . . .  . 1 1 1 .  .  .
    11   . . . . .  . 1 . . 1  .  .
    12   . . . . .  . 1 . . 1  1  .
    2    . . . . .  . 1 . . 1  1  1

With prompt_loss True the chosen side also lists its prompt targets (6 at hidden_index 0, sequence 0, in_completion
False, in_nll True), once per pair: the shared prompt is not counted a second time for the rejected side, exactly
as the padded layout counts it only on the chosen row.

Supervised (SFT) rows have an empty `rejected_ids` and are laid out as prompt | completion.

This module imports nothing but torch (and the batch contract's builders, autotrain.data.batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from autotrain.data.batch import Targets, pair_weights, reference_logps, trained

__all__ = ["PAD_SEGMENT", "PackedCollator", "bucket_width", "dense_mask", "plan_rows", "segment_mask_mod"]

PAD_SEGMENT = -1


def plan_rows(sizes: list[int], token_budget: int | None) -> list[list[int]]:
    """First-fit decreasing: item indices grouped into rows whose sizes sum to at most `token_budget`.

    An item longer than the budget gets a row of its own (the budget is a target, not a truncation). None puts
    everything in one row. Each row lists its items in their original order, so a row reads like the batch.
    """
    if token_budget is None:
        return [list(range(len(sizes)))]
    rows: list[list[int]] = []
    loads: list[int] = []
    for i in sorted(range(len(sizes)), key=lambda j: -sizes[j]):  # stable: ties keep batch order
        for r, load in enumerate(loads):
            if load + sizes[i] <= token_budget:
                rows[r].append(i)
                loads[r] += sizes[i]
                break
        else:
            rows.append([i])
            loads.append(sizes[i])
    return [sorted(row) for row in rows]


@dataclass(frozen=True)
class PackedCollator:
    """Per-pair token ids -> packed rows (see the module docstring for the layout and a worked example).

    `token_budget`: tokens per row; pairs are packed first-fit decreasing, a longer pair gets a row of its own;
    None packs the whole batch into one row. `pad_to_multiple_of` rounds the row width up (flex_attention compiles
    one kernel per shape; fewer distinct widths mean fewer recompilations); `bucketed` rounds it further up to one of
    four widths per doubling (`bucket_width`).
    """

    pad_id: int
    prompt_loss: bool = False
    token_budget: int | None = None
    share_prompt: bool = True
    pad_to_multiple_of: int = 1
    bucketed: bool = False
    ld_alpha: float | None = None  # LD-DPO: the batch's `completion_weight` (autotrain.data.batch)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        pairs = len(features)
        if pairs == 0:
            raise ValueError("PackedCollator needs at least one pair")
        sizes = [self._size(f) for f in features]
        rows = plan_rows(sizes, self.token_budget)
        width = max(sum(sizes[i] for i in row) for row in rows)
        width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        if self.bucketed:
            width = bucket_width(width, self.pad_to_multiple_of)
        ids, pos, seg = [], [], []
        targets = Targets()
        place = self._place_shared if self.share_prompt else self._place_separate
        for r, row in enumerate(rows):
            row_ids: list[int] = []
            row_pos: list[int] = []
            row_seg: list[int] = []
            for k, i in enumerate(row):
                place(features[i], i, pairs, k, r * width + len(row_ids), row_ids, row_pos, row_seg, targets)
            fill = width - len(row_ids)
            ids.append(row_ids + [self.pad_id] * fill)
            pos.append(row_pos + list(range(fill)))
            seg.append(row_seg + [PAD_SEGMENT] * fill)
        batch: dict[str, Any] = {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "position_ids": torch.tensor(pos, dtype=torch.long),
            "segment_ids": torch.tensor(seg, dtype=torch.long),
            **targets.tensors(self.ld_alpha, pairs),
            "num_pairs": pairs,
            "num_real_tokens": sum(sizes),
            **reference_logps(features),
            **pair_weights(features),
        }
        if not self.share_prompt:
            # Every run of equal segment ids is one varlen sequence; row-end padding is one too (it attends only
            # to itself), so the flattened [R * T] stream is covered without gaps.
            bounds = [0]
            for r, row_seg in enumerate(seg):
                bounds += [r * width + t for t in range(1, width) if row_seg[t] != row_seg[t - 1]]
                bounds.append((r + 1) * width)
            batch["cu_seq_lens"] = torch.tensor(bounds, dtype=torch.int32)  # flash-attn takes int32
            batch["max_seq_len"] = max(b - a for a, b in zip(bounds, bounds[1:]))
        return batch

    def _size(self, f: dict[str, Any]) -> int:
        prompt = len(f["prompt_ids"]) * (1 if self.share_prompt or not f["rejected_ids"] else 2)
        return prompt + len(f["chosen_ids"]) + len(f["rejected_ids"])

    def _place_shared(
        self, f: dict[str, Any], pair: int, pairs: int, k: int, base: int,
        ids: list[int], pos: list[int], seg: list[int], targets: Targets,
    ) -> None:
        prompt, chosen, rejected = f["prompt_ids"], f["chosen_ids"], f["rejected_ids"]
        p, c = len(prompt), len(chosen)
        ids += prompt + chosen + rejected
        pos += list(range(p + c)) + list(range(p, p + len(rejected)))
        seg += [3 * k] * p + [3 * k + 1] * c + [3 * k + 2] * len(rejected)
        if self.prompt_loss and p > 1:
            targets.add(list(range(base, base + p - 1)), prompt[1:], pair, completion=False, nll=True)
        # With an empty prompt nothing predicts a completion's first token; the padded layout skips it too.
        skip = 1 if p == 0 else 0
        hidden, predicted = trained(list(range(base + p - 1 + skip, base + p + c - 1)), chosen, skip, f)
        targets.add(hidden, predicted, pair, True, True)
        if not rejected:  # a supervised row: prompt | completion only
            return
        # Rejected's first token reads the prompt's last hidden state, its others the rejected tokens before them.
        hidden = ([] if p == 0 else [base + p - 1]) + list(range(base + p + c, base + p + c + len(rejected) - 1))
        targets.add(*trained(hidden, rejected, skip, f, chosen=False), pairs + pair, completion=True, nll=False)

    def _place_separate(
        self, f: dict[str, Any], pair: int, pairs: int, k: int, base: int,
        ids: list[int], pos: list[int], seg: list[int], targets: Targets,
    ) -> None:
        prompt = f["prompt_ids"]
        p = len(prompt)
        start = base
        for side, seq in ((0, pair), (1, pairs + pair))[: 2 if f["rejected_ids"] else 1]:
            tokens = prompt + (f["chosen_ids"] if side == 0 else f["rejected_ids"])
            ids += tokens
            pos += list(range(len(tokens)))
            seg += [3 * (2 * k + side) + 1] * len(tokens)
            chosen = side == 0
            if chosen and self.prompt_loss and p > 1:
                targets.add(list(range(start, start + p - 1)), prompt[1:], seq, completion=False, nll=True)
            first = max(p, 1)
            hidden = list(range(start + first - 1, start + len(tokens) - 1))
            hidden, predicted = trained(hidden, tokens[p:], first - p, f, chosen)
            targets.add(hidden, predicted, seq, True, chosen)
            start += len(tokens)


def bucket_width(width: int, multiple: int) -> int:
    """The smallest of the widths 4, 5, 6, 7 x 2^k x `multiple` (k >= 0; the multiples of `multiple` below 4 of
    them) that holds `width`: four widths per doubling, so a run of batches of any lengths gives a compiled kernel a
    handful of shapes, for at most 25% padding. The GPU bench's 8-pair rows (4k-8k tokens): 5 widths over 1,000
    batches instead of 30 multiples of 128, at 9% more tokens on average (a cost to weigh against recompiles)."""
    units = -(-width // multiple)
    if units <= 4:
        return units * multiple
    step = 1 << (units.bit_length() - 3)  # 4..7 steps per doubling
    return -(-units // step) * step * multiple


def segment_mask_mod(segment_ids: Tensor) -> Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]:
    """The attention rule of a packed batch as a flex_attention mask_mod: (b, h, q, kv) -> may q attend kv.

    Also evaluated on broadcast index tensors by `dense_mask`, so the dense and the block-sparse masks cannot
    disagree. Pure tensor ops (no .item(), no data-dependent Python branches): it runs under vmap and on CUDA
    without a host sync.
    """

    def mask_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        seg_q, seg_kv = segment_ids[b, q], segment_ids[b, kv]
        # seg_q - seg_q % 3 is the prompt segment of q's pair (torch's % follows the divisor's sign: -1 -> -3).
        return (kv <= q) & ((seg_kv == seg_q) | (seg_kv == seg_q - seg_q % 3))

    return mask_mod


def dense_mask(segment_ids: Tensor) -> Tensor:
    """segment_ids [R, T] -> boolean [R, 1, T, T], True where the query (dim 2) may attend the key (dim 3)."""
    rows, width = segment_ids.shape
    device = segment_ids.device
    index = torch.arange(width, device=device)
    batch = torch.arange(rows, device=device)[:, None, None]
    allowed = segment_mask_mod(segment_ids)(batch, None, index[None, :, None], index[None, None, :])
    return allowed[:, None]
