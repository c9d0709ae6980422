"""`aitraining llm --inference`: answer prompts with a trained project (merged model or adapter).

Prompts are rendered with the chat template saved in the project (the one used in training), decoding is greedy
unless a temperature is given, and each answer is printed as one JSON line.

`--inference-prompts` is a prompt or a file of prompts, by this rule: a value that names an existing file is read
(.jsonl: an object with a 'prompt' a line; .json: an array of prompts or of such objects; any other suffix: a
prompt a line, blank lines skipped). A value without whitespace that ends in .txt, .jsonl or .json, or starts with
/, ./, ../ or ~, names a file: if there is none, that is an error naming it, never a prompt. Anything else is the
prompt itself. Every prompt is checked and rendered before the first answer, so a bad one is one line naming its
file and line, and nothing is printed before it.

A project is answered only once its run finished (its model card is written last): an unfinished one is named as
such, with its newest checkpoint. Each prompt and answer stays within the model's positions
(`max_position_embeddings`): a longer prompt is refused, and an answer stops where the positions end.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import EllipsisType
from typing import Any

from pydantic import Field

from autotrain.data.files import FileSplit, JsonlSplit
from autotrain.data.json_file import JsonSplit
from autotrain.data.render import checked_value
from autotrain.data.split import Advance, Row, Split, ignore_progress
from autotrain.errors import DataError, ModelError, ParamsError
from autotrain.params import Schema

PROMPT_FILE_SUFFIXES = (".txt", ".jsonl", ".json")
_PATH_STARTS = ("/", "./", "../", "~")


class InferenceParams(Schema):
    """Parameters of `aitraining llm --inference`."""

    project_name: str = Field("project-name", description="Project folder of a finished run.")
    inference_prompts: str = Field(
        ...,
        description="A prompt, or a file of prompts: one a line (.txt), JSON lines with a 'prompt' field (.jsonl), "
        "or a JSON array of prompts or of such objects (.json). A value without spaces ending in .txt, .jsonl or "
        ".json, or starting with /, ./, ../ or ~, names a file, which must exist.",
    )
    inference_max_tokens: int = Field(128, ge=1, description="Most new tokens per answer.")
    inference_temperature: float = Field(0.0, ge=0, description="Sampling temperature; 0 decodes greedily.")
    inference_top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (with a temperature).")
    trust_remote_code: bool | None = Field(
        None,
        description="Allow the model's own Python code from its folder. Default: as the run was trained (its "
        "training_params.json).",
    )


@dataclass(frozen=True)
class Prompt:
    """One prompt (a text or a list of messages) and where it was given (`file:line`, or the flag)."""

    value: str | list[dict[str, str]]
    where: str


def read_prompts(spec: str) -> list[Prompt]:
    """The prompts `spec` gives, by the rule of the module docstring."""
    path = _prompts_file(spec)
    if path is None:
        return [Prompt(spec, "--inference-prompts")]
    split = _PromptsSplit.of(path)
    prompts = [Prompt(checked_value(row, "prompt", split.where(number), needs="a prompt needs a text or messages"),
                      split.where(number)) for number, row in split.rows()]
    if not prompts:
        raise DataError("no prompts in the file", path=str(path))
    return prompts


def _prompts_file(spec: str) -> Path | None:
    """The file `spec` names, or None when it is a prompt."""
    path = Path(spec).expanduser()
    # os.path, not Path: a prompt longer than a file name may be (255 bytes) is not a file, not an OSError.
    if os.path.isdir(path):
        raise ParamsError(f"inference_prompts: {spec} is a folder; give a prompt or a file of prompts")
    if os.path.isfile(path):
        return path
    looks_like_a_path = spec.lower().endswith(PROMPT_FILE_SUFFIXES) or spec.startswith(_PATH_STARTS)
    if looks_like_a_path and spec.strip() and not any(c.isspace() for c in spec):
        raise ParamsError(
            f"inference_prompts: {spec}: no such file (a value ending in {', '.join(PROMPT_FILE_SUFFIXES)} or "
            "starting with /, ./, ../ or ~ names a prompts file; to ask it as a prompt, write it in a .txt file)"
        )
    return None


class _PromptsSplit(FileSplit):
    """A prompt a line: each non-blank line, without its line ending, is a row {"prompt": line}."""

    @classmethod
    def of(cls, path: Path) -> Split:
        suffix = path.suffix.lower()
        return JsonlSplit(path) if suffix == ".jsonl" else _PromptsJson(path) if suffix == ".json" else cls(path)

    def rows(self, advance: Advance = ignore_progress) -> Iterator[tuple[int, Row]]:
        for number, text in self._lines(advance):
            line = text.rstrip("\r\n")
            if line.strip():
                yield number, {"prompt": line}


class _PromptsJson(JsonSplit):
    """A JSON array of prompts (texts) or of objects with a 'prompt'; a text is the row {"prompt": text}."""

    items, items_named = (dict, str), "a prompt or an object with a 'prompt'"

    def rows(self, advance: Advance = ignore_progress) -> Iterator[tuple[int, Row]]:
        for number, item in super().rows(advance):
            yield number, {"prompt": item} if isinstance(item, str) else item


def trained_with_remote_code(project: Path) -> bool:
    """Whether the run in `project` allowed the model's own code (its training_params.json says)."""
    from autotrain.project_folder import PARAMS_FILE

    try:
        return json.loads((project / PARAMS_FILE).read_text()).get("trust_remote_code") is True
    except (OSError, ValueError, AttributeError):
        return False


