"""Rendered pairs -> token ids per pair, truncated; the prompt is tokenized once and shared.

Each pair stays three separate id lists (prompt, chosen, rejected) until the collator, so the padded and the
packed layouts are two collators over the same data.

Prompt and completion are tokenized separately. Tokenizing them as one string could merge tokens across the
boundary (e.g. "=" + "4"), which would give chosen and rejected different prompt ids; separate tokenization keeps
one prompt for both, which is what makes the prompt shareable.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from autotrain.data.render import Renderer
from autotrain.data.sources import RawSplit
from autotrain.errors import DataError

logger = logging.getLogger("autotrain")


@dataclass(frozen=True)
class Limits:
    """Token budgets, resolved against the model: block_size is never -1 here."""

    max_prompt_length: int
    max_completion_length: int | None
    block_size: int


@dataclass
class TokenizedSplit:
    prompt_ids: list[list[int]] = field(default_factory=list)
    chosen_ids: list[list[int]] = field(default_factory=list)
    rejected_ids: list[list[int]] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)  # reason -> pairs dropped
    truncated: Counter = field(default_factory=Counter)  # what -> pairs cut

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def as_dict(self) -> dict[str, list[list[int]]]:
        return {"prompt_ids": self.prompt_ids, "chosen_ids": self.chosen_ids, "rejected_ids": self.rejected_ids}

    @property
    def dataset(self) -> Any:
        """The pairs as a `datasets.Dataset` with prompt_ids / chosen_ids / rejected_ids columns."""
        from datasets import Dataset

        return Dataset.from_dict(self.as_dict())


def resolve_block_size(block_size: int, model_max: int | None) -> int:
    """-1 means min(model maximum, 1024)."""
    if block_size != -1:
        return block_size
    return min(model_max or 1024, 1024)


def tokenize_split(split: RawSplit, renderer: Renderer, tokenizer: Any, limits: Limits) -> TokenizedSplit:
    """Tokenize every row; truncate; drop (and count) pairs that cannot train."""
    templated = renderer.template is not None
    eos = tokenizer.eos_token_id
    if not templated and eos is None:
        raise DataError("the tokenizer has no EOS token, needed to end completions without a chat template")
    out = TokenizedSplit()
    for index in range(len(split.rows)):
        pair = renderer(split, index)
        if pair.chosen == pair.rejected:
            out.dropped["chosen == rejected"] += 1
            continue
        # With a template, the rendered text already holds BOS (if the model uses one) and the turn markers.
        prompt = tokenizer(pair.prompt, add_special_tokens=not templated)["input_ids"]
        chosen = tokenizer(pair.chosen, add_special_tokens=False)["input_ids"]
        rejected = tokenizer(pair.rejected, add_special_tokens=False)["input_ids"]
        if not templated:
            chosen, rejected = chosen + [eos], rejected + [eos]
        prompt, chosen, rejected = _truncate(prompt, chosen, rejected, limits, out.truncated)
        if not chosen or not rejected:
            out.dropped["completion empty after truncation"] += 1
            continue
        out.prompt_ids.append(prompt)
        out.chosen_ids.append(chosen)
        out.rejected_ids.append(rejected)
    _report(split.source, len(split.rows), out)
    return out


def _truncate(
    prompt: list[int], chosen: list[int], rejected: list[int], limits: Limits, counts: Counter
) -> tuple[list[int], list[int], list[int]]:
    if len(prompt) > limits.max_prompt_length:
        prompt = prompt[-limits.max_prompt_length :]  # keep the end: the question sits next to the answer
        counts["prompt > max_prompt_length"] += 1
    cap = max(limits.block_size - len(prompt), 0)
    if limits.max_completion_length is not None:
        cap = min(cap, limits.max_completion_length)
    if len(chosen) > cap or len(rejected) > cap:
        counts["completion cut to max_completion_length / block_size"] += 1
    return prompt, chosen[:cap], rejected[:cap]


def _report(source: str, total: int, out: TokenizedSplit) -> None:
    for reason, count in out.truncated.items():
        logger.info("%s: %d of %d pairs truncated (%s)", source, count, total, reason)
    for reason, count in out.dropped.items():
        logger.warning("%s: dropped %d of %d pairs (%s)", source, count, total, reason)
    if total and not len(out):
        raise DataError(f"every pair was dropped ({dict(out.dropped)}); nothing left to train on", path=source)
