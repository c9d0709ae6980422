"""aitraining's enhanced evaluation here: metrics computed from each evaluation's own metrics, added to them.

`--use-enhanced-eval` adds the `--eval-metrics` (default perplexity); `--custom-metrics '["perplexity"]'` adds the
named ones whether or not enhanced eval is on. Known here (autotrain.params.sections.METRICS):
- perplexity: exp(eval_nll_loss), the exponential of the validation NLL per trained completion token (the prompt's
  tokens too with --prompt-loss), logged as eval_perplexity.
"""

from __future__ import annotations

import json
import math
from typing import Any

from transformers import TrainerCallback

from autotrain.params import LLMTrainingParams


def requested(params: LLMTrainingParams) -> list[str]:
    """The metric names the run adds to each evaluation, in order, each once."""
    names = [n.strip() for n in params.eval_metrics.split(",")] if params.use_enhanced_eval else []
    names += json.loads(params.custom_metrics) if params.custom_metrics else []
    return list(dict.fromkeys(names))


def eval_extras(params: LLMTrainingParams) -> list[TrainerCallback]:
    names = requested(params)
    return [EvalMetrics(names)] if names and params.valid_split else []


class EvalMetrics(TrainerCallback):
    """Adds eval_<name> to an evaluation's logs before any tracker or metrics.jsonl sees them (it runs first)."""

    def __init__(self, names: list[str]):
        self.names = names

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if logs is None or "eval_nll_loss" not in logs:
            return
        if "perplexity" in self.names:
            nll = logs["eval_nll_loss"]
            logs["eval_perplexity"] = math.exp(nll) if nll < 700 else math.inf  # exp overflows a float past ~709
