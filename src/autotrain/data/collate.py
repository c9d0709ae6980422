"""Collators: per-pair token ids -> the tensors one forward pass needs.

Whatever the layout, a collator names the log-prob *targets* explicitly rather than through shifted label
tensors, so the loss never needs to know the layout:

- `input_ids`, `attention_mask`: what the model reads;
- `hidden_index` [K]: for each target, the flat index (row * T + t) of the hidden state that predicts it;
- `target_ids` [K]: the token predicted there;
- `target_seq` [K]: which sequence it belongs to: pair i's chosen is sequence i, its rejected is B + i;
- `in_completion` [K]: the target is a completion token (it enters the mean log-prob of its sequence);
- `in_nll` [K]: the target enters the NLL term (chosen completion tokens; also the chosen sequence's prompt
  tokens with `prompt_loss`);
- `num_pairs`: B;
- `num_real_tokens`: tokens the model reads, padding excluded (a host int, for tokens/s; never a device read);
- `ref_logps` [2B], only when the rows carry precomputed DPO reference log-probs (`ref_chosen_logps`,
  `ref_rejected_logps`): chosen sums then rejected sums, in pair order.

Rows of a supervised (SFT) dataset have an empty `rejected_ids`: there is no rejected sequence, sequences B..2B-1
get no targets, and `in_nll` covers the completion; their `chosen_mask` (1 trained, 0 context) leaves the context
turns of a conversation out of the targets.

Only targets are listed, so the LM head runs on K positions instead of every position of every row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class PaddedCollator:
    """The reference layout: chosen and rejected as separate rows, right-padded to the batch's longest.

    Two pairs, prompt_ids=[[5, 6], [7]], chosen_ids=[[8, 2], [9, 2]], rejected_ids=[[10, 2], [11, 12, 2]],
    pad 0, prompt_loss False:

        input_ids      = [[5, 6, 8, 2],      # pair 0 chosen    (sequence 0)
                          [7, 9, 2, 0],      # pair 1 chosen    (sequence 1)
                          [5, 6, 10, 2],     # pair 0 rejected  (sequence 2)
                          [7, 11, 12, 2]]    # pair 1 rejected  (sequence 3)
        attention_mask = [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
        hidden_index   = [1, 2,  4, 5,  9, 10,  12, 13, 14]
        target_ids     = [8, 2,  9, 2,  10, 2,  11, 12, 2]
        target_seq     = [0, 0,  1, 1,  2, 2,   3, 3, 3]
        in_completion  = all True
        in_nll         = [T, T,  T, T,  F, F,   F, F, F]

    With prompt_loss True, the chosen rows also list their prompt targets (6 at hidden_index 0 for pair 0; pair 1's
    prompt has one token, which nothing predicts), with in_completion False and in_nll True.
    """

    pad_id: int
    prompt_loss: bool = False
    # "left" (aitraining's padding) puts the padding before each row; the rows then carry position_ids counted from
    # their first real token, so every token sits at the position it has in the right-padded layout.
    padding_side: str = "right"

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        pairs = len(features)
        rows = [f["prompt_ids"] + f["chosen_ids"] for f in features]
        if paired(features):
            rows += [f["prompt_ids"] + f["rejected_ids"] for f in features]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)
        hidden_index, target_ids, target_seq, in_completion, in_nll = [], [], [], [], []
        for seq, ids in enumerate(rows):
            start = width - len(ids) if self.padding_side == "left" else 0
            input_ids[seq, start : start + len(ids)] = torch.tensor(ids)
            attention_mask[seq, start : start + len(ids)] = 1
            position_ids[seq, start : start + len(ids)] = torch.arange(len(ids))
            prompt_len = len(features[seq % pairs]["prompt_ids"])
            chosen = seq < pairs
            mask = features[seq].get("chosen_mask") if chosen else None
            first = 1 if (chosen and self.prompt_loss) else prompt_len
            for t in range(max(first, 1), len(ids)):
                if mask is not None and t >= prompt_len and not mask[t - prompt_len]:
                    continue  # a context turn of a conversation: read, not trained
                hidden_index.append(seq * width + start + t - 1)
                target_ids.append(ids[t])
                target_seq.append(seq)
                in_completion.append(t >= prompt_len)
                in_nll.append(chosen)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "hidden_index": torch.tensor(hidden_index, dtype=torch.long),
            "target_ids": torch.tensor(target_ids, dtype=torch.long),
            "target_seq": torch.tensor(target_seq, dtype=torch.long),
            "in_completion": torch.tensor(in_completion, dtype=torch.bool),
            "in_nll": torch.tensor(in_nll, dtype=torch.bool),
            "num_pairs": pairs,
            "num_real_tokens": sum(len(r) for r in rows),
            **({"position_ids": position_ids} if self.padding_side == "left" else {}),
            **reference_logps(features),
        }


def paired(features: list[dict[str, Any]]) -> bool:
    """Preference rows (a rejected completion each) rather than supervised ones (empty rejected_ids)."""
    return bool(features[0]["rejected_ids"])


def reference_logps(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The precomputed DPO reference log-probs of these rows, as `ref_logps` [2B], if they carry them."""
    if "ref_chosen_logps" not in features[0]:
        return {}
    values = [f["ref_chosen_logps"] for f in features] + [f["ref_rejected_logps"] for f in features]
    return {"ref_logps": torch.tensor(values, dtype=torch.float32)}
