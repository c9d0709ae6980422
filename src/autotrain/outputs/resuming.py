"""Resuming a run: whether the checkpoint can be resumed at all, what a resume may change, and the record of it.

A resume continues one training. Every field of the params has a rule (`RULES`, checked by a test to cover them
all), taken against the settings the checkpoint was trained with (its own copy of training_params.json):

- **refused** when changed: what is trained and from what (model, adapters, quantization), the data and how it
  becomes tokens, the objective, the batches and data order, and the optimizer and schedule whose state the
  checkpoint holds. The checkpoint's weights and optimizer moments are those of the saved settings, and the steps
  resume by position in the same rows: with another value the run would silently train a mix, and its card would
  name only the new one.
- **applied** from the resumed step: the schedule's peak and length (lr, warmup_ratio, epochs, max_steps: the
  rates are set from the new schedule at the resumed step, `autotrain.train.resume.RatesFromSchedule`,
  except for schedules that keep the rate they reached, where a new lr is refused), clipping, precision and
  kernels, and what the run logs, evaluates, saves and publishes.

Every resume appends one line to resumes.jsonl (its step, its checkpoint, what it changed), which the card shows.
A resume from an earlier step drops the lines of the branch it abandons, as metrics.jsonl drops its records.

Checked before the data is read (standard library only): the checkpoint has every part a resume needs (weights,
optimizer, schedule, random state, a readable trainer_state.json), holds the kind of weights this run trains (a LoRA
adapter or all weights), and was trained with settings this resume may continue. Once the model's config and
weights load, `check_model_config` and `trainers.clm.resume.check_weights` compare their shapes, still before
anything is written.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from autotrain.errors import ParamsError, malformed_json
from autotrain.outputs.project_folder import PARAMS_FILE, RESUMES_FILE, project_dir, resume_point
from autotrain.params import LLMTrainingParams

logger = logging.getLogger("autotrain")

REFUSED, APPLIED = "refused", "applied"

_TRAINED = ("model", "model_ref", "trust_remote_code", "quantization", "peft", "lora_r", "lora_alpha", "lora_dropout",
            "target_modules", "train_vision")
_DATA = ("data_path", "train_split", "valid_split", "text_column", "prompt_text_column", "rejected_text_column",
         "image_column", "max_samples", "model_max_length", "max_prompt_length", "max_completion_length", "block_size",
         "add_eos_token", "chat_template", "apply_chat_template", "tools_column", "ranked_pairs", "label_column")
_OBJECTIVE = ("trainer", "dpo_beta", "simpo_gamma", "cpo_alpha", "prompt_loss", "response_only_loss",
              "disable_dropout", "reasoning_loss", "loss_type", "loss_weights", "label_smoothing", "ld_alpha",
              "discopop_tau", "alphapo_alpha", "desirable_weight", "undesirable_weight")
_STATE = ("batch_size", "gradient_accumulation", "seed", "optimizer", "weight_decay", "scheduler",
          "distributed_backend", "deepspeed_stage")
# The learning-rate schedule's peak and length: applied by setting the rates from the new schedule.
SCHEDULE = ("lr", "warmup_ratio", "min_lr_rate", "epochs", "max_steps")
_HOW = ("max_grad_norm", "mixed_precision", "disable_gradient_checkpointing", "auto_find_batch_size",
        "attn_implementation", "use_flash_attention_2", "packing", "padding", "precompute_ref_logps", "ddp_timeout",
        "save_processed_data", "torch_compile")
_OUTPUTS = ("eval_strategy", "eval_steps", "sample_answers", "use_enhanced_eval", "eval_metrics", "custom_metrics",
            "log", "logging_steps", "save_total_limit", "save_strategy", "save_steps", "wandb_run_id",
            "wandb_visualizer", "merge_adapter", "push_to_hub", "repo_id", "hub_private", "username", "use_sweep",
            "sweep_backend", "sweep_n_trials", "sweep_metric", "sweep_direction", "sweep_params",
            # judged after training, from the answers before training kept in the project (autotrain.judge)
            "judge", "judge_prompts", "judge_template", "judge_max_prompts")
# Not settings of the training: the folder (the same one by construction), the resume itself, secrets (never saved).
NOT_COMPARED = ("project_name", "resume_from_checkpoint", "token", "wandb_token")

RULES: dict[str, str] = {**{name: REFUSED for name in (*_TRAINED, *_DATA, *_OBJECTIVE, *_STATE)},
                         **{name: APPLIED for name in (*SCHEDULE, *_HOW, *_OUTPUTS)}}

# transformers' schedules that are not a function of the step: they keep the rate they reached in the checkpoint.
OWN_RATE_SCHEDULERS = ("reduce_lr_on_plateau", "greedy")

# The parts a checkpoint needs, each with the names transformers gives it (one process; several; FSDP; DeepSpeed).
_OPTIMIZER = ("optimizer.pt", "optimizer.bin", "optimizer_0", "global_step*")
_SCHEDULE = ("scheduler.pt", "global_step*")
_RANDOM = ("rng_state.pth", "rng_state_*.pth")
_FULL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model_fsdp_0")
_ADAPTER = ("adapter_model.safetensors",)


def checked_resume(params: LLMTrainingParams, folder_checked: bool = False) -> Path | None:
    """The checkpoint this run resumes (None: it starts fresh), after the checks that need no torch: the project
    folder's rules, the checkpoint's parts, its kind, and the settings a resume may not change."""
    resume = params.resume_from_checkpoint
    checkpoint = resume_point(project_dir(params), "auto" if folder_checked and resume is None else resume)
    if checkpoint is not None:
        check_parts(checkpoint, params.peft)
        check_settings(checkpoint, params)
    return checkpoint


def check_parts(checkpoint: Path, peft: bool) -> None:
    """Refuse a checkpoint that lacks a part of the training state, or holds the other kind of weights.

    Without its optimizer state a resume restarts Adam's moments, without its random state it draws other dropout
    masks: the run would end with other weights than an uninterrupted one, and say nothing."""
    step_of(checkpoint)  # a readable trainer_state.json
    adapter, full = _has(checkpoint, _ADAPTER), _has(checkpoint, _FULL_WEIGHTS)
    if adapter and not peft:
        raise ParamsError(f"resume_from_checkpoint: {checkpoint} holds a LoRA adapter (adapter_model.safetensors) and "
                          "this run trains all weights: add --peft with the adapter's settings, or resume a checkpoint "
                          "of a full fine-tune")
    if full and not adapter and peft:
        raise ParamsError(f"resume_from_checkpoint: {checkpoint} holds all weights of a full fine-tune and this run "
                          "trains LoRA adapters (--peft): leave out --peft, or resume a checkpoint of a LoRA run")
    for names, what in ((_ADAPTER if peft else _FULL_WEIGHTS, "the weights"), (_OPTIMIZER, "the optimizer state"),
                        (_SCHEDULE, "the schedule"), (_RANDOM, "the random state")):
        if not _has(checkpoint, names):
            raise ParamsError(
                f"resume_from_checkpoint: {checkpoint} has no {names[0]} ({what}), so it cannot continue the same "
                f"training; resume an earlier checkpoint (--resume-from-checkpoint FOLDER){_earlier(checkpoint)}, or "
                "start over in a new --project-name"
            )


def step_of(checkpoint: Path) -> int:
    """The checkpoint's global step, from its trainer_state.json; a missing or damaged file is refused by name."""
    path = checkpoint / "trainer_state.json"
    try:
        state = json.loads(path.read_text())
        return int(state["global_step"])
    except OSError as exc:
        why = exc.strerror or str(exc)
    except ValueError as exc:
        why = malformed_json(exc) if isinstance(exc, json.JSONDecodeError) else "global_step is not a number"
    except (KeyError, TypeError):
        why = "no global_step in it"
    raise ParamsError(f"resume_from_checkpoint: {path} is damaged ({why}); resume an earlier checkpoint "
                      f"(--resume-from-checkpoint FOLDER){_earlier(checkpoint)}, or start over in a new --project-name")


