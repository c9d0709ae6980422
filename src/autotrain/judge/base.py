"""What every judge is: given a question and two answers (shown as A and B), which it prefers.

A judge answers one order at a time; autotrain.judge.session asks both orders and combines them
(autotrain.judge.stats.combine). A reply is "A", "B", "tie" or None (a reply that named neither), with the score it
came from where there is one: the log-odds of A over B for a causal LM, the reward difference for a reward model.
Near-equal is a tie: |score| < TIE_MARGIN, a preference probability between about 0.45 and 0.55.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from autotrain.errors import AutoTrainError

TIE_MARGIN = 0.2
A, B, TIE = "A", "B", "tie"


@dataclass(frozen=True)
class Reply:
    choice: str | None  # A, B, TIE, or None: the reply named neither
    score: float | None = None  # A's advantage over B in the judge's own units (log-odds, reward), where it has one
    text: str | None = None  # what a chat judge said, kept for the verdicts file


def by_score(score: float) -> Reply:
    return Reply(A if score >= TIE_MARGIN else B if score <= -TIE_MARGIN else TIE, score)


class Judge(Protocol):
    """`describe`: what the cost line calls one call ("judge call", "scoring pass"); `calls_per_pair`: how many a
    pair costs in both orders."""

    describe: str
    calls_per_pair: int

    def prefer(self, question: str, answer_a: str, answer_b: str) -> Reply: ...


class JudgeUnavailable(AutoTrainError):
    """The judge stopped answering (a server down, refusing the key, out of quota): the verdicts so far are kept."""

    exit_code = 1
