"""Parameters that mean something only with another: refused when given without it, naming both, never ignored.

`NEEDS` maps such a field to the other field it depends on and to what it applies to. Only a value the user gave
counts (pydantic's `model_fields_set`, and not None, which spells "not set"): a default never trips a rule, nor
does a saved training_params.json loaded back (it says which fields were chosen: autotrain.params.llm). The LoRA
fields without `peft`, `quantization` without `peft`, `sample_answers` without a validation split, the method
settings of other methods (`simpo_gamma`, `cpo_alpha`, `model_ref`, `precompute_ref_logps`; `loss_type` and the
settings of loss types not chosen) and `wandb_visualizer` are refused by the rules of LLMTrainingParams and
MethodParams themselves.

`scheduler_needs` refuses a schedule that cannot run with the other values: one that steps on the validation loss
without a validation split, one that decays to a floor no flag sets.

Not here, on purpose: `token` (also handed to launched processes as HF_TOKEN, for downloads), `padding` (a model that
cannot take a packed batch pads even with --packing), `ddp_timeout` (several processes start when several GPUs are
visible, which the params cannot know), `add_eos_token` (whether a chat template ends the turn is the tokenizer's).

Standard library and the torch-free method registry only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from autotrain import methods


@dataclass(frozen=True)
class Need:
    """`applies(params)`: whether the field means something with these params; `on`: the field that decides it;
    `what`: what the field applies to, as the refusal says it; `switch`: the flag that turns it on, when `on` is a
    switch or an optional value (the refusal then says "add it"), else the refusal names the value `on` has;
    `enabling`: values under which the field applies (for tests and the docs)."""

    on: str
    applies: Callable[[Any], bool]
    what: str
    switch: str | None
    enabling: dict[str, Any]


def _either(names: list[str]) -> str:
    """'a, b or c'."""
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


_PAIRED = _either([spec.name for spec in methods.SPECS.values() if spec.paired])
_WITH_BETA = _either([spec.name for spec in methods.SPECS.values() if spec.beta is not None])


MIN_LR_SCHEDULERS = ("cosine_with_min_lr", "cosine_warmup_with_min_lr")
_EVALUATION = Need("valid_split", lambda p: p.valid_split is not None, "evaluation", "--valid-split",
                   {"valid_split": "validation"})
_HUB = Need("push_to_hub", lambda p: p.push_to_hub, "the hub upload", "--push-to-hub",
            {"push_to_hub": True, "username": "me"})
_SWEEP = Need("use_sweep", lambda p: p.use_sweep, "a sweep", "--use-sweep", {"use_sweep": True, "valid_split": "v"})
_WANDB = Need("log", lambda p: p.log == "wandb", "W&B", "--log wandb", {"log": "wandb"})
_JUDGE = Need("judge", lambda p: p.judge is not None, "the judged comparison", "--judge SPEC",
              {"judge": "judge-model", "valid_split": "validation"})

NEEDS: dict[str, Need] = {
    "rejected_text_column": Need("trainer", lambda p: methods.spec(p.trainer).paired,
                                 f"--trainer {_PAIRED}", None, {"trainer": "orpo"}),
    "dpo_beta": Need("trainer", lambda p: methods.spec(p.trainer).beta is not None,
                     f"--trainer {_WITH_BETA}", None, {"trainer": "orpo"}),
    "eval_strategy": _EVALUATION,
    "use_enhanced_eval": _EVALUATION,
    "custom_metrics": _EVALUATION,
    # -1 means "not set" for eval_steps (its default) and "each epoch" for save_steps: nothing is ignored.
    "eval_steps": Need("eval_strategy", lambda p: p.eval_strategy == "steps" or p.eval_steps == -1,
                       "--eval-strategy steps", None,
                       {"eval_strategy": "steps", "valid_split": "validation"}),
    "eval_metrics": Need("use_enhanced_eval", lambda p: p.use_enhanced_eval, "enhanced evaluation",
                         "--use-enhanced-eval", {"use_enhanced_eval": True, "valid_split": "validation"}),
    "deepspeed_stage": Need("distributed_backend", lambda p: p.distributed_backend == "deepspeed",
                            "--distributed-backend deepspeed", None, {"distributed_backend": "deepspeed"}),
    # save_steps alone means --save-strategy steps (LLMTrainingParams.save_every): only another strategy ignores it.
    "save_steps": Need("save_strategy", lambda p: p.save_every == "steps" or p.save_steps == -1,
                       "--save-strategy steps", None, {}),
    "save_total_limit": Need("save_strategy", lambda p: p.save_every != "no", "saved checkpoints", None, {}),
    "wandb_token": _WANDB,
    "wandb_run_id": _WANDB,
    "repo_id": _HUB,
    "username": _HUB,
    "hub_private": _HUB,
    "sweep_backend": _SWEEP,
    "sweep_n_trials": _SWEEP,
    "sweep_metric": _SWEEP,
    "sweep_direction": _SWEEP,
    "sweep_params": _SWEEP,
    "judge_prompts": _JUDGE,
    "judge_template": _JUDGE,
    "judge_max_prompts": _JUDGE,
    "min_lr_rate": Need("scheduler", lambda p: p.scheduler in MIN_LR_SCHEDULERS,
                        f"--scheduler {_either(list(MIN_LR_SCHEDULERS))}", None, {"scheduler": MIN_LR_SCHEDULERS[0]}),
}


def unmet(params: Any) -> str | None:
    """The refusal of the first field given without what it needs, or None."""
    for name, need in NEEDS.items():
        if name not in params.model_fields_set or getattr(params, name) is None or need.applies(params):
            continue
        if need.switch is not None:
            return f"{name} applies to {need.what}: add {need.switch} (or leave {name} out)"
        current = getattr(params, need.on)
        return f"{name} applies to {need.what} only ({need.on} is {'none' if current is None else current})"
    return None


def scheduler_needs(params: Any) -> str | None:
    """Why `params.scheduler` cannot run with the other values, or None."""
    scheduler = params.scheduler
    if scheduler in ("reduce_lr_on_plateau", "greedy") and params.valid_split is None:
        return (f"scheduler {scheduler} changes the learning rate by the validation loss, and there is no validation "
                "split: add --valid-split")
    if scheduler in MIN_LR_SCHEDULERS and params.min_lr_rate is None:
        return (f"scheduler {scheduler} decays to a floor: add --min-lr-rate R (the floor as a fraction of --lr, "
                "e.g. 0.1)")
    if scheduler == "warmup_stable_decay":
        return ("scheduler warmup_stable_decay needs the length of its decay phase, which no flag here sets; use "
                f"{MIN_LR_SCHEDULERS[0]} with --min-lr-rate, or linear")
    return None
