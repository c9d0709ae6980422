"""What becomes of the parent tool's (aitraining's) LLMTrainingParams fields here.

Every field of aitraining's schema is one of three things:
- a field here with the same name and default (most of them);
- a field here whose default differs on purpose (`DIFFERENT_DEFAULTS`: --help and docs/migration.md's table say
  so, both generated from this table);
- a field of a trainer this tool is not (`NOT_THIS_TOOL`): given, it is refused with one line that names it and
  says what this tool does instead, never as an unknown parameter nor with a "did you mean" to an unrelated field.

Standard library and the torch-free method registry only: imported by the schema, the CLI and the config-file reader.
"""

from __future__ import annotations

from collections.abc import Iterable

from autotrain.errors import did_you_mean
from autotrain.params import methods

# field -> (aitraining's default, why ours differs)
DIFFERENT_DEFAULTS: dict[str, tuple[object, str]] = {
    "model": ("google/gemma-3-270m", "an embedded model, so a first run needs no download"),
    "data_path": ("data", "the bundled sample pairs, so a first run needs no data"),
    "trainer": ("default", "this is a preference tool: ORPO; `default` is still accepted and means sft"),
    "packing": (None, "packing shares each prompt and keeps the loss the same; models that cannot take it pad"),
    "log": ("wandb", "no tracker unless asked: a run should not need an account or write to one"),
    "dpo_beta": (0.1, "none means the method's own default: 0.1 for ORPO, DPO and CPO (aitraining's value), 2.0 for "
                 "SimPO, as its authors use it; a --loss-type its authors' (0.01 for robust, 2.5 for alphapo, ...)"),
    "optimizer": ("adamw_torch", "the same AdamW in torch's fused kernel, transformers' (and TRL's) default: one pass "
                  "over the weights; the CPU full fine-tune's optimizer step took 0.15 s instead of 0.57 s"),
    "lora_dropout": (0.05, "none means 0 while --disable-dropout is on (the default): aitraining passes 0.05 to peft, "
                     "but TRL's ORPOTrainer and DPOTrainer then zero every dropout, LoRA's included, so its preference "
                     "runs trained with none; 0.05 with --no-disable-dropout, except 0 for fused MoE expert weights, "
                     "which peft cannot drop out"),
}

# Our fields that aitraining's LLMTrainingParams does not have (the migration table leaves them out; a test checks
# this list against aitraining's field list).
OURS_ONLY: frozenset[str] = frozenset({
    "trust_remote_code", "precompute_ref_logps", "prompt_loss", "disable_dropout", "max_steps", "deepspeed_stage",
    "eval_steps", "sample_answers", "simpo_gamma", "cpo_alpha", "min_lr_rate", "tools_column", "ranked_pairs",
    "reasoning_loss", "train_vision", "loss_type", "loss_weights", "label_smoothing", "ld_alpha", "discopop_tau",
    "alphapo_alpha", "label_column", "desirable_weight", "undesirable_weight", "judge", "judge_prompts",
    "judge_template", "judge_max_prompts", "torch_compile",
})

# Each is (what the field is for in aitraining, what to do here instead or "").
_CONVERSION = ("dataset conversion", "rows are read as they are: name the columns with --prompt-text-column, "
               "--text-column and --rejected-text-column (strings or message lists)")
_MANUAL = ("manual forward/backward control", "the Trainer's own loop runs here")
_SAMPLING = ("sampling during training", "--sample-answers N answers validation prompts before and after training")
_CHECKPOINTS = ("manual checkpoint control", "use --save-strategy, --save-steps and --resume-from-checkpoint")
_INFERENCE = ("inference after training", "run `aitraining llm --inference --project-name DIR --inference-prompts "
              "...` on the finished project")
_DISTILL = ("prompt distillation", "")
_RL = ("reinforcement learning (PPO, GRPO)",
       "this tool trains " + ", ".join(spec.title or spec.name.upper() for spec in methods.SPECS.values()))
_VLLM = ("vLLM generation for GRPO", "")
_EVAL = ("enhanced evaluation extras", "evaluation here scores --valid-split; --use-enhanced-eval adds perplexity")

