"""The CLI is generated from the params schema: every field is a flag, spelled both ways, with its help."""

from __future__ import annotations

import subprocess
import sys

import pytest

from autotrain.cli import build_parser, params_from_args
from autotrain.params import TRAINER_NAMES
from autotrain.trainers.clm.params import LLMTrainingParams


def parse(*flags: str) -> LLMTrainingParams:
    return params_from_args(build_parser().parse_args(["llm", "--train", *flags]))


def test_every_field_is_a_flag_in_help():
    done = subprocess.run([sys.executable, "-m", "autotrain", "llm", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    for name, info in LLMTrainingParams.model_fields.items():
        assert f"--{name.replace('_', '-')}" in done.stdout, name
        assert info.description.split()[0] in done.stdout, name


def test_kebab_and_snake_case_and_typed_values():
    params = parse("--peft", "--lora-r", "4", "--lora_alpha", "8", "--lr", "2e-4", "--max-completion-length", "none",
                   "--chat-template", "none", "--mixed_precision", "none", "--valid-split", "validation")
    assert (params.lora_r, params.lora_alpha, params.lr) == (4, 8, 2e-4)
    assert params.max_completion_length is None and params.mixed_precision is None
    assert params.chat_template == "none"  # 'none' is a real choice here: no template
    assert params.valid_split == "validation"


def test_booleans_default_true_can_be_switched_off_and_defaults_stay_unset():
    assert parse().merge_adapter is True and parse("--peft", "--no-merge-adapter").merge_adapter is False
    assert parse("--peft").peft is True and parse("--no-peft").peft is False
    # Only typed flags reach the params: the rest stay defaults, and the params know which were chosen.
    assert parse("--lr", "1e-4").model_fields_set == {"lr"}


def test_bad_values_are_rejected_by_argparse_or_params():
    with pytest.raises(SystemExit):
        parse("--chat-template", "llama")
    with pytest.raises(Exception, match="lr: Input should be greater than 0"):
        parse("--lr", "0")


def test_trainer_choices_are_the_registry():
    from autotrain.params import methods
    from autotrain.train.methods.base import Method

    assert TRAINER_NAMES is methods.NAMES
    for name in TRAINER_NAMES:  # every choice loads a method whose torch-free facts are its own
        method = methods.load(name)
        assert isinstance(method, Method) and method.spec is methods.spec(name)


def test_param_errors_exit_2_with_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "autotrain", "llm", "--train", "--trainer", "dpx"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: invalid parameters: trainer: unknown trainer 'dpx'; did you mean dpo?"


def test_prompt_loss_keeps_its_earlier_name(tmp_path):
    """The flag puts the prompt under the NLL of SFT too, so it is `prompt_loss` now; scripts, config files and saved
    training_params.json that say `orpo_prompt_loss` still work, and one value under both names is one error."""
    from autotrain.errors import ParamsError

    assert parse("--prompt-loss").prompt_loss is True
    for flag in ("--orpo-prompt-loss", "--orpo_prompt_loss"):
        assert (parse(flag).prompt_loss, parse(flag).model_fields_set) == (True, {"prompt_loss"})
    assert LLMTrainingParams(orpo_prompt_loss=True).prompt_loss is True
    (tmp_path / "run.yml").write_text("orpo-prompt-loss: true\n")
    assert parse("--config", str(tmp_path / "run.yml")).prompt_loss is True
    saved = tmp_path / "training_params.json"
    saved.write_text('{"orpo_prompt_loss": true, "lr": 0.001}')
    assert LLMTrainingParams.load_json(saved).model_fields_set == {"prompt_loss", "lr"}
    with pytest.raises(ParamsError, match=r"^invalid parameters: prompt_loss and orpo_prompt_loss name the same "
                                          r"parameter \(prompt_loss\); give one of them$"):
        LLMTrainingParams(prompt_loss=True, orpo_prompt_loss=False)
    (tmp_path / "both.yml").write_text("prompt_loss: true\norpo_prompt_loss: false\n")
    with pytest.raises(ParamsError, match="both.yml:2:1: duplicate key 'orpo_prompt_loss' .prompt_loss is already set"):
        parse("--config", str(tmp_path / "both.yml"))
