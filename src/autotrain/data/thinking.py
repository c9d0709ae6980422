"""Think blocks: where a template writes an assistant turn's reasoning, and whether those tokens are trained.

A turn's think block is the text its template writes between the turn's opening and the start of its content, when
the template writes the turn's reasoning (`reasoning_content` / `thinking`) there: the markers, the reasoning and
what separates it from the answer (Qwen3's `<think>\\nR\\n</think>\\n\\n`). It is found by rendering the turn with
stand-in texts for the content and the reasoning, so no template's markers are hard-coded here.

- A block that holds reasoning is trained with `--reasoning-loss include` (the default) and is context (read, in no
  log-prob, NLL or token count) with `exclude`.
- A block without reasoning (a template that writes an empty `<think>\\n\\n</think>\\n\\n` into every turn) is always
  context: the same few tokens in every answer would otherwise move every mean log-prob toward theirs.
- Reasoning the template does not write for a trained turn is an error naming the row: the answer would train
  without it.
"""

from __future__ import annotations

from collections.abc import Callable

from autotrain.data.messages import REASONING_KEYS, Message, Messages, reasoning
from autotrain.errors import DataError

Render = Callable[[Messages, bool], str]  # (messages, add_generation_prompt) -> text; raises DataError if refused
Pieces = tuple[tuple[str, bool], ...]

# Stand-ins for a message's content and reasoning: plain letters, which any template writes as they are.
CONTENT_PROBE, REASONING_PROBE = "aitrainingcontentstandin", "aitrainingreasoningstandin"
REASONING_LOSS = ("include", "exclude")


def _with(message: Message, content: str | None = None, thought: str | None = None) -> Message:
    out = dict(message)
    if content is not None:
        out["content"] = content
    if thought is not None:
        out.update(dict.fromkeys(REASONING_KEYS, thought))
    return out


def writes_reasoning(render: Render) -> bool:
    """Whether the template writes an assistant turn's reasoning at all (one probe, once per dataset)."""
    try:
        text = render([{"role": "user", "content": "x"},
                       _with({"role": "assistant"}, CONTENT_PROBE, REASONING_PROBE)], False)
    except (DataError, TypeError, ValueError):
        return False
    return REASONING_PROBE in text


def turn_pieces(render: Render, messages: Messages, done: str, text: str, include: bool, thinks: bool,
                where: object) -> Pieces:
    """`text`, what the template writes after `done` for `messages[-1]` (an assistant turn, closed), as (text,
    trained) pieces: its think block trained only when it holds reasoning and `include`, the rest trained.
    `thinks`: the template writes reasoning at all (`writes_reasoning`)."""
    message = messages[-1]
    thought = reasoning(message).strip()
    if not thinks:
        if thought:
            raise _not_written(where)
        return ((text, True),)
    start = _content_start(render, messages, done, text, message)
    if start is None:  # the template writes no reasoning before this turn's content
        if thought and not include:
            raise DataError(f"{where}: --reasoning-loss exclude: the chat template does not write this turn's "
                            "reasoning before its answer, so the two cannot be told apart")
        if thought and thought not in text and not _writes(render, messages, len(done)):
            raise _not_written(where)
        return ((text, True),)
    block, rest = text[:start], text[start:]
    if not block or (thought and include):
        return ((text, True),)
    return ((block, False), (rest, True))


def _content_start(render: Render, messages: Messages, done: str, text: str, message: Message) -> int | None:
    """Where the turn's content starts in `text`, when the template writes the turn's reasoning before it; else
    None."""
    try:
        probed = render([*messages[:-1], _with(message, CONTENT_PROBE, REASONING_PROBE)], False)
        placed = render([*messages[:-1], _with(message, CONTENT_PROBE)], False)
    except (DataError, TypeError, ValueError):
        return None
    if not probed.startswith(done) or not placed.startswith(done):
        return None
    thought_at, content_at = probed.find(REASONING_PROBE, len(done)), probed.find(CONTENT_PROBE, len(done))
    start = placed.find(CONTENT_PROBE, len(done)) - len(done)
    if not 0 <= thought_at < content_at or start < 0 or placed[len(done) : len(done) + start] != text[:start]:
        return None
    return start


def _writes(render: Render, messages: Messages, offset: int) -> bool:
    try:
        return REASONING_PROBE in render([*messages[:-1], _with(messages[-1], thought=REASONING_PROBE)], False)[offset:]
    except (DataError, TypeError, ValueError):
        return False


def _not_written(where: object) -> DataError:
    return DataError(f"{where}: an assistant turn has reasoning (reasoning_content / thinking) that the chat template "
                     "does not write, so its answer would train without it; use a template that writes reasoning, "
                     "or leave the key out")
