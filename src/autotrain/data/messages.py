"""Messages as rows hold them -> the messages a chat template takes, checked; each problem is one line naming the
row and the column.

Accepted (README, Data):
- `{"role", "content"}` with content text, or OpenAI-style parts `[{"type": "text", "text": ...}]`, read as the
  text they hold, joined with nothing between them (a part of any other type, an image or audio, is an error: this
  tool trains on text);
- an assistant message with `tool_calls` in the transformers shape (`[{"type": "function", "function": {"name",
  "arguments"}}]`) and content null, absent or text. Arguments given as a JSON string are parsed into the mapping
  transformers documents: templates write it with `tojson`, and most would write a string quoted a second time;
- a `tool` message (a call's result), with `tool_call_id` / `name` as templates read them;
- `reasoning_content` or `thinking` (the two common keys) on an assistant message: the template is given both, so
  one that reads either renders it;
- `rejected` on an assistant message: that turn's rejected alternative, text or an assistant message (per-turn
  pairs, autotrain.data.expand).

A `tools` column holds the tool definitions a template writes into its prompt: a list of JSON-schema function
definitions, or that list as a JSON string (`tools_value`).
"""

from __future__ import annotations

import json
from typing import Any

from autotrain.data.split import QUOTE_IT
from autotrain.errors import DataError, malformed_json

ROLES = ("system", "user", "assistant", "tool")
REASONING_KEYS = ("reasoning_content", "thinking")
REJECTED_KEY = "rejected"  # an assistant message's rejected alternative: a per-turn pair
Message = dict[str, Any]
Messages = list[Message]


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def checked_message(message: Any, column: str, where: object, number: int, marks: bool = False) -> Message:
    """`message` (the `number`-th of its column, from 1) checked and normalised: content parts read as text, tool
    call arguments as mappings, both reasoning keys set. `marks`: a `rejected` alternative may ride on it."""
    place = f"{where}, column '{column}'"
    calls = message.get("tool_calls") if isinstance(message, dict) else None
    if not isinstance(message, dict) or "role" not in message or ("content" not in message and not calls):
        raise DataError(f"{place}: each message needs 'role' and 'content', got {short(message)}")
    role = message["role"]
    if role not in ROLES:
        raise DataError(f"{place}: unknown role {short(role)}; expected one of {', '.join(ROLES)}")
    out = dict(message)
    content = message.get("content")
    if isinstance(content, list):
        out["content"] = _parts_text(content, place, number)
    elif not isinstance(content, str) and not (calls and content is None):
        raise DataError(f"{place}: message content must be text, got {short(content)}")
    if "tool_calls" in message:
        if role != "assistant":
            raise DataError(f"{place}: message {number} is a {role} message with tool_calls; only the assistant "
                            "calls tools")
        out["tool_calls"] = [_checked_call(call, place, number, k) for k, call in enumerate(_listed(calls), 1)]
        if not out["tool_calls"]:
            raise DataError(f"{place}: message {number} has an empty tool_calls list; leave the key out")
    said = [message[key] for key in REASONING_KEYS if message.get(key) is not None]
    if said:
        if role != "assistant" or not all(isinstance(text, str) for text in said) or len(set(said)) > 1:
            raise DataError(f"{place}: message {number}: reasoning_content / thinking must be one text, on an "
                            f"assistant message; got {short(said[0] if len(said) == 1 else said)} on a {role} message")
        out.update(dict.fromkeys(REASONING_KEYS, said[0]))
    if REJECTED_KEY in message and not (marks and role == "assistant"):
        raise DataError(f"{place}: message {number} carries a '{REJECTED_KEY}' alternative; only an assistant turn of "
                        "a conversation column (per-turn pairs) may")
    return out


def _listed(calls: Any) -> list:
    return calls if isinstance(calls, list) else [calls]


def _parts_text(parts: list, place: str, number: int) -> str:
    texts = []
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text" or not isinstance(part.get("text"), str):
            what = f"of type {short(kind)}" if kind is not None else short(part)
            raise DataError(f"{place}: message {number} has a content part {what}; this run trains on text only, "
                            "so content parts must be {\"type\": \"text\", \"text\": ...}")
        texts.append(part["text"])
    return "".join(texts)


def _checked_call(call: Any, place: str, number: int, k: int) -> dict:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise DataError(f"{place}: message {number}, tool call {k}: expected {{\"type\": \"function\", \"function\": "
                        f"{{\"name\": ..., \"arguments\": ...}}}}, got {short(call)}")
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError as exc:
            raise DataError(f"{place}: message {number}, tool call {k}: the arguments are a string but not JSON "
                            f"({malformed_json(exc)})") from None
    if not isinstance(arguments, dict):
        raise DataError(f"{place}: message {number}, tool call {k}: arguments must be a mapping (or a JSON string of "
                        f"one), got {short(arguments)}")
    return {**call, "type": call.get("type", "function"), "function": {**function, "arguments": arguments}}


def has_calls(message: Message) -> bool:
    return bool(message.get("tool_calls"))


def reasoning(message: Message) -> str:
    """The message's reasoning text ('' when it has none)."""
    return message.get(REASONING_KEYS[0]) or ""


def without_reasoning(message: Message) -> Message:
    return {key: value for key, value in message.items() if key not in REASONING_KEYS}


def said(message: Message) -> bool:
    """Whether an assistant message holds anything to learn: text, a tool call or reasoning."""
    return bool((message.get("content") or "").strip()) or has_calls(message) or bool(reasoning(message).strip())


def tools_value(row: dict[str, Any], column: str | None, where: object) -> list[dict] | None:
    """The row's tool definitions (None: no tools column, a null value or an empty list, which a template must not
    be given: Llama's writes its tool boilerplate for an empty list)."""
    if column is None:
        return None
    value = row.get(column)
    place = f"{where}, column '{column}'"
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise DataError(f"{place}: the tools are a string but not JSON ({malformed_json(exc)})") from None
    if value is None or value == []:
        return None
    if not isinstance(value, list) or not all(isinstance(tool, dict) and tool for tool in value):
        raise DataError(f"{place}: expected a list of tool definitions (JSON-schema function objects, or that list "
                        f"as a JSON string), got {short(value)}")
    return value


def checked_value(row: dict[str, Any], column: str, where: object, answer: bool = False,
                  needs: str = "every pair needs a text here", marks: bool = False) -> str | Messages:
    """The row's value in `column`, checked: a text or a list of messages (normalised, `checked_message`). An
    `answer` (chosen, rejected, the SFT completion) may be "": blank, it is dropped and counted like a
    whitespace-only answer; an empty prompt or list is an error (`needs` says why)."""
    if column not in row:
        raise DataError(f"{where}, column '{column}': missing from this row (it has: {', '.join(row)})")
    return checked(row[column], column, where, answer, needs, marks)


def checked(value: Any, column: str, where: object, answer: bool = False,
            needs: str = "every pair needs a text here", marks: bool = False) -> str | Messages:
    """`value` (read from `column`) checked as `checked_value` checks a row's value."""
    if value is None:
        raise DataError(f"{where}, column '{column}': null value; {needs}")
    if answer and value == "":
        return value
    if isinstance(value, str | list) and len(value) == 0:
        raise DataError(f"{where}, column '{column}': empty value; {needs}")
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        return [checked_message(message, column, where, number, marks) for number, message in enumerate(value, 1)]
    advice = where.value_advice(column) if hasattr(where, "value_advice") else QUOTE_IT
    raise DataError(f"{where}, column '{column}': expected text or a list of messages, got {type(value).__name__} "
                    f"{short(value)}; {advice}")
