"""Sample answers: a few validation prompts answered greedily before and after training, side by side.

Metrics say whether the preferences were learned; the answers show what that did to the model's outputs. The
prompts are the validation split's own tokenized prompts (rendered with the training template), so what is asked
is exactly what was evaluated. Written to <project>/samples.jsonl and shown in the model card and the summary.
(Sample *data*, the embedded example datasets, is autotrain/data/samples/: another thing.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SAMPLES_FILE = "samples.jsonl"
MAX_NEW_TOKENS = 64


def answer(model: Any, tokenizer: Any, prompts: list[list[int]], stop_ids: list[int] | None = None,
           extras: list[dict[str, Any]] | None = None) -> list[str]:
    """Greedy answers (up to MAX_NEW_TOKENS) to each tokenized prompt, one at a time (no padding to get wrong);
    `stop_ids`: the tokens that end an answer under the training template (`data.templates.stop_ids`); `extras`:
    each prompt's other inputs (a vision-language prompt's images: autotrain.vision.sample_inputs). The text
    is kept verbatim: stripping it would turn an answer of newlines into "" and hide how another begins."""
    import torch

    from autotrain.models import model_max_length

    training = model.training
    model.eval()
    device = next(model.parameters()).device
    stop = {"eos_token_id": stop_ids} if stop_ids else {}
    positions = model_max_length(model.config)
    answers = []
    try:
        with torch.no_grad():
            for number, ids in enumerate(prompts):
                inputs = torch.tensor([ids], device=device)
                more = {k: v.to(device) for k, v in (extras[number] if extras else {}).items()}
                # An answer stops at the model's last position (a prompt is shorter than the block size, which is
                # at most the model's positions): past it there is no position embedding to read.
                room = MAX_NEW_TOKENS if positions is None else min(MAX_NEW_TOKENS, positions - len(ids))
                out = model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), do_sample=False,
                                     max_new_tokens=room, use_cache=True, pad_token_id=tokenizer.pad_token_id,
                                     **stop, **more)
                answers.append(tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True))
    finally:
        model.train(training)
    return answers


def prompt_texts(tokenizer: Any, prompts: list[list[int]], template: str | None) -> list[str]:
    """The prompts as a reader wants them: the text the training template writes around a question (a default
    system prompt, the role header, the generation prompt) removed, markers dropped and whitespace collapsed.

    The template's text is found by rendering it around a placeholder, so a word that every prompt happens to
    share ("Add 37 and 41.", "Add 4 and 53.") stays. A prompt that does not begin with it (its own system message,
    several turns, a start cut by max_prompt_length) keeps its beginning, markers dropped."""
    from autotrain.data.templates import prompt_wrapping

    head, tail = prompt_wrapping(tokenizer, template)
    specials = sorted(tokenizer.all_special_tokens, key=len, reverse=True)
    texts = []
    for ids in prompts:
        text = tokenizer.decode(ids, skip_special_tokens=False)
        if head and text.startswith(head):
            text = text[len(head) :]
        if tail and text.endswith(tail):
            text = text[: len(text) - len(tail)]
        for marker in specials:
            text = text.replace(marker, " ")
        texts.append(" ".join(text.split()))
    return texts


NEWLINE_MARK = "⏎"


def flat(text: str) -> str:
    """An answer on one line that still shows its line breaks: each newline as ⏎ (an answer of newlines is what
    a barely trained model often says, and must not read as empty), other whitespace runs as one space."""
    return NEWLINE_MARK.join(" ".join(part.split()) for part in text.replace("\r\n", "\n").split("\n"))


def one_line(text: str | None, limit: int = 200) -> str:
    """An answer on one line for the console (see `flat`), cut at `limit` characters."""
    if text is None:
        return "(not available: the run was resumed)"
    shown = flat(text)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


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
