"""Three chat templates written for the tests, one per idiom of tool use, and the tokenizer they run on.

- TOOLS_IN_SYSTEM (Llama 3.1's idiom): the tool definitions in a system turn; a call is the turn's whole body, one
  JSON object `{"name": ..., "parameters": ...}`; reasoning, when a turn has some, as a `Thought: ...` line first.
- JSON_IN_TAG (Qwen3's / Hermes' idiom): the definitions in a `<tools>` system turn; calls as JSON inside
  `<tool_call>` text tags after the content; tool results as a user turn in `<tool_response>` tags; every assistant
  turn opens a think block, empty when the turn has no reasoning.
- SPECIAL_BLOCK (Mistral's idiom): `[AVAILABLE_TOOLS]...[/AVAILABLE_TOOLS]` before the first user turn, calls as a
  `[TOOL_CALLS][...]` block of special tokens, results in `[TOOL_RESULTS]`; assistant turns end with EOS `</s>` and
  no newline (as TRL expects); it writes no reasoning.

The tokenizer is conftest's character-level one (`char_ids`) plus SPECIAL_BLOCK's markers as special tokens, so
expected ids are written by hand (`ids`).
"""

from __future__ import annotations

from conftest import EOS, IM_END, IM_START, NEWLINE, char_ids, make_tokenizer

TOOLS_IN_SYSTEM = (
    "{% if tools %}{{ '<|im_start|>system\\nYou may call:\\n' }}{% for tool in tools %}{{ (tool | tojson) + '\\n' }}"
    "{% endfor %}{{ '<|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}{{ '<|im_start|>' + message.role + '\\n' }}"
    "{% if message.reasoning_content %}{{ 'Thought: ' + message.reasoning_content + '\\n' }}{% endif %}"
    "{% if message.tool_calls %}{% for call in message.tool_calls %}{{ '{\"name\": \"' + call.function.name + "
    "'\", \"parameters\": ' + (call.function.arguments | tojson) + '}' }}{% endfor %}"
    "{% else %}{{ message.content }}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

JSON_IN_TAG = (
    "{% if tools %}{{ '<|im_start|>system\\n<tools>' }}{% for tool in tools %}{{ '\\n' + (tool | tojson) }}"
    "{% endfor %}{{ '\\n</tools><|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% if message.role == 'tool' %}"
    "{{ '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}"
    "{% elif message.role == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n<think>\\n' + (message.reasoning_content or '') + '\\n</think>\\n\\n' "
    "+ (message.content or '') }}"
    "{% for call in message.tool_calls or [] %}{{ '<tool_call>\\n{\"name\": \"' + call.function.name + "
    "'\", \"arguments\": ' + (call.function.arguments | tojson) + '}\\n</tool_call>' }}{% endfor %}"
    "{{ '<|im_end|>\\n' }}"
    "{% else %}{{ '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

SPECIAL_BLOCK = (
    "{% set ns = namespace(tools_done=false) %}"
    "{% for message in messages %}"
    "{% if message.role == 'user' %}"
    "{% if tools and not ns.tools_done %}{{ '[AVAILABLE_TOOLS]' + (tools | tojson) + '[/AVAILABLE_TOOLS]' }}"
    "{% set ns.tools_done = true %}{% endif %}"
    "{{ '[INST]' + message.content + '[/INST]' }}"
    "{% elif message.role == 'tool' %}{{ '[TOOL_RESULTS]' + message.content + '[/TOOL_RESULTS]' }}"
    "{% elif message.tool_calls %}{{ '[TOOL_CALLS][' }}{% for call in message.tool_calls %}"
    "{{ '{\"name\": \"' + call.function.name + '\", \"arguments\": ' + (call.function.arguments | tojson) + '}' }}"
    "{% if not loop.last %}{{ ', ' }}{% endif %}{% endfor %}{{ ']</s>' }}"
    "{% else %}{{ message.content + '</s>' }}{% endif %}"
    "{% endfor %}"
)

TEMPLATES = {"tools-in-system": TOOLS_IN_SYSTEM, "json-in-tag": JSON_IN_TAG, "special-block": SPECIAL_BLOCK}

BLOCK_TOKENS = ["[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[INST]", "[/INST]", "[TOOL_RESULTS]",
                "[/TOOL_RESULTS]"]
# The test's own statement of the special tokens' ids: conftest's, then the block markers from 101 on.
SPECIAL_IDS = {"<|im_start|>": IM_START, "<|im_end|>": IM_END, "</s>": EOS,
               **{token: 101 + k for k, token in enumerate(BLOCK_TOKENS)}}
VOCAB_SIZE = 101 + len(BLOCK_TOKENS)


def tool_tokenizer(template: str):
    """conftest's chat tokenizer with the block markers as special tokens and `template`; SPECIAL_BLOCK's turns end
    with `</s>`, so that is its EOS."""
    tok = make_tokenizer(True)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", *BLOCK_TOKENS]})
    tok.chat_template = template
    if template == SPECIAL_BLOCK:
        tok.eos_token = "</s>"
    return tok


def ids(text: str) -> list[int]:
    """`text` as ids under the test's vocabulary: special tokens by SPECIAL_IDS, every other character by char_ids."""
    out: list[int] = []
    while text:
        special = next((s for s in SPECIAL_IDS if text.startswith(s)), None)
        if special is not None:
            out.append(SPECIAL_IDS[special])
            text = text[len(special) :]
        else:
            out += char_ids(text[0]) if text[0] != "\n" else [NEWLINE]
            text = text[1:]
    return out


WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                                                  "parameters": {"type": "object",
                                                                 "properties": {"city": {"type": "string"}}}}}
# The definition as transformers' tojson writes it (json.dumps's default separators), written out by hand.
WEATHER_JSON = ('{"type": "function", "function": {"name": "get_weather", "description": "Weather now", '
                '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}')


def call(city: str, arguments_as_text: bool = False, content: str | None = None) -> dict:
    arguments = f'{{"city": "{city}"}}' if arguments_as_text else {"city": city}
    return {"role": "assistant", "content": content,
            "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": arguments}}]}
