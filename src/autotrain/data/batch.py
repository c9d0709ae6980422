"""The batch contract: what every collator gives the forward pass, and the one builder of its target lists.

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
  `ref_rejected_logps`): chosen sums then rejected sums, in pair order;
- `pair_weight` [B], only when the rows carry weights (ranked answers: 1 / the pairs of their prompt), in pair
  order: every reduction counts each pair at its weight (autotrain.losses);
- `completion_weight` [K], only with LD-DPO (`ld_alpha`): how much each completion target counts in its sequence's
  summed log-prob, 1 for the first min(|chosen|, |rejected|) completion tokens of each side of a pair and ld_alpha
  past them (Liu et al. 2024, "Length Desensitization in Directed Preference Optimization", arXiv 2409.06411). Every
  sum read from the batch, the policy's and the reference's alike (precomputed ones too), carries the weights.

Rows of a supervised (SFT) dataset have an empty `rejected_ids`: there is no rejected sequence, sequences B..2B-1
get no targets, and `in_nll` covers the completion. A row's `chosen_mask` and `rejected_mask` (1 trained, 0
context; absent or empty: every token trained) leave the context turns of a conversation (the user's turns between
two assistant turns) out of the targets, so they count in no log-prob sum, mean, token count or NLL.

Only targets are listed, so the LM head runs on K positions instead of every position of every row. Both layouts
(autotrain.data.collate's padded one, autotrain.data.pack's packed one) fill their targets through `Targets`, span by
span, so the two cannot disagree on what a target is.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class Targets:
    """The target lists of the batch contract, filled span by span."""

    def __init__(self) -> None:
        self.hidden_index: list[int] = []
        self.target_ids: list[int] = []
        self.target_seq: list[int] = []
        self.in_completion: list[bool] = []
        self.in_nll: list[bool] = []
        self.rank: list[int] = []  # 1-based place of a completion target in its sequence's completion; 0 otherwise
        self.completion_tokens: dict[int, int] = {}  # sequence -> its completion targets so far

    def add(self, hidden: list[int], ids: list[int], seq: int, completion: bool, nll: bool) -> None:
        """Targets `ids` of sequence `seq`, each predicted from the flat hidden-state index beside it in `hidden`."""
        self.hidden_index += hidden
        self.target_ids += ids
        self.target_seq += [seq] * len(ids)
        self.in_completion += [completion] * len(ids)
        self.in_nll += [nll] * len(ids)
        # A sequence's completion is added in position order (both layouts), so its targets are ranked as they come.
        done = self.completion_tokens.get(seq, 0) if completion else 0
        self.rank += list(range(done + 1, done + 1 + len(ids))) if completion else [0] * len(ids)
        if completion:
            self.completion_tokens[seq] = done + len(ids)

    def tensors(self, ld_alpha: float | None = None, pairs: int = 0) -> dict[str, Tensor]:
        """The target lists; with `ld_alpha`, also LD-DPO's `completion_weight` of `pairs` pairs."""
        found = {
            "hidden_index": torch.tensor(self.hidden_index, dtype=torch.long),
            "target_ids": torch.tensor(self.target_ids, dtype=torch.long),
            "target_seq": torch.tensor(self.target_seq, dtype=torch.long),
            "in_completion": torch.tensor(self.in_completion, dtype=torch.bool),
            "in_nll": torch.tensor(self.in_nll, dtype=torch.bool),
        }
        if ld_alpha is not None:
            found["completion_weight"] = torch.tensor(self._length_weights(ld_alpha, pairs), dtype=torch.float32)
        return found

    def _length_weights(self, ld_alpha: float, pairs: int) -> list[float]:
        tokens = self.completion_tokens
        shared = [min(tokens.get(i, 0), tokens.get(pairs + i, 0)) for i in range(pairs)]
        return [1.0 if rank <= shared[seq % pairs] else ld_alpha for seq, rank in zip(self.target_seq, self.rank)]


def trained(hidden: list[int], completion: list[int], skip: int, feature: dict[str, Any], chosen: bool = True
            ) -> tuple[list[int], list[int]]:
    """The targets `completion[skip:]` (read at `hidden`) of the chosen (or the rejected) side that are trained:
    all of them, or those whose mask is 1 (a conversation's context turns are read, not trained)."""
    ids = completion[skip:]
    mask = feature.get("chosen_mask" if chosen else "rejected_mask")
    if not mask:
        return hidden, ids
    kept = [k for k in range(len(ids)) if mask[skip + k]]
    return [hidden[k] for k in kept], [ids[k] for k in kept]


def paired(features: list[dict[str, Any]]) -> bool:
    """Preference rows (a rejected completion each) rather than supervised ones (empty rejected_ids)."""
    return bool(features[0]["rejected_ids"])


def reference_logps(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The precomputed DPO reference log-probs of these rows, as `ref_logps` [2B], if they carry them."""
    if "ref_chosen_logps" not in features[0]:
        return {}
    values = [f["ref_chosen_logps"] for f in features] + [f["ref_rejected_logps"] for f in features]
    return {"ref_logps": torch.tensor(values, dtype=torch.float32)}


def pair_weights(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The rows' pair weights, as `pair_weight` [B], if they carry them."""
    if "pair_weight" not in features[0]:
        return {}
    return {"pair_weight": torch.tensor([f["pair_weight"] for f in features], dtype=torch.float32)}