def prompt_inputs(tokenizer: Any, prompt: str | list[dict[str, str]], template: str | None | EllipsisType = ...
                  ) -> dict[str, Any]:
    """The model inputs for one prompt, built as training built its prompt ids: through `template` (`...`: the
    saved chat template, which is the training template, or none when training used none), continuing a final
    assistant message; without a template, the prompt's text with the tokenizer's special tokens (BOS), as training
    encoded it."""
    template = (tokenizer.chat_template or None) if template is ... else template
    if not template:
        return tokenizer(prompt, return_tensors="pt")
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    continues = messages[-1]["role"] == "assistant"
    return tokenizer.apply_chat_template(messages, chat_template=template, add_generation_prompt=not continues,
                                         continue_final_message=continues, return_tensors="pt", return_dict=True)


def checked_inputs(tokenizer: Any, prompt: Prompt, positions: int | None,
                   template: str | None | EllipsisType = ...) -> dict[str, Any]:
    """`prompt_inputs`, or one line naming the prompt when it cannot be answered as training would have read it.
    `template`: the training template (`...`: the saved one)."""
    from jinja2 import TemplateError

    template = (tokenizer.chat_template or None) if template is ... else template
    if isinstance(prompt.value, list) and not template:
        # Training refuses conversational rows without a template: there is no way it would have read this one.
        raise DataError(f"{prompt.where}: a conversation needs a chat template, and this project was trained without "
                        "one (on plain-text prompts); give the prompt as text")
    try:
        inputs = prompt_inputs(tokenizer, prompt.value, template)
    except TemplateError as exc:  # raise_exception("Conversation roles must alternate ..."), an undefined name
        raise DataError(f"{prompt.where}: the chat template refuses this prompt: {exc.message or exc}") from None
    length = inputs["input_ids"].shape[1]
    if positions is not None and length >= positions:
        raise DataError(f"{prompt.where}: the prompt is {length} tokens and the model reads at most {positions} "
                        "(its max_position_embeddings), which leaves no room for an answer; shorten it")
    return inputs


def check_finished(project: Path) -> None:
    """Refuse a run that has not finished. A folder this tool did not train (no training_params.json, e.g. a model
    downloaded by hand) is answered as it is."""
    from autotrain.project_folder import PARAMS_FILE, unfinished

    why = unfinished(project) if (project / PARAMS_FILE).exists() else None
    if why is not None:
        raise ModelError(f"project_name: {why}")


def generate(params: InferenceParams) -> Iterator[dict[str, str]]:
    from autotrain import quiet
    from autotrain.answers import Decoding, continuation, model_stop_ids
    from autotrain.models import load_trained, model_max_length

    project = Path(params.project_name).expanduser()
    if not project.is_dir():
        raise ParamsError(f"project_name: {project} does not exist")
    check_finished(project)
    prompts = read_prompts(params.inference_prompts)
    quiet.import_quietly("transformers")  # before loading: its loading bars and logs quieted, as in a run
    trust = params.trust_remote_code if params.trust_remote_code is not None else trained_with_remote_code(project)
    model, tokenizer = load_trained(project, trust)
    positions = model_max_length(model.config)
    inputs = [checked_inputs(tokenizer, p, positions) for p in prompts]  # every prompt checked before answering
    decoding = Decoding(params.inference_max_tokens, params.inference_temperature, params.inference_top_p)
    # Stop where the template ends a turn, as well as where the model's own generation config says.
    stop = model_stop_ids(model, tokenizer, tokenizer.chat_template or None)
    for prompt, given in zip(prompts, inputs):
        answer = continuation(model, tokenizer, given, decoding, stop)
        # Verbatim (JSON escapes line breaks): stripped, an answer of newlines would print as "".
        value = prompt.value
        yield {"prompt": value if isinstance(value, str) else json.dumps(value), "answer": answer}
