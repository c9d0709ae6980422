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
from autotrain.params.judge import JudgeParams
from autotrain.params.method import MethodParams
from autotrain.params.needs import scheduler_needs, unmet
from autotrain.params.schema import Schema
from autotrain.params.sections import (
    DataParams,
    EvaluationParams,
    HubParams,
    LoggingParams,
    LayoutParams,
    LoraParams,
    OptimisationParams,
    ScaleOutParams,
    TemplateParams,
)
from autotrain.params.sweep import SweepParams, parse_space

# The sections in reading order (the order of --help and of training_params.json), each with its title.
SECTIONS: tuple[tuple[str, type[Schema]], ...] = (
    ("Data and model", DataParams),
    ("Method", MethodParams),
    ("Tokens and rows", LayoutParams),
    ("Optimisation", OptimisationParams),
    ("LoRA", LoraParams),
    ("Chat template", TemplateParams),
    ("Evaluation", EvaluationParams),
    ("Judge", JudgeParams),
    ("Scale-out", ScaleOutParams),
    ("Logging and saving", LoggingParams),
    ("Hub", HubParams),
    ("Sweep", SweepParams),
)

# Fields that change what the loss is: trials that differ in them have losses on different scales (the method
# itself most of all: DPO starts at ln 2, ORPO's NLL term alone is several times that).
LOSS_SHAPING: frozenset[str] = frozenset({"trainer", "dpo_beta", "simpo_gamma", "cpo_alpha", "prompt_loss",
                                          "response_only_loss", "loss_type", "loss_weights", "label_smoothing",
                                          "ld_alpha", "discopop_tau", "alphapo_alpha"})
# The key of training_params.json that lists the chosen fields (LLMTrainingParams.save_json); not a field.
CHOSEN_KEY = "_chosen"
# Fields whose values are secrets: never written to disk, never logged.
SECRET_FIELDS: frozenset[str] = frozenset({"token", "wandb_token"})
# Fields that only mean something with `peft` (LoRA); given without it they would be ignored, so they are refused.
LORA_FIELDS: tuple[str, ...] = tuple(name for name in LoraParams.model_fields if name != "peft")