def _has(checkpoint: Path, names: tuple[str, ...]) -> bool:
    return any(any(checkpoint.glob(name)) for name in names)


def _earlier(checkpoint: Path) -> str:
    from autotrain.outputs.checkpoints import checkpoints

    older = [p for p in checkpoints(checkpoint.parent) if p.name != checkpoint.name and p.is_dir()]
    return f" such as {older[-1]}" if older else ""


def saved_settings(checkpoint: Path) -> dict[str, Any] | None:
    """The params the checkpoint was trained with: its own copy, else its run's (a checkpoint saved before copies
    were kept, or one set aside in superseded/); None where neither exists."""
    for folder in (checkpoint, checkpoint.parent, checkpoint.parent.parent):
        path = folder / PARAMS_FILE
        if path.is_file():
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError):
                raise ParamsError(f"resume_from_checkpoint: {path} is damaged; it says how {checkpoint} was trained, "
                                  "so the resume cannot be checked against it") from None
            return saved if isinstance(saved, dict) else None
    return None


def changes(saved: dict[str, Any], params: LLMTrainingParams) -> dict[str, tuple[Any, Any]]:
    """The compared fields whose value differs from the saved one: field -> (saved, now). Fields the saved file lacks
    (an older version of this tool) are not compared."""
    now = params.public_dict()
    found = {}
    for name in RULES:
        if name in saved and name in now and not _same(name, saved[name], now[name]):
            found[name] = (saved[name], now[name])
    return found


