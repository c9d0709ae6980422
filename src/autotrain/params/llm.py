"""LLMTrainingParams: the one typed schema for a training run, made of its sections (autotrain.params.sections).

It is validated once, at construction, and never mutated: what reaches the trainer is what the user built.
Values that depend on the data or the model (which columns to use, the auto logging interval, the real block
size) are resolved into separate objects downstream, never written back here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import SecretStr, model_validator

from autotrain import methods
from autotrain.params.schema import Schema
from autotrain.params.sections import (
    DataParams,
    EvaluationParams,
    HubParams,
    LoggingParams,
    LoraParams,
    MethodParams,
    OptimisationParams,
    ScaleOutParams,
    TemplateParams,
)

# The sections in reading order (the order of --help and of training_params.json), each with its title.
SECTIONS: tuple[tuple[str, type[Schema]], ...] = (
    ("Data and model", DataParams),
    ("Method", MethodParams),
    ("Optimisation", OptimisationParams),
    ("LoRA", LoraParams),
    ("Chat template", TemplateParams),
    ("Evaluation", EvaluationParams),
    ("Scale-out", ScaleOutParams),
    ("Logging and saving", LoggingParams),
    ("Hub", HubParams),
)

# Fields whose values are secrets: never written to disk, never logged.
SECRET_FIELDS: frozenset[str] = frozenset({"token"})
# Fields that only mean something with `peft` (LoRA); given without it they would be ignored, so they are refused.
LORA_FIELDS: tuple[str, ...] = tuple(name for name in LoraParams.model_fields if name != "peft")


# pydantic collects a model's fields from its last base to its first: the sections go in reversed, to keep their order.
class LLMTrainingParams(*reversed([section for _, section in SECTIONS])):  # type: ignore[misc]
    """Parameters of one fine-tuning run (ORPO by default)."""

    @model_validator(mode="after")
    def _consistent(self) -> LLMTrainingParams:
        if self.push_to_hub and not self.username:
            raise ValueError("push_to_hub needs --username")
        if self.sample_answers and not self.valid_split:
            raise ValueError("sample_answers answers validation prompts: add --valid-split")
        if self.eval_strategy == "steps" and self.eval_steps == -1:
            raise ValueError("eval_strategy 'steps' needs --eval-steps N")
        if self.quantization is not None and not self.peft:
            raise ValueError(f"quantization {self.quantization} trains adapters on frozen quantized weights: add --peft")
        if not self.peft:
            given = [name for name in LORA_FIELDS if name in self.model_fields_set]
            if given:
                raise ValueError(f"{given[0]} applies to LoRA: add --peft (or leave {given[0]} out)")
        uses_reference = self.model_ref is not None or self.precompute_ref_logps
        if uses_reference and not methods.spec(self.trainer).needs_reference:
            field = "model_ref" if self.model_ref is not None else "precompute_ref_logps"
            users = [s.name for s in methods.SPECS.values() if s.needs_reference]
            raise ValueError(f"{field} applies to --trainer {' or '.join(users)} only (trainer is {self.trainer})")
        return self

    @property
    def method(self) -> str:
        """The training method's own name (an alias such as `default` resolved: autotrain.methods)."""
        return methods.canonical(self.trainer)

    # --- Serialisation without secrets ----------------------------------------------------------------------
    def secret_values(self) -> list[str]:
        """The values of the secret fields that are set (to scrub them from anything a tracker records)."""
        values = (getattr(self, name) for name in sorted(SECRET_FIELDS))
        return [value.get_secret_value() for value in values if value is not None]

    def public_dict(self) -> dict[str, Any]:
        """All fields as JSON values, secrets removed."""
        return self.model_dump(mode="json", exclude=set(SECRET_FIELDS))

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.public_dict(), indent=2) + "\n")

    @classmethod
    def load_json(cls, path: str | Path) -> LLMTrainingParams:
        return cls.from_saved(json.loads(Path(path).read_text()))

    @classmethod
    def from_saved(cls, values: dict[str, Any]) -> LLMTrainingParams:
        """The params of a saved dict (training_params.json holds every field): a value equal to its field's default
        counts as not chosen, so the loaded params know what was chosen as the saved ones did (the data's columns are
        guessed only when not chosen; LoRA fields are refused without peft only when chosen)."""
        chosen = {}
        names = cls.accepted_names()
        for name, value in values.items():
            info = cls.model_fields.get(names.get(name, ""))
            if info is None or info.is_required() or value != _json_default(info.default):
                chosen[name] = value  # unknown names stay, to be refused by name
        return cls(**chosen)


def _json_default(default: Any) -> Any:
    return default.get_secret_value() if isinstance(default, SecretStr) else default