# pydantic collects a model's fields from its last base to its first: the sections go in reversed, to keep their order.
class LLMTrainingParams(*reversed([section for _, section in SECTIONS])):  # type: ignore[misc]
    """Parameters of one fine-tuning run (ORPO by default)."""

    @model_validator(mode="after")
    def _consistent(self) -> LLMTrainingParams:
        if self.push_to_hub and not (self.username or self.repo_id):
            raise ValueError("push_to_hub needs --username or --repo-id")
        if self.use_flash_attention_2 and self.attn_implementation not in (None, "flash_attention_2"):
            raise ValueError(f"use_flash_attention_2 asks for flash_attention_2, attn_implementation for "
                             f"{self.attn_implementation}: give one")
        if not self.apply_chat_template and self.chat_template not in (None, "none"):
            raise ValueError(f"apply_chat_template is off but chat_template is {self.chat_template}: give one")
        if {"prompt_loss", "response_only_loss"} <= self.model_fields_set and self.prompt_loss == self.response_only_loss:
            raise ValueError("prompt_loss and response_only_loss say opposite things (response_only_loss is "
                             "aitraining's name for --no-prompt-loss): give one")
        if self.wandb_visualizer and self.log != "wandb":
            raise ValueError("wandb_visualizer shows a W&B run: add --log wandb")
        if self.sweep_params is not None:
            try:
                space = parse_space(self.sweep_params, type(self).model_fields)
            except ValueError as exc:
                raise ValueError(f"sweep_params: {exc}") from None
            shaping = [r.name for r in space if r.name in LOSS_SHAPING]
            if shaping and self.sweep_metric in ("eval_loss", "loss"):
                raise ValueError(f"sweep_params: {shaping[0]} changes the loss itself, so {self.sweep_metric} cannot "
                                 "rank the trials; set --sweep-metric eval_nll_loss, or eval_rewards/accuracies with "
                                 "--sweep-direction maximize")
        if self.use_sweep and not self.valid_split:
            raise ValueError(f"use_sweep optimises {self.sweep_metric} on the validation split: add --valid-split")
        if self.sample_answers and not self.valid_split:
            raise ValueError("sample_answers answers validation prompts: add --valid-split")
        if self.judge and not (self.valid_split or self.judge_prompts):
            raise ValueError("judge compares answers to the validation prompts: add --valid-split, or give the "
                             "prompts as --judge-prompts FILE")
        if self.eval_strategy == "steps" and self.eval_steps == -1:
            raise ValueError("eval_strategy 'steps' needs --eval-steps N")
        if self.quantization is not None and not self.peft:
            raise ValueError(f"quantization {self.quantization} trains adapters on frozen quantized weights: add --peft")
        if not self.peft:
            given = [name for name in LORA_FIELDS if name in self.model_fields_set]
            if given:
                raise ValueError(f"{given[0]} applies to LoRA: add --peft (or leave {given[0]} out)")
        why_not = scheduler_needs(self) or unmet(self)
        if why_not:
            raise ValueError(why_not)
        uses_reference = self.model_ref is not None or self.precompute_ref_logps
        if uses_reference and not methods.spec(self.trainer).needs_reference:
            field = "model_ref" if self.model_ref is not None else "precompute_ref_logps"
            users = [s.name for s in methods.SPECS.values() if s.needs_reference]
            raise ValueError(f"{field} applies to --trainer {' or '.join(users)} only (trainer is {self.trainer})")
        return self

    @property
    def nll_on_prompt(self) -> bool:
        """The prompt tokens enter the NLL term: --prompt-loss, or aitraining's --no-response-only-loss."""
        return self.prompt_loss or not self.response_only_loss

    @property
    def save_every(self) -> str:
        """The save strategy: as given, else `steps` when only --save-steps was given (its meaning before
        save_strategy existed), else `epoch`; a save_steps of -1 means each epoch."""
        if "save_strategy" in self.model_fields_set:
            return self.save_strategy
        return "steps" if "save_steps" in self.model_fields_set and self.save_steps > 0 else "epoch"

    @property
    def attention(self) -> str | None:
        """The attention kernel the user asked for, if any."""
        return "flash_attention_2" if self.use_flash_attention_2 else self.attn_implementation

    @property
    def tracks_visually(self) -> bool:
        """wandb_visualizer resolved: on by default with --log wandb, as in aitraining."""
        return self.log == "wandb" if self.wandb_visualizer is None else self.wandb_visualizer

    @property
    def hub_repo(self) -> str:
        return self.repo_id or f"{self.username}/{Path(self.project_name).name}"

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
        """training_params.json: every field's value (secrets left out), and under CHOSEN_KEY the fields that were
        chosen, so that `LLMTrainingParams(**json.load(...))` gives these params back (see `_saved_file`)."""
        saved = {**self.public_dict(), CHOSEN_KEY: sorted(self.model_fields_set - SECRET_FIELDS)}
        Path(path).write_text(json.dumps(saved, indent=2) + "\n")

    @classmethod
    def load_json(cls, path: str | Path) -> LLMTrainingParams:
        return cls.from_saved(json.loads(Path(path).read_text()))

    @classmethod
    def from_saved(cls, values: dict[str, Any]) -> LLMTrainingParams:
        """The params of a saved dict. A file written before CHOSEN_KEY existed holds every field and no list of the
        chosen ones: there a value equal to its field's default counts as not chosen."""
        if CHOSEN_KEY in values:
            return cls(**values)
        return cls(**_without_defaults(cls, values, chosen=()))

    @model_validator(mode="before")
    @classmethod
    def _saved_file(cls, data: Any) -> Any:
        """A dict that save_json wrote: the fields not listed as chosen hold their defaults and are left out, so the
        loaded params know what was chosen as the saved ones did (the data's columns are guessed only when not
        chosen; a field that needs another is refused only when chosen). A value edited in the file since, no longer
        the default, counts as chosen."""
        if not isinstance(data, dict) or CHOSEN_KEY not in data:
            return data
        data = dict(data)
        chosen = data.pop(CHOSEN_KEY)
        if not isinstance(chosen, list) or not all(isinstance(name, str) for name in chosen):
            raise ValueError(f"{CHOSEN_KEY} (what a saved training_params.json chose) must be a list of field names")
        return _without_defaults(cls, data, chosen)


def _without_defaults(cls: type[Schema], values: dict[str, Any], chosen: Any) -> dict[str, Any]:
    """`values` less those of fields not in `chosen` that equal their field's default (unknown names stay, to be
    refused by name)."""
    names = cls.accepted_names()
    kept = {}
    for name, value in values.items():
        field = names.get(name, "")
        info = cls.model_fields.get(field)
        if info is None or field in chosen or info.is_required() or value != _json_default(info.default):
            kept[name] = value
    return kept


def _json_default(default: Any) -> Any:
    return default.get_secret_value() if isinstance(default, SecretStr) else default
