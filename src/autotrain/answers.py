"""Sample answers: a few validation prompts answered greedily before and after training, side by side.

Metrics say whether the preferences were learned; the answers show what that did to the model's outputs. The
prompts are the validation split's own tokenized prompts (rendered with the training template), so what is asked
is exactly what was evaluated. Written to <project>/samples.jsonl and shown in the model card and the summary.
(Sample *data*, the embedded example datasets, is autotrain/data/samples/: another thing.)

`continuation` is the one generate call: the sample answers, `--inference` and `aitraining chat` all answer through it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SAMPLES_FILE = "samples.jsonl"
MAX_NEW_TOKENS = 64


@dataclass(frozen=True)
class Decoding:
    """How an answer is decoded: greedily unless `temperature` > 0, then sampled with nucleus mass `top_p` and, when
    given, the `top_k` most likely tokens (0: no cut; None: the model's generation config's, transformers' 50)."""

    max_new_tokens: int = MAX_NEW_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int | None = None


def answer(model: Any, tokenizer: Any, prompts: list[list[int]], stop_ids: list[int] | None = None) -> list[str]:
    """Greedy answers (up to MAX_NEW_TOKENS) to each tokenized prompt, one at a time (no padding to get wrong);
    `stop_ids`: the tokens that end an answer under the training template (`data.templates.stop_ids`)."""
    import torch

    training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        answers = []
        for ids in prompts:
            inputs = torch.tensor([ids], device=device)
            given = {"input_ids": inputs, "attention_mask": torch.ones_like(inputs)}
            answers.append(continuation(model, tokenizer, given, stop_ids=stop_ids))
        return answers
    finally:
        model.train(training)


def continuation(model: Any, tokenizer: Any, inputs: dict[str, Any], decoding: Decoding = Decoding(),
                 stop_ids: list[int] | None = None, streamer: Any = None, stopping: Any = None) -> str:
    """The one generate call of the sample answers, `--inference` and `aitraining chat`: one prompt's `inputs`
    (input_ids, attention_mask) continued under `decoding`, ended by `stop_ids` (None: the model's generation
    config's EOS), by `stopping` (transformers stopping criteria) or where the model's positions end (past the last
    one there is no position embedding to read). `streamer` receives the new token ids as they come. The text is
    kept verbatim: stripping it would turn an answer of newlines into "" and hide how another begins."""
    import torch

    from autotrain.models import model_max_length

    length = inputs["input_ids"].shape[1]
    positions = model_max_length(model.config)
    room = decoding.max_new_tokens if positions is None else min(decoding.max_new_tokens, positions - length)
    sampling = decoding.temperature > 0
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=room, do_sample=sampling,
                             temperature=decoding.temperature if sampling else None,
                             top_p=decoding.top_p if sampling else None,
                             top_k=decoding.top_k if sampling else None,
                             use_cache=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=stop_ids or None,
                             streamer=streamer, stopping_criteria=stopping)
    return tokenizer.decode(out[0, length:], skip_special_tokens=True)


def model_stop_ids(model: Any, tokenizer: Any, template: str | None) -> list[int]:
    """What ends an answer of `model` to a prompt rendered with `template`: its generation config's EOS, the
    tokenizer's, and the token that closes a turn of the template (`data.templates.stop_ids`)."""
    from autotrain.data.templates import stop_ids

    return stop_ids(tokenizer, template, also=getattr(getattr(model, "generation_config", None), "eos_token_id", None))


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
