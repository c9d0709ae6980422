"""The parent tool's schema, field by field: each aitraining LLMTrainingParams field is accepted here with its default
(or a default that differs on purpose, said in --help), or refused by name as a field of a trainer this tool is not.

SEED_FIELDS is aitraining 0.0.54's LLMTrainingParams (and its AutoTrainParams base), names and defaults as that
release's trainers/clm/params.py and trainers/common.py declare them.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from autotrain.cli import build_parser, params_from_args
from autotrain.errors import ParamsError
from autotrain.inference import InferenceParams
from autotrain.params import LORA_FIELDS
from autotrain.params.needs import NEEDS
from autotrain.trainers.clm.params import LLMTrainingParams

SEED_FIELDS = {
    'wandb_visualizer': None, 'wandb_token': None, 'hub_private': True, 'model': 'google/gemma-3-270m',
    'project_name': 'project-name', 'data_path': 'data', 'train_split': 'train', 'valid_split': None,
    'max_samples': None, 'add_eos_token': True, 'block_size': -1, 'model_max_length': 2048, 'padding': 'right',
    'trainer': 'default', 'use_flash_attention_2': False, 'attn_implementation': None, 'packing': None,
    'log': 'wandb', 'disable_gradient_checkpointing': False, 'logging_steps': -1, 'eval_strategy': 'epoch',
    'save_strategy': 'epoch', 'save_steps': 500, 'save_total_limit': 1, 'auto_find_batch_size': False,
    'mixed_precision': None, 'lr': 3e-05, 'epochs': 1, 'batch_size': 2, 'warmup_ratio': 0.1,
    'gradient_accumulation': 4, 'optimizer': 'adamw_torch', 'scheduler': 'linear', 'weight_decay': 0.0,
    'max_grad_norm': 1.0, 'seed': 42, 'chat_template': None, 'response_only_loss': True, 'quantization': None,
    'target_modules': 'all-linear', 'merge_adapter': True, 'peft': False, 'lora_r': 16, 'lora_alpha': 32,
    'lora_dropout': 0.05, 'model_ref': None, 'dpo_beta': 0.1, 'max_prompt_length': 128,
    'max_completion_length': None, 'prompt_text_column': None, 'text_column': 'text', 'rejected_text_column': None,
    'image_column': None, 'auto_convert_dataset': False, 'use_sharegpt_mapping': False,
    'sharegpt_mapping_enabled': False, 'suggested_chat_template': None, 'column_mapping': None,
    'runtime_mapping': None, 'map_eos_token': False, 'conversation_extension': 1, 'apply_chat_template': True,
    'save_processed_data': 'auto', 'push_to_hub': False, 'username': None, 'token': None, 'repo_id': None,
    'unsloth': False, 'distributed_backend': None, 'resume_from_checkpoint': None, 'use_distillation': False,
    'teacher_model': None, 'teacher_prompt_template': None, 'student_prompt_template': '{input}',
    'distill_temperature': 3.0, 'distill_alpha': 0.7, 'distill_max_teacher_length': 512, 'use_sweep': False,
    'sweep_backend': 'optuna', 'sweep_n_trials': 10, 'sweep_metric': 'eval_loss', 'sweep_direction': 'minimize',
    'sweep_params': None, 'post_trial_script': None, 'wandb_sweep': False, 'wandb_sweep_project': None,
    'wandb_sweep_entity': None, 'wandb_sweep_id': None, 'wandb_run_id': None, 'use_enhanced_eval': False,
    'eval_metrics': 'perplexity', 'eval_dataset_path': None, 'eval_batch_size': 8, 'eval_save_predictions': False,
    'eval_benchmark': None, 'chat_format': None, 'token_weights': None, 'rl_gamma': 0.99, 'rl_gae_lambda': 0.95,
    'rl_kl_coef': 0.1, 'rl_value_loss_coef': 1.0, 'rl_clip_range': 0.2, 'rl_reward_fn': None,
    'rl_multi_objective': False, 'rl_reward_weights': None, 'rl_env_type': None, 'rl_env_config': None,
    'rl_reward_model_path': None, 'rl_num_ppo_epochs': 4, 'rl_chunk_size': 128, 'rl_mini_batch_size': 8,
    'rl_optimize_device_cache': True, 'rl_value_clip_range': 0.2, 'rl_max_new_tokens': 128, 'rl_top_k': 50,
    'rl_top_p': 1.0, 'rl_temperature': 1.0, 'rl_env_module': None, 'rl_env_class': None, 'rl_num_generations': 4,
    'rl_loss_type': 'grpo', 'rl_mask_truncated_completions': False, 'use_vllm': False, 'vllm_mode': 'colocate',
    'vllm_gpu_memory_utilization': 0.3, 'vllm_server_url': None, 'vllm_tensor_parallel_size': 1,
    'vllm_server_gpus': 1, 'ddp_timeout': 7200, 'custom_loss': None, 'custom_loss_weights': None,
    'custom_metrics': None, 'use_forward_backward': False, 'forward_backward_loss_fn': None,
    'forward_backward_custom_fn': None, 'gradient_accumulation_steps': 1, 'manual_optimizer_control': False,
    'optimizer_step_frequency': 1, 'grad_clip_value': 1.0, 'sample_every_n_steps': 0, 'sample_prompts': None,
    'sample_temperature': 1.0, 'sample_top_k': 50, 'sample_top_p': 1.0, 'manual_checkpoint_control': False,
    'save_state_every_n_steps': 0, 'load_state_from': None, 'inference_prompts': None, 'inference_max_tokens': 256,
    'inference_temperature': 1.0, 'inference_top_p': 1.0, 'inference_top_k': 50, 'inference_output': None,

}

# Where our default differs on purpose (each said in --help and in the README's migration table).
DIFFERENT_ON_PURPOSE = {"model", "data_path", "trainer", "packing", "log", "lora_dropout", "optimizer",
                        "dpo_beta"}  # none: the method's own beta (0.1 for orpo, as aitraining; SimPO its authors' 2.0)
# The fields the issue lists as used by preference runs and refused before: each must now be a field.
PREFERENCE_RUN_FIELDS = {
    "save_strategy", "model_max_length", "padding", "add_eos_token", "use_flash_attention_2", "attn_implementation",
    "auto_find_batch_size", "max_samples", "wandb_token", "wandb_run_id", "wandb_visualizer", "repo_id",
    "hub_private", "apply_chat_template", "ddp_timeout", "use_enhanced_eval", "save_processed_data", "use_sweep",
    "sweep_backend", "sweep_n_trials", "sweep_metric", "sweep_direction", "sweep_params", "custom_metrics",
}
# The other trainers' fields the issue names: each must be refused with the "not this tool" line.
OTHER_TRAINERS = {"rl_gamma", "rl_env_module", "use_distillation", "teacher_model", "use_vllm", "vllm_mode", "unsloth"}


def ours(name: str):
    default = LLMTrainingParams.model_fields[name].default
    return default.get_secret_value() if hasattr(default, "get_secret_value") else default


def refused_line(name: str, value) -> str:
    with pytest.raises(ParamsError) as caught:
        LLMTrainingParams(**{name: value})
    return str(caught.value)


@pytest.mark.parametrize("name", sorted(SEED_FIELDS))
def test_every_seed_field_is_ours_with_its_default_or_refused_by_name(name):
    seed_default = SEED_FIELDS[name]
    if name in LLMTrainingParams.model_fields:
        if name in DIFFERENT_ON_PURPOSE:
            assert ours(name) != seed_default, f"{name}: listed as different, but the defaults agree"
        else:
            assert ours(name) == seed_default, name
            # LoRA fields are refused without peft, and every field that needs another without it
            context = {"peft": True} if name in LORA_FIELDS else NEEDS[name].enabling if name in NEEDS else {}
            LLMTrainingParams(**context, **({name: seed_default} if seed_default is not None else {}))
        return
    message = refused_line(name, seed_default if seed_default is not None else "x")
    assert name in message and "which this tool does not do" in message, message
    assert "unknown parameter" not in message and "did you mean" not in message, message


def test_the_preference_run_fields_are_fields_and_the_other_trainers_are_refused():
    assert PREFERENCE_RUN_FIELDS <= set(LLMTrainingParams.model_fields)
    for name in OTHER_TRAINERS:
        assert name not in LLMTrainingParams.model_fields
        assert "which this tool does not do" in refused_line(name, "x")


def test_the_seed_fields_are_accepted_under_flags_and_config_keys(tmp_path):
    """The YAML hints the issue found pointing the wrong way are gone: these keys are fields now."""
    (tmp_path / "run.yml").write_text("log: wandb\nwandb_token: abc\nmodel_max_length: 512\nsave_strategy: steps\n"
                                      "padding: left\nmax_samples: 5\n")
    params = params_from_args(build_parser().parse_args(["llm", "--train", "--config", str(tmp_path / "run.yml")]))
    assert (params.wandb_token.get_secret_value(), params.model_max_length, params.save_strategy, params.padding,
            params.max_samples) == ("abc", 512, "steps", "left", 5)
    (tmp_path / "rl.yml").write_text("lr: 0.001\nrl_gamma: 0.9\n")
    with pytest.raises(ParamsError, match=r"rl.yml:2:1: rl_gamma is aitraining's reinforcement learning") as caught:
        params_from_args(build_parser().parse_args(["llm", "--train", "--config", str(tmp_path / "rl.yml")]))
    assert "did you mean" not in str(caught.value)


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autotrain", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_errors_are_one_line_without_the_synopsis(tmp_path):
    cases = {
        ("--lora_rank", "8"): "error: unknown flag --lora_rank; did you mean --lora-r?",
        # what transformers and TRL call it: the field here, not difflib's nearest spelling (--merge-adapter)
        ("--learning_rate", "1e-4"): "error: unknown flag --learning_rate; this tool calls it --lr",
        ("--num-train-epochs", "2"): "error: unknown flag --num-train-epochs; this tool calls it --epochs",
        # a value after a switch, which takes none
        ("--peft", "true"): "error: --peft takes no value ('true' given): write --peft or --no-peft",
        ("--lr", "abc"): "error: argument --lr: invalid float value: 'abc'",
        ("--rl-gamma", "0.9"): "error: rl_gamma is aitraining's reinforcement learning (PPO, GRPO), which this tool "
                               "does not do; this tool trains ORPO, DPO, SimPO, CPO, KTO, SFT",
        ("--unsloth",): "error: unsloth is aitraining's unsloth acceleration, which this tool does not do; training "
                        "here runs on transformers and peft",
    }
    for flags, line in cases.items():
        done = run_cli("llm", "--train", *flags, cwd=tmp_path)
        assert (done.returncode, done.stderr, done.stdout) == (2, line + "\n", ""), flags


def test_help_is_grouped_one_spelling_per_flag_and_fits_two_screens_per_group():
    done = run_cli("llm", "--help")
    assert done.returncode == 0
    text = done.stdout
    assert text.startswith("usage: aitraining llm --train [--config FILE] [--FLAG VALUE ...]\n")
    shown = [f for line in text.splitlines() if line.startswith("  -") for f in line.split("  ")[1].split(", ")]
    assert "--lora-r N" in shown and "--prompt-loss" in shown
    assert not [f for f in shown if "_" in f or "orpo-prompt-loss" in f]  # accepted, not shown
    titles = ["Data and model:", "Method:", "Tokens and rows:", "Optimisation:", "LoRA:", "Chat template:", "Evaluation:", "Judge:", "Scale-out:",
              "Logging and saving:", "Hub:", "Sweep:", "Inference:"]
    lines = text.splitlines()
    starts = [lines.index(title) for title in titles]
    for title, start, end in zip(titles, starts, starts[1:] + [len(lines)]):
        assert end - start <= 48, f"{title} takes {end - start} lines (two 24-line screens: 48)"
    assert max(len(line) for line in lines) <= 100
    for group, flag in (("LoRA:", "--lora-r N"), ("Logging and saving:", "--save-strategy"), ("Sweep:", "--use-sweep"),
                        ("Data and model:", "--max-samples N")):
        start = starts[titles.index(group)]
        assert any(line.lstrip().startswith(flag) for line in lines[start:start + 48]), (group, flag)
    # A deliberate difference from aitraining's default is said next to ours.
    assert "aitraining's: default" in " ".join(text.split())  # --trainer: ours orpo, aitraining's default
    assert "aitraining's: wandb" in " ".join(text.split())  # --log


def test_snake_case_and_earlier_names_still_parse():
    args = build_parser().parse_args(["llm", "--train", "--lora_alpha", "8", "--peft", "--orpo_prompt_loss",
                                      "--no-response-only-loss", "--save_strategy=no"])
    params = params_from_args(args)
    assert (params.lora_alpha, params.prompt_loss, params.response_only_loss, params.save_strategy) == (8, True, False,
                                                                                                       "no")


def test_inference_fields_of_the_seed_are_the_inference_commands():
    """aitraining's inference_* fields: ours live on `aitraining llm --inference`; in training params they say so."""
    assert {"inference_prompts", "inference_max_tokens", "inference_temperature", "inference_top_p"} <= set(
        InferenceParams.model_fields)
    assert "aitraining llm --inference" in refused_line("inference_max_tokens", 256)


def test_readme_migration_table_is_the_generated_one():
    """The table is generated from the params (scripts/migration_table.py); a field added or changed without
    regenerating it fails here."""
    from pathlib import Path

    from autotrain.params.migration import END, START, migration_table

    page = (Path(__file__).resolve().parents[2] / "docs" / "migration.md").read_text()
    assert page.split(START, 1)[1].split(END, 1)[0].strip() == migration_table()
    table = migration_table()
    for name in SEED_FIELDS:  # every aitraining field has its row
        assert f"`{name}`" in table, name


def test_ours_only_is_what_aitraining_lacks():
    from autotrain.params.seed import OURS_ONLY

    assert OURS_ONLY == set(LLMTrainingParams.model_fields) - set(SEED_FIELDS)
