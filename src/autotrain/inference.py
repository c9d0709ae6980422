"""`aitraining llm --inference`: answer prompts with a trained project (merged model or adapter).

Prompts are rendered with the chat template saved in the project (the one used in training), decoding is greedy
unless a temperature is given, and each answer is printed as one JSON line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import Field

from autotrain.errors import DataError, ParamsError, malformed_json
from autotrain.params import Schema


class InferenceParams(Schema):
    """Parameters of `aitraining llm --inference`."""

    project_name: str = Field("project-name", description="Project folder of a finished run.")
    inference_prompts: str = Field(
        ..., description="A prompt, or a file of prompts: one per line (.txt) or JSON lines with a 'prompt' field."
    )
    inference_max_tokens: int = Field(128, ge=1, description="Most new tokens per answer.")
    inference_temperature: float = Field(0.0, ge=0, description="Sampling temperature; 0 decodes greedily.")
    inference_top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (with a temperature).")
    trust_remote_code: bool | None = Field(
        None,
        description="Allow the model's own Python code from its folder. Default: as the run was trained (its "
        "training_params.json).",
    )


def read_prompts(spec: str) -> list[str]:
    """A literal prompt, or the prompts in a file (a line each, or JSON lines with 'prompt')."""
    path = Path(spec).expanduser()
    if not path.is_file():
        return [spec]
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(malformed_json(exc), path=str(path), line=number) from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str | list):
                raise DataError("expected an object with a 'prompt'", path=str(path), line=number, column="prompt")
            prompts.append(row["prompt"])
        else:
            prompts.append(line)
    if not prompts:
        raise DataError("no prompts in the file", path=str(path))
    return prompts


def trained_with_remote_code(project: Path) -> bool:
    """Whether the run in `project` allowed the model's own code (its training_params.json says)."""
    from autotrain.project_folder import PARAMS_FILE

    try:
        return json.loads((project / PARAMS_FILE).read_text()).get("trust_remote_code") is True
    except (OSError, ValueError, AttributeError):
        return False


def prompt_inputs(tokenizer: Any, prompt: str | list[dict[str, str]]) -> dict[str, Any]:
    """The model inputs for one prompt, built as training built its prompt ids: through the saved chat template
    (which is the training template, or none when training used none), continuing a final assistant message;
    without a template, the prompt's text with the tokenizer's special tokens (BOS), as training encoded it."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if tokenizer.chat_template:
        continues = messages[-1]["role"] == "assistant"
        return tokenizer.apply_chat_template(messages, add_generation_prompt=not continues,
                                             continue_final_message=continues, return_tensors="pt", return_dict=True)
    return tokenizer(prompt if isinstance(prompt, str) else messages[-1]["content"], return_tensors="pt")


def generate(params: InferenceParams) -> Iterator[dict[str, str]]:
    import torch

    from autotrain import quiet
    from autotrain.data.templates import stop_ids
    from autotrain.models import load_trained

    quiet.import_quietly("transformers")  # before loading: its loading bars and logs quieted, as in a run

    project = Path(params.project_name).expanduser()
    if not project.is_dir():
        raise ParamsError(f"project_name: {project} does not exist")
    prompts = read_prompts(params.inference_prompts)
    trust = params.trust_remote_code if params.trust_remote_code is not None else trained_with_remote_code(project)
    model, tokenizer = load_trained(project, trust)
    sampling = params.inference_temperature > 0
    # Stop where the template ends a turn, as well as where the model's own generation config says.
    own_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stop = stop_ids(tokenizer, tokenizer.chat_template or None, also=own_eos)
    for prompt in prompts:
        inputs = prompt_inputs(tokenizer, prompt)
        with torch.no_grad():
            out = model.generate(
                **inputs,
                max_new_tokens=params.inference_max_tokens,
                do_sample=sampling,
                temperature=params.inference_temperature if sampling else None,
                top_p=params.inference_top_p if sampling else None,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=stop or None,
            )
        answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        # Verbatim (JSON escapes line breaks): stripped, an answer of newlines would print as "".
        yield {"prompt": prompt if isinstance(prompt, str) else json.dumps(prompt), "answer": answer}
