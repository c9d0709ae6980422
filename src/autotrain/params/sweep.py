"""The sweep section of the params, and the search space its `sweep_params` describes (autotrain.sweep runs it).

`sweep_params` maps a field of LLMTrainingParams to its range, in the forms aitraining takes:
    {"lr": {"low": 1e-5, "high": 1e-3, "type": "log"}}     float (uniform), log (log-uniform), int
    {"batch_size": {"choices": [2, 4], "type": "categorical"}} or just {"batch_size": [2, 4]}
    {"lr": [1e-5, 1e-3, "log_uniform"]}                     [low, high, type]
A list is a list of choices, except exactly [number, number, type name]: {"scheduler": ["linear", "cosine",
"constant"]} is three choices. Bounds are finite numbers, low <= high; a choice is a number (finite), a string, a
boolean or null, the values optuna can store. It is JSON text (a flag); in a YAML config file or in Python a
mapping is taken too, and kept as its JSON text.
Standard library only: a bad range is reported when the params are built, before optuna or torch is imported.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, field_validator

from autotrain.params.schema import Schema

# aitraining's default space, used when sweep_params is not given.
DEFAULT_SPACE = '{"lr": [1e-5, 1e-3, "log_uniform"], "batch_size": [2, 4, 8, 16], "warmup_ratio": [0.0, 0.2, "float"]}'
_KINDS = {"float": "float", "uniform": "float", "log": "log", "log_uniform": "log", "int": "int",
          "int_uniform": "int", "categorical": "categorical"}
# Fields a trial may not change: they say where and whether the sweep itself runs.
_NOT_SWEPT = ("project_name", "use_sweep", "sweep_backend", "sweep_n_trials", "sweep_metric", "sweep_direction",
              "sweep_params", "resume_from_checkpoint", "push_to_hub")


@dataclass(frozen=True)
class Range:
    """One swept field: `kind` is float, log, int or categorical (then `choices`)."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()


class SweepParams(Schema):
    """Sweep: several runs with sampled hyperparameters, one after another, the best one kept."""

    use_sweep: bool = Field(
        False,
        description="Run --sweep-n-trials trainings (each in <project>/trials/NNN/, pruned early when hopeless), "
        "write sweep.md and sweep.png, and leave the best trial's model in <project>/. A killed sweep resumes.",
    )
    sweep_backend: Literal["optuna"] = Field("optuna", description="Search library (optuna's TPE sampler).")
    sweep_n_trials: int = Field(10, ge=1, description="Trials to finish (pruned ones count).")
    sweep_metric: str = Field("eval_loss", description="Validation metric to optimise (needs --valid-split).")
    sweep_direction: Literal["minimize", "maximize"] = Field("minimize", description="Minimise or maximise it.")
    sweep_params: str | None = Field(
        None,
        description='Search space as JSON, e.g. \'{"lr": {"low": 1e-5, "high": 1e-3, "type": "log"}, "batch_size": '
        "[2, 4]}' (a list is choices; [low, high, type] a range); a mapping in a YAML file. Default: aitraining's "
        "(lr log 1e-5..1e-3, batch_size 2/4/8/16, warmup_ratio 0..0.2).",
    )

    @field_validator("sweep_params", mode="before")
    @classmethod
    def _mapping_as_json(cls, value: Any) -> Any:
        # A YAML config file (or Python) may write the space as a mapping: the same space as its JSON text.
        return json.dumps(value) if isinstance(value, dict) else value

    @field_validator("sweep_params")
    @classmethod
    def _parses(cls, value: str | None) -> str | None:
        if value is not None:
            parse_space(value)
        return value


def parse_space(text: str | None, fields: Any = None) -> list[Range]:
    """The ranges of a sweep_params JSON text (None: the default space); ValueError names what is wrong.
    `fields`: the names a range may set (LLMTrainingParams checks them; this module does not import it)."""
    try:
        space = json.loads(text if text is not None else DEFAULT_SPACE)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at position {exc.pos})") from None
    if not isinstance(space, dict) or not space:
        raise ValueError("must be a JSON object of field names to ranges")
    return [_range(name, spec, fields) for name, spec in space.items()]


