"""Chat templates: which one a run uses, where its turns end, and the text it wraps around a prompt.

Training, the saved tokenizer and `--inference` use one template: the one `pick_template` returns is the one the
data is rendered with, the one saved with the tokenizer (none saved when none was used), and so the one inference
renders prompts with. A turn must end with a token that generation stops at, or a trained model never stops:
`stop_ids` names it, and it is passed to generate() and written to the saved generation config.
"""

from __future__ import annotations

import logging
from typing import Any

from autotrain.errors import DataError

logger = logging.getLogger("autotrain")

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# ChatML for a tokenizer that has no <|im_end|> token: spelled out as characters, it is nothing generation can stop
# at, so each turn ends with the tokenizer's EOS token instead (the way zephyr's turns end).
CHATML_EOS_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
NAMED_TEMPLATES = {"chatml": CHATML_TEMPLATE, "zephyr": ZEPHYR_TEMPLATE}
TEMPLATE_MARKERS = {"chatml": ("<|im_start|>", "<|im_end|>"), "zephyr": ("<|user|>", "<|assistant|>")}
# Stands for a message's content when rendering a template to see what it writes around it.
_PROBE = "\x00probe\x00"


def pick_template(tokenizer: Any, choice: str | None) -> str | None:
    """The Jinja chat template to use, or None for plain prompt + completion + EOS."""
    own = getattr(tokenizer, "chat_template", None)
    if choice is None:
        return own or None
    if choice == "none":
        return None
    if choice == "tokenizer":
        if not own:
            raise DataError("chat_template='tokenizer' but the tokenizer has no chat template; use chatml, zephyr or none")
        return own
    split_markers = [m for m in TEMPLATE_MARKERS[choice] if not _one_token(tokenizer, m)]
    if choice == "chatml" and "<|im_end|>" in split_markers:
        if tokenizer.eos_token is None:
            raise DataError(
                "chat_template=chatml: the tokenizer has neither an <|im_end|> token nor an EOS token, so a turn "
                "could not end with a token that generation stops at; use a tokenizer with an EOS token"
            )
        logger.warning(
            "chat_template=chatml: the tokenizer has no single token for %s, so the markers are spelled out as text "
            "and each turn ends with the tokenizer's EOS token %s (where generation stops) instead of <|im_end|>",
            ", ".join(split_markers),
            tokenizer.eos_token,
        )
        return CHATML_EOS_TEMPLATE
    if split_markers:
        logger.warning(
            "chat_template=%s: the tokenizer has no single token for %s, so the markers train as plain text",
            choice,
            ", ".join(split_markers),
        )
    return NAMED_TEMPLATES[choice]


def _one_token(tokenizer: Any, text: str) -> bool:
    return len(tokenizer.tokenize(text)) == 1


def render(tokenizer: Any, template: str, messages: list[dict[str, Any]], generation: bool,
           continue_final: bool = False, tools: list[dict] | None = None) -> str:
    """`messages` through `template` as text: with the generation prompt, or continuing the final message; `tools`:
    the tool definitions the template writes into the prompt."""
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=generation,
        continue_final_message=continue_final, tools=tools,
    )


def stop_ids(tokenizer: Any, template: str | None, also: int | list[int] | None = None) -> list[int]:
    """The token ids generation must stop at for text rendered with `template`: `also` (a generation config's
    eos_token_id), the tokenizer's EOS and the special token that closes an assistant turn (what a trained model
    emits at the end of an answer)."""
    ids = list(also) if isinstance(also, list) else [] if also is None else [also]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if template is None:
        return ids  # completions end with EOS
    try:
        rendered = render(tokenizer, template, [{"role": "user", "content": "x"},
                                                {"role": "assistant", "content": _PROBE}], generation=False)
    except Exception:  # noqa: BLE001 - a template that refuses this conversation: EOS is all that is known
        return ids
    closing = rendered[rendered.find(_PROBE) + len(_PROBE) :] if _PROBE in rendered else ""
    encoded = tokenizer(closing, add_special_tokens=False)["input_ids"] if closing else []
    if encoded and encoded[0] in set(tokenizer.all_special_ids) and encoded[0] not in ids:
        ids.append(encoded[0])
    return ids


def prompt_wrapping(tokenizer: Any, template: str | None) -> tuple[str, str]:
    """(head, tail): the text `template` writes before and after the content of a one-message user prompt (a
    default system prompt and the role header; the end of the turn and the generation prompt)."""
    if template is None:
        return "", ""
    try:
        rendered = render(tokenizer, template, [{"role": "user", "content": _PROBE}], generation=True)
    except Exception:  # noqa: BLE001 - nothing known about the template's text: strip nothing
        return "", ""
    if _PROBE not in rendered:
        return "", ""
    head, _, tail = rendered.partition(_PROBE)
    return head, tail