def _same(name: str, saved: Any, now: Any) -> bool:
    if saved == now:
        return True
    if name in ("model", "data_path", "model_ref") and isinstance(saved, str) and isinstance(now, str):
        try:  # one folder or file written two ways (relative, absolute, through a link)
            return os.path.samefile(Path(saved).expanduser(), Path(now).expanduser())
        except OSError:
            return False
    return False


def check_settings(checkpoint: Path, params: LLMTrainingParams) -> None:
    """Refuse a resume that changes a refused field, naming every such change and both values."""
    saved = saved_settings(checkpoint)
    if saved is None:
        return
    changed = changes(saved, params)
    refused = [name for name in changed if RULES[name] == REFUSED]
    own_rate = params.scheduler in OWN_RATE_SCHEDULERS and "lr" in changed
    if not refused and not own_rate:
        return
    parts = [shown(name, *changed[name]) for name in refused]
    if own_rate:
        parts.append(shown("lr", *changed["lr"]) + f" ({params.scheduler} keeps the rate it reached in the checkpoint)")
    raise ParamsError(
        f"resume_from_checkpoint: {checkpoint} was trained with other settings: {', '.join(parts)}; a resume continues "
        "the same training and cannot change them (docs/outputs-and-resuming.md): give the values of its "
        f"{PARAMS_FILE}, or train anew in another --project-name"
    )


def shown(name: str, saved: Any, now: Any) -> str:
    return f"{name} {json.dumps(saved)} -> {json.dumps(now)}"


def check_model_config(checkpoint: Path | None, config: Any, model: str) -> None:
    """A full fine-tune's checkpoint of a model with another vocabulary or shape is refused before the data stage
    (loading it would fail with a size mismatch after the folder was prepared)."""
    if checkpoint is None or not (checkpoint / "config.json").is_file():
        return
    try:
        theirs = json.loads((checkpoint / "config.json").read_text())
    except (OSError, ValueError):
        raise ParamsError(f"resume_from_checkpoint: {checkpoint}/config.json is damaged") from None
    for key in ("model_type", "vocab_size", "hidden_size", "num_hidden_layers"):
        ours = getattr(config, key, None)
        if key in theirs and ours is not None and theirs[key] != ours:
            raise ParamsError(f"resume_from_checkpoint: {checkpoint} is a checkpoint of another model: {key} "
                              f"{theirs[key]} there, {ours} in {model}; resume it with the model it was trained from")


def keep_records_until(project: Path, step: int) -> None:
    """Drop the resume records of the steps that run again (those at or after the resumed step; all when a run
    starts over), as metrics.jsonl drops their metrics."""
    path = project / RESUMES_FILE
    if not path.exists():
        return
    kept = [r for r in read_records(project) if r.get("step", 0) < step]
    if kept:
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    else:
        path.unlink()


def changed_since(checkpoint: Path | None, params: LLMTrainingParams) -> dict[str, tuple[Any, Any]]:
    """What this resume changes against the settings `checkpoint` was trained with ({} when not resuming, or when
    no saved settings say)."""
    saved = None if checkpoint is None else saved_settings(checkpoint)
    return {} if saved is None else changes(saved, params)


def record(project: Path, checkpoint: Path, changed: dict[str, tuple[Any, Any]]) -> None:
    """Append this resume to resumes.jsonl: its step, its checkpoint and what it changed (applied fields only; a
    refused change never gets here)."""
    entry: dict[str, Any] = {"step": step_of(checkpoint), "checkpoint": str(checkpoint),
                             "changed": {name: list(pair) for name, pair in changed.items()}}
    if saved_settings(checkpoint) is None:
        entry["note"] = f"no {PARAMS_FILE} says how the checkpoint was trained"
    with (project / RESUMES_FILE).open("a") as handle:
        handle.write(json.dumps(entry) + "\n")
    if changed:  # said at the start too: a resume typed without a flag the run had (its default applies) shows here
        logger.info(describe(entry))


def read_records(project: Path) -> list[dict[str, Any]]:
    path = project / RESUMES_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def describe(entry: dict[str, Any]) -> str:
    """One line of the card: 'Resumed at step 4 from checkpoint-4: lr 0.005 -> 0.001 (from step 5).'"""
    head = f"Resumed at step {entry['step']} from {Path(entry['checkpoint']).name}"
    changed = entry.get("changed") or {}
    if not changed:
        return head + (f" ({entry['note']})." if "note" in entry else " with the same settings.")
    return head + ": " + ", ".join(shown(name, *pair) for name, pair in changed.items()) + \
        f" (from step {entry['step'] + 1})."
