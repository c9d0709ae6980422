"""The judge section of the params: `--judge SPEC` and what goes with it (autotrain.judge does the judging).

Standard library and pydantic only: what a SPEC names (JudgeSpec, parse) is read here, so that a malformed judge URL,
or one holding a key, is refused when the params are built; autotrain.judge.spec checks it further before training.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from pydantic import Field, field_validator

from autotrain.errors import ParamsError
from autotrain.params.schema import Schema

KEY_VARIABLE = "AITRAINING_JUDGE_API_KEY"


@dataclass(frozen=True)
class JudgeSpec:
    """`url`: the chat-completions endpoint, or None for a local model; `model`: the local model (folder, hub id)
    or the served model's name (None: ask the server); `text`: the SPEC as given (what the records name)."""

    text: str
    url: str | None = None
    model: str | None = None

    @property
    def remote(self) -> bool:
        return self.url is not None


def parse(text: str) -> JudgeSpec:
    """The judge `text` names; ParamsError for a URL that cannot be one (the field's check: no network)."""
    value = text.strip()
    if not value:
        raise ParamsError("judge: name a local model (folder or hub id) or an OpenAI-compatible URL")
    if not value.lower().startswith(("http://", "https://")):
        return JudgeSpec(value, model=value)
    parts = urllib.parse.urlsplit(value)
    if parts.username is not None or parts.password is not None:
        raise ParamsError(f"judge: the URL holds credentials; give the key as {KEY_VARIABLE} in the environment "
                          "(never on the command line or in a file)")
    query = urllib.parse.parse_qs(parts.query)
    if any(name.lower() in ("key", "api_key", "apikey", "token", "access_token") for name in query):
        raise ParamsError(f"judge: the URL holds a key; give it as {KEY_VARIABLE} in the environment instead")
    if not parts.hostname:
        raise ParamsError(f"judge: {value} names no host")
    path = parts.path.rstrip("/")
    base = path.removesuffix("/chat/completions")
    endpoint = urllib.parse.urlunsplit((parts.scheme, parts.netloc, base + "/chat/completions", parts.query, ""))
    return JudgeSpec(value, url=endpoint, model=urllib.parse.unquote(parts.fragment) or None)


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
        "the built-in pairwise prompt (docs/evaluation.md, 'Judged win rates').",
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