# field -> what it belongs to (and what to do here instead, where there is something)
NOT_THIS_TOOL: dict[str, tuple[str, str]] = {
    "unsloth": ("unsloth acceleration", "training here runs on transformers and peft"),
    **dict.fromkeys(("auto_convert_dataset", "use_sharegpt_mapping", "sharegpt_mapping_enabled",
                     "suggested_chat_template", "column_mapping", "runtime_mapping", "map_eos_token",
                     "conversation_extension"), _CONVERSION),
    **dict.fromkeys(("use_distillation", "teacher_model", "teacher_prompt_template", "student_prompt_template",
                     "distill_temperature", "distill_alpha", "distill_max_teacher_length"), _DISTILL),
    "post_trial_script": ("a shell command after each sweep trial", "read <project>/sweep.md"),
    **dict.fromkeys(("wandb_sweep", "wandb_sweep_project", "wandb_sweep_entity", "wandb_sweep_id"),
                    ("W&B's own sweep dashboard", "the sweep here is optuna's; each trial logs to W&B with --log wandb")),
    **dict.fromkeys(("eval_dataset_path", "eval_batch_size", "eval_save_predictions"), _EVAL),
    "eval_benchmark": ("benchmark evaluation", "--judge SPEC judges the model's own answers before and after training "
                       "(docs/evaluation.md, 'Judged win rates')"),
    "chat_format": ("its own message renderer", "use --chat-template"),
    "token_weights": ("per-role token weights", "the loss weighs completion tokens (the prompt too with --prompt-loss)"),
    **dict.fromkeys(("rl_gamma", "rl_gae_lambda", "rl_kl_coef", "rl_value_loss_coef", "rl_clip_range",
                     "rl_reward_fn", "rl_multi_objective", "rl_reward_weights", "rl_env_type", "rl_env_config",
                     "rl_reward_model_path", "rl_num_ppo_epochs", "rl_chunk_size", "rl_mini_batch_size",
                     "rl_optimize_device_cache", "rl_value_clip_range", "rl_max_new_tokens", "rl_top_k", "rl_top_p",
                     "rl_temperature", "rl_env_module", "rl_env_class", "rl_num_generations", "rl_loss_type",
                     "rl_mask_truncated_completions"), _RL),
    **dict.fromkeys(("use_vllm", "vllm_mode", "vllm_gpu_memory_utilization", "vllm_server_url",
                     "vllm_tensor_parallel_size", "vllm_server_gpus"), _VLLM),
    **dict.fromkeys(("custom_loss", "custom_loss_weights"),
                    ("custom losses", "the loss is the method's: --trainer orpo, dpo or sft")),
    **dict.fromkeys(("use_forward_backward", "forward_backward_loss_fn", "forward_backward_custom_fn",
                     "manual_optimizer_control", "optimizer_step_frequency"), _MANUAL),
    "gradient_accumulation_steps": (_MANUAL[0], "use --gradient-accumulation"),
    "grad_clip_value": (_MANUAL[0], "use --max-grad-norm"),
    **dict.fromkeys(("sample_every_n_steps", "sample_prompts", "sample_temperature", "sample_top_k",
                     "sample_top_p"), _SAMPLING),
    **dict.fromkeys(("manual_checkpoint_control", "save_state_every_n_steps", "load_state_from"), _CHECKPOINTS),
    **dict.fromkeys(("inference_prompts", "inference_max_tokens", "inference_temperature", "inference_top_p",
                     "inference_top_k", "inference_output"), _INFERENCE),
}


def not_this_tool(name: str) -> str | None:
    """The one line for an aitraining field this tool does not do, or None if `name` is not one."""
    field = name.replace("-", "_")
    if field not in NOT_THIS_TOOL:
        return None
    what, instead = NOT_THIS_TOOL[field]
    return f"{field} is aitraining's {what}, which this tool does not do" + (f"; {instead}" if instead else "")


# What users coming from transformers, TRL or PEFT type, and the field it is here (an unknown name that is one of these
# gets this name, not difflib's nearest spelling: `learning_rate` is nearer `merge_adapter` than `lr`).
OTHER_NAMES: dict[str, str] = {
    "learning_rate": "lr", "num_train_epochs": "epochs", "num_epochs": "epochs",
    "per_device_train_batch_size": "batch_size", "train_batch_size": "batch_size", "beta": "dpo_beta",
    "lr_scheduler_type": "scheduler", "optim": "optimizer",
    "max_length": "block_size", "max_seq_length": "block_size", "output_dir": "project_name",
    "model_name_or_path": "model", "model_name": "model", "dataset": "data_path", "dataset_name": "data_path",
    "use_peft": "peft", "gradient_checkpointing": "disable_gradient_checkpointing", "eval_split": "valid_split",
    "simpo_beta": "dpo_beta", "orpo_beta": "dpo_beta", "orpo_alpha": "dpo_beta", "report_to": "log",
}


def other_name(name: str) -> str | None:
    """This tool's field for a name transformers, TRL or PEFT users type (`learning_rate` -> `lr`), else None."""
    return OTHER_NAMES.get(name.replace("-", "_"))


def unknown_name_hint(name: str, known: Iterable[str], otherwise: str, flag: bool = False) -> str:
    """The hint after "unknown ...": this tool's name for a transformers/TRL name, else the closest known name.
    `flag`: name and answer as command-line flags (--learning_rate -> --lr)."""
    ours = other_name(name.removeprefix("--"))
    if ours is not None:
        return f"this tool calls it --{ours.replace('_', '-')}" if flag else f"this tool calls it {ours}"
    return did_you_mean(name, known, otherwise=otherwise)

