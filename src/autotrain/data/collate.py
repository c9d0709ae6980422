"""The padded layout: chosen and rejected as separate rows, right-padded; the batch contract is autotrain.data.batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from autotrain.data.batch import Targets, pair_weights, paired, reference_logps, trained


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
    ld_alpha: float | None = None  # LD-DPO: the batch's `completion_weight` (autotrain.data.batch)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        pairs = len(features)
        rows = [f["prompt_ids"] + f["chosen_ids"] for f in features]
        if paired(features):
            rows += [f["prompt_ids"] + f["rejected_ids"] for f in features]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)
        targets = Targets()
        for seq, ids in enumerate(rows):
            start = width - len(ids) if self.padding_side == "left" else 0
            input_ids[seq, start : start + len(ids)] = torch.tensor(ids)
            attention_mask[seq, start : start + len(ids)] = 1
            position_ids[seq, start : start + len(ids)] = torch.arange(len(ids))
            prompt_len = len(features[seq % pairs]["prompt_ids"])
            chosen = seq < pairs
            base = seq * width + start
            if chosen and self.prompt_loss and prompt_len > 1:
                targets.add(list(range(base, base + prompt_len - 1)), ids[1:prompt_len], seq, completion=False,
                            nll=True)
            # With an empty prompt nothing predicts a completion's first token.
            first = max(prompt_len, 1)
            hidden = list(range(base + first - 1, base + len(ids) - 1))
            # A conversation's context turns are read, not trained (chosen_mask, rejected_mask).
            hidden, predicted = trained(hidden, ids[prompt_len:], first - prompt_len, features[seq % pairs], chosen)
            targets.add(hidden, predicted, seq, completion=True, nll=chosen)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            **targets.tensors(self.ld_alpha, pairs),
            "num_pairs": pairs,
            "num_real_tokens": sum(len(r) for r in rows),
            **({"position_ids": position_ids} if self.padding_side == "left" else {}),
            **reference_logps(features),
            **pair_weights(features),
        }