def _range(name: str, spec: Any, fields: Any) -> Range:
    if (fields is not None and name not in fields) or name in _NOT_SWEPT:
        raise ValueError(f"'{name}' cannot be swept: name a training field such as lr, batch_size or lora_r")
    if isinstance(spec, list) and len(spec) == 3 and _number_texts(spec[:2]) and _KINDS.get(spec[2]):
        raise ValueError(f"{name}: [low, high, type] needs numbers, not texts (got {spec[0]!r}, {spec[1]!r}){_YAML}")
    if isinstance(spec, list) and _is_low_high_type(spec):
        spec = {"low": spec[0], "high": spec[1], "type": spec[2]}
    elif isinstance(spec, list):
        spec = {"choices": spec, "type": "categorical"}
    if not isinstance(spec, dict):
        raise ValueError(f"{name}: a range is {{\"low\": L, \"high\": H, \"type\": T}} or a list of choices")
    kind = _KINDS.get(str(spec.get("type", "categorical" if "choices" in spec else "float")))
    if kind is None:
        raise ValueError(f"{name}: unknown type {spec.get('type')!r}; known: {', '.join(_KINDS)}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ValueError(f"{name}: categorical needs a non-empty list of choices")
        for choice in choices:
            _check_choice(name, choice)
        return Range(name, kind, choices=tuple(choices))
    low, high = spec.get("low"), spec.get("high")
    if not all(_is_number(v) and math.isfinite(v) for v in (low, high)) or low > high:
        hint = _YAML if _number_texts([v for v in (low, high) if isinstance(v, str)] or [None]) else ""
        raise ValueError(f"{name}: needs finite numbers low <= high (got low={low!r}, high={high!r}){hint}")
    if kind == "log" and low <= 0:
        raise ValueError(f"{name}: a log range needs low > 0 (got {low})")
    return Range(name, kind, float(low) if kind != "int" else int(low), float(high) if kind != "int" else int(high))


# PyYAML reads 1e-5 (no dot) as text: the usual reason a YAML file's bound is a string.
_YAML = "; in a YAML file write 1.0e-5, not 1e-5 (which YAML reads as text)"


def _number_texts(values: list[Any]) -> bool:
    """Whether every value is a text that reads as a number ('1e-5')."""
    try:
        return all(isinstance(v, str) and math.isfinite(float(v)) for v in values)
    except ValueError:
        return False


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_low_high_type(spec: list[Any]) -> bool:
    """aitraining's [low, high, type]: two numbers and a type name; any other list is choices."""
    return len(spec) == 3 and _is_number(spec[0]) and _is_number(spec[1]) and _KINDS.get(spec[2]) not in (
        None, "categorical")


def _check_choice(name: str, choice: Any) -> None:
    if not (choice is None or isinstance(choice, str | bool | int | float)):
        raise ValueError(f"{name}: a choice must be a number, a string, true, false or null (got {choice!r})")
    if isinstance(choice, float) and not math.isfinite(choice):
        raise ValueError(f"{name}: a choice must be finite (got {choice!r})")


# Past this many combinations of the space's corners, each value is checked with the others' first values instead.
_MAX_COMBINATIONS = 256


def corners(ranges: list[Range]) -> Iterator[dict[str, Any]]:
    """Values a trial may draw that between them reach every choice and both ends of every range: all their
    combinations when there are few, else each one with the others' first values."""
    options = [list(r.choices) if r.kind == "categorical" else [r.low, r.high] for r in ranges]
    if math.prod(len(o) for o in options) <= _MAX_COMBINATIONS:
        for values in itertools.product(*options):
            yield {r.name: v for r, v in zip(ranges, values)}
        return
    first = {r.name: o[0] for r, o in zip(ranges, options)}
    for r, values in zip(ranges, options):
        for value in values:
            yield {**first, r.name: value}
