"""Sample answers: a few validation prompts answered greedily before and after training, side by side.

Metrics say whether the preferences were learned; the answers show what that did to the model's outputs. The
prompts are the validation split's own tokenized prompts (rendered with the training template), so what is asked
is exactly what was evaluated. Written to <project>/samples.jsonl and shown in the model card and the summary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SAMPLES_FILE = "samples.jsonl"
MAX_NEW_TOKENS = 64


def answer(model: Any, tokenizer: Any, prompts: list[list[int]]) -> list[str]:
    """Greedy answers (up to MAX_NEW_TOKENS) to each tokenized prompt, one at a time (no padding to get wrong)."""
    import torch

    training = model.training
    model.eval()
    device = next(model.parameters()).device
    answers = []
    try:
        with torch.no_grad():
            for ids in prompts:
                inputs = torch.tensor([ids], device=device)
                out = model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), do_sample=False,
                                     max_new_tokens=MAX_NEW_TOKENS, use_cache=True,
                                     pad_token_id=tokenizer.pad_token_id)
                answers.append(tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True).strip())
    finally:
        model.train(training)
    return answers


def prompt_texts(tokenizer: Any, prompts: list[list[int]]) -> list[str]:
    """The prompts as a reader wants them: template markers dropped, whitespace collapsed, and the words every
    prompt starts and ends with (a default system prompt, the role names) removed, so the question stands out."""
    words = [tokenizer.decode(ids, skip_special_tokens=True).split() for ids in prompts]
    if len({tuple(w) for w in words}) > 1:  # two different prompts at least: their shared ends are the template
        shortest = min(len(w) for w in words)
        head = 0
        while head < shortest - 1 and all(w[head] == words[0][head] for w in words):
            head += 1
        tail = 0
        while tail < shortest - head - 1 and all(w[-1 - tail] == words[0][-1 - tail] for w in words):
            tail += 1
        words = [w[head : len(w) - tail] for w in words]
    return [" ".join(w) for w in words]


def one_line(text: str | None, limit: int = 200) -> str:
    """An answer on one line for the console: whitespace collapsed, cut at `limit` characters."""
    if text is None:
        return "(not available: the run was resumed)"
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def write(project: Path, prompts: list[str], before: list[str] | None, after: list[str]) -> None:
    lines = [
        json.dumps({"prompt": p, "before": before[i] if before is not None else None, "after": after[i]})
        for i, p in enumerate(prompts)
    ]
    (project / SAMPLES_FILE).write_text("".join(line + "\n" for line in lines))


def read(project: Path) -> list[dict[str, str | None]]:
    path = project / SAMPLES_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
