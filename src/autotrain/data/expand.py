"""Rows that hold several preference pairs: per-turn pairs and ranked answers, split into pairs here (no template).

Per-turn pairs: a conversation column whose assistant messages may carry a `rejected` alternative (text, or an
assistant message such as another tool call). Each marked turn is one pair: its prompt is the conversation up to
that turn (earlier turns as they were, the chosen ones), its chosen answer the turn, its rejected answer the
alternative. Turns without a mark are context of the later pairs only.

Ranked answers: a prompt, a list of answers (`responses`) and their `scores` (higher is better) or `ranking` (1 is
best: lower is better). `best` pairs the best answer (the first of equally best ones) against each other answer;
`all` pairs every two answers whose scores differ, the better one chosen. Two answers with equal scores make no
pair: skipped and counted. Each prompt's pairs are weighted so that the prompt counts once (autotrain.losses).
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any

from autotrain.data.messages import REJECTED_KEY, Message, Messages, checked_message, short
from autotrain.errors import DataError

RANKED_MODES = ("best", "all")


def marked_turns(conversation: Messages, column: str, where: object) -> list[tuple[Messages, Message, Message]]:
    """(prompt messages, chosen message, rejected message) for each assistant message that carries a rejected
    alternative, in order; the messages are given without their marks."""
    plain = [{k: v for k, v in m.items() if k != REJECTED_KEY} for m in conversation]
    pairs = []
    for index, message in enumerate(conversation):
        if REJECTED_KEY not in message:
            continue
        if index == 0 or conversation[index - 1]["role"] == "assistant":
            raise DataError(f"{where}, column '{column}': message {index + 1} carries a '{REJECTED_KEY}' "
                            "alternative but follows no user or tool message; a marked turn answers the turn before "
                            "it")
        pairs.append((plain[:index], plain[index], _alternative(message[REJECTED_KEY], column, where, index + 1)))
    return pairs


def _alternative(value: Any, column: str, where: object, number: int) -> Message:
    if isinstance(value, str):
        return {"role": "assistant", "content": value}
    if isinstance(value, dict):
        message = checked_message({"role": "assistant", **value}, column, where, number)
        if message["role"] == "assistant":
            return message
    raise DataError(f"{where}, column '{column}': message {number}: '{REJECTED_KEY}' must be text or an assistant "
                    f"message, got {short(value)}")


def ranked_values(row: dict[str, Any], answers: str, scores: str, where: object) -> tuple[list, list[float]]:
    """The row's answers and their scores, checked: two or more answers, one finite number each."""
    given, values = row.get(answers), row.get(scores)
    if not isinstance(given, list) or len(given) < 2:
        raise DataError(f"{where}, column '{answers}': expected a list of two or more answers, got {short(given)}")
    if not isinstance(values, list) or len(values) != len(given):
        raise DataError(f"{where}, column '{scores}': expected a list of {len(given)} numbers (one per answer in "
                        f"'{answers}'), got {short(values)}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise DataError(f"{where}, column '{scores}': expected a finite number for each answer, got {short(value)}")
    return given, [float(v) for v in values]


def ranked_pairs(scores: list[float], mode: str, lower_better: bool = False) -> tuple[list[tuple[int, int]], int]:
    """((better, worse) index pairs, ties skipped) for answers with `scores`."""
    sign = -1.0 if lower_better else 1.0
    merit = [sign * s for s in scores]
    if mode == "best":
        best = max(range(len(merit)), key=lambda i: (merit[i], -i))  # the first of equally best answers
        others = [i for i in range(len(merit)) if i != best]
        return [(best, i) for i in others if merit[i] < merit[best]], sum(merit[i] == merit[best] for i in others)
    pairs: list[tuple[int, int]] = []
    ties = 0
    for i, j in combinations(range(len(merit)), 2):
        if merit[i] == merit[j]:
            ties += 1
        else:
            pairs.append((i, j) if merit[i] > merit[j] else (j, i))
    return pairs, ties
