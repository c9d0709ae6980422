"""The judge section of the params: `--judge SPEC` and what goes with it (autotrain.judge does the judging).

Standard library, pydantic and autotrain.judge.spec's URL parsing only: a malformed judge URL, or one holding a
key, is refused when the params are built.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from autotrain.judge.spec import parse
from autotrain.params.schema import Schema


class JudgeParams(Schema):
    """Judge: after training, a judge compares the model's answers before and after, in both orders."""

    judge: str | None = Field(
        None,
        description="Judge the answers to the validation prompts (or --judge-prompts) before and after training: a "
        "local causal LM (folder or hub id; its verdict read from the log-probs of A and B), a local reward model "
        "(sequence classification, one label), or an OpenAI-compatible chat-completions URL (e.g. "
        "http://localhost:8000/v1, the model as #NAME; key from AITRAINING_JUDGE_API_KEY). Each pair is judged "
        "in both orders; logs eval_judge_* (win, tie and loss rates with 95 percent intervals, a length-controlled "
        "win rate, position consistency).",
    )
    judge_prompts: str | None = Field(
        None,
        description="A file of prompts to judge on instead of the validation prompts: one a line (.txt), JSON lines "
        "with a 'prompt' (.jsonl), or a JSON array (.json).",
    )
    judge_template: str | None = Field(
        None,
        description="A text file with the judge prompt, holding {question}, {answer_a} and {answer_b}. Default: "
        "the built-in pairwise prompt (README, 'Judged win rates').",
    )
    judge_max_prompts: int | None = Field(
        None, ge=1, description="Judge at most the first N prompts. Default: all of them."
    )

    @field_validator("judge")
    @classmethod
    def _judge_spec(cls, value: str | None) -> str | None:
        if value is not None:
            parse(value)
        return value
