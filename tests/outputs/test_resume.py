"""Resuming: a resume either continues the same training or is refused before anything is written. What it may
change (the schedule's length and peak, logging, evaluation and saving) is really applied and recorded; what it
cannot change (model, data, objective, tokens, batches, optimizer, LoRA) is refused naming it; a checkpoint that
lacks a part, is damaged, or belongs to another kind of run or model is refused naming the checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import arithmetic_pairs, make_model_dir, write_jsonl
from transformers import TrainerCallback

from autotrain.errors import ParamsError
from autotrain.project import AutoTrainProject, run
from autotrain.train.stop import StopOnSignal
from autotrain.trainers.clm.params import LLMTrainingParams

# 12 pairs, batch 2: 8 steps with a checkpoint every 4; killed at step 5, so checkpoint-4 is the one to resume.
RUN = dict(batch_size=2, gradient_accumulation=1, max_steps=8, save_steps=4, logging_steps=1, lr=5e-3,
           warmup_ratio=0.0, peft=True, lora_dropout=0.0, merge_adapter=False, seed=3)


class Killed(Exception):
    """Stands for the process dying at a step (the folder is left as a SIGKILL leaves it)."""


def params_for(model: Path, data: Path, project: Path, /, **changes) -> LLMTrainingParams:
    values = {"model": str(model), "data_path": str(data), "project_name": str(project), **RUN, **changes}
    return LLMTrainingParams(**values)


@pytest.fixture(scope="module")
def killed(tmp_path_factory, chat_model):
    """A LoRA run killed at step 5: training_params.json, metrics.jsonl and checkpoint-4."""
    folder = tmp_path_factory.mktemp("killed")
    data = write_jsonl(folder / "pairs.jsonl", arithmetic_pairs(12))
    original = StopOnSignal.on_step_end

    def die_at_5(self, args, state, control, **kwargs):
        if state.global_step == 5:
            raise Killed
        return original(self, args, state, control, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StopOnSignal, "on_step_end", die_at_5)
        with pytest.raises(Killed):
            AutoTrainProject(params=params_for(chat_model, data, folder / "run")).create()
    assert (folder / "run" / "checkpoint-4").is_dir()
    return data, folder / "run"


def copy_of(killed_run: Path, tmp_path: Path) -> Path:
    project = tmp_path / "run"
    shutil.copytree(killed_run, project)
    return project


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> Path:
    """The same architecture and tokenizer as chat_model, other weights."""
    return make_model_dir(tmp_path_factory.mktemp("other-model"), chat=True, seed=1)


@pytest.mark.parametrize(("field", "value"), [
    ("model", "OTHER_MODEL"), ("data_path", "OTHER_DATA"), ("trainer", "dpo"), ("lora_r", 8), ("batch_size", 4),
    ("seed", 4), ("optimizer", "sgd"), ("max_prompt_length", 64),
])
def test_a_resume_that_would_train_something_else_is_refused_naming_the_change(tmp_path, chat_model, killed,
                                                                                other_model, field, value):
    data, killed_run = killed
    project = copy_of(killed_run, tmp_path)
    if value == "OTHER_MODEL":
        value = str(other_model)
    if value == "OTHER_DATA":
        value = str(write_jsonl(tmp_path / "other.jsonl", arithmetic_pairs(12, start=40)))
    before = snapshot(project)
    params = params_for(chat_model, data, project, resume_from_checkpoint="auto", **{field: value})
    with pytest.raises(ParamsError) as refused:
        AutoTrainProject(params=params).create()
    message = str(refused.value)
    assert "\n" not in message and "checkpoint-4" in message
    saved = json.loads((killed_run / "training_params.json").read_text())[field]
    assert f"{field} {json.dumps(saved)} -> {json.dumps(value)}" in message, message
    assert snapshot(project) == before  # nothing written, nothing moved


class UsedRates(TrainerCallback):
    """The learning rate each optimizer step really uses, read from the optimizer just before it steps."""

    def __init__(self):
        self.rates: dict[int, float] = {}

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.rates[state.global_step + 1] = optimizer.param_groups[0]["lr"]


def test_a_new_lr_and_length_are_applied_from_the_resumed_step_and_recorded(tmp_path, chat_model, killed):
    data, killed_run = killed
    project = copy_of(killed_run, tmp_path)
    used = UsedRates()
    params = params_for(chat_model, data, project, resume_from_checkpoint="auto", lr=1e-3, max_steps=12)
    run(params, callbacks=(used,))
    # transformers' linear schedule without warmup: step t uses lr * (T - (t - 1)) / T, here with the new lr and T.
    expected = {t: 1e-3 * (12 - (t - 1)) / 12 for t in range(5, 13)}
    assert used.rates.keys() == expected.keys()
    for step, rate in expected.items():
        assert used.rates[step] == pytest.approx(rate, rel=1e-12), step
    # The record says the rate each step used: metrics.jsonl's learning_rate of the first resumed step too.
    logged = {row["step"]: row["learning_rate"] for row in map(json.loads, (project / "metrics.jsonl").open())
              if "learning_rate" in row and row["step"] > 4}
    assert logged and all(logged[step] == pytest.approx(expected[step], rel=1e-9) for step in logged), logged
    assert 5 in logged
    saved = json.loads((project / "training_params.json").read_text())
    assert (saved["lr"], saved["max_steps"]) == (1e-3, 12)
    card = (project / "README.md").read_text()
    assert "Resumed at step 4 from checkpoint-4: lr 0.005 -> 0.001, max_steps 8 -> 12" in card


def test_every_setting_has_a_resume_rule():
    from autotrain.outputs.resuming import NOT_COMPARED, RULES

    assert sorted([*RULES, *NOT_COMPARED]) == sorted(LLMTrainingParams.model_fields)


def test_a_new_lr_is_refused_where_the_schedule_keeps_its_own_rate(tmp_path, chat_model, pairs_file):
    from autotrain.outputs.resuming import check_settings

    def params(scheduler: str) -> LLMTrainingParams:
        return LLMTrainingParams(model=str(chat_model), data_path=str(pairs_file), project_name=str(tmp_path / "run"),
                                 scheduler=scheduler, valid_split="validation", lr=1e-3)

    checkpoint = tmp_path / "run" / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    for scheduler in ("reduce_lr_on_plateau", "linear"):
        now = params(scheduler)
        (checkpoint / "training_params.json").write_text(json.dumps({**now.public_dict(), "lr": 5e-3}))
        if scheduler == "linear":
            check_settings(checkpoint, now)  # a schedule that is a function of the step: the new lr is applied
            continue
        with pytest.raises(ParamsError, match=r"lr 0.005 -> 0.001 \(reduce_lr_on_plateau keeps the rate it reached"):
            check_settings(checkpoint, now)


@pytest.mark.parametrize(("part", "kept_chars", "refusal"), [
    ("optimizer.pt", None, r" has no optimizer.pt \(the optimizer state\)"),
    ("scheduler.pt", None, r" has no scheduler.pt \(the schedule\)"),
    ("rng_state.pth", None, r" has no rng_state.pth \(the random state\)"),
    ("adapter_model.safetensors", None, r" has no adapter_model.safetensors \(the weights\)"),
    ("trainer_state.json", 100, r"/trainer_state.json is damaged \(malformed JSON"),  # cut short
])
def test_a_checkpoint_missing_or_with_a_damaged_part_is_refused_naming_it(tmp_path, chat_model, killed, part,
                                                                          kept_chars, refusal):
    data, killed_run = killed
    project = copy_of(killed_run, tmp_path)
    damaged = project / "checkpoint-4" / part
    if kept_chars is None:
        damaged.unlink()
    else:
        damaged.write_text(damaged.read_text()[:kept_chars])
    before = snapshot(project)
    params = params_for(chat_model, data, project, resume_from_checkpoint="auto")
    with pytest.raises(ParamsError, match="checkpoint-4" + refusal):
        AutoTrainProject(params=params).create()
    assert snapshot(project) == before


def test_a_lora_checkpoint_in_a_full_run_is_refused(tmp_path, chat_model, killed):
    data, killed_run = killed
    checkpoint = killed_run / "checkpoint-4"
    params = LLMTrainingParams(model=str(chat_model), data_path=str(data), project_name=str(tmp_path / "full"),
                               resume_from_checkpoint=str(checkpoint), max_steps=8, save_steps=4)
    with pytest.raises(ParamsError, match=r"checkpoint-4 holds a LoRA adapter .*this run trains all weights"):
        AutoTrainProject(params=params).create()
    assert not (tmp_path / "full").exists()


def test_a_checkpoint_of_a_model_with_another_vocabulary_is_refused(tmp_path, chat_model, pairs_file):
    from transformers import LlamaConfig, LlamaForCausalLM

    # A full fine-tune's checkpoint of a model with 120 tokens, resumed on chat_model (101 tokens).
    checkpoint = tmp_path / "elsewhere" / "checkpoint-2"
    config = json.loads((chat_model / "config.json").read_text())
    LlamaForCausalLM(LlamaConfig(**{**config, "vocab_size": 120})).save_pretrained(checkpoint)
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        torch.save({}, checkpoint / name)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    params = LLMTrainingParams(model=str(chat_model), data_path=str(pairs_file), project_name=str(tmp_path / "run"),
                               resume_from_checkpoint=str(checkpoint), max_steps=4, save_steps=2)
    with pytest.raises(ParamsError, match=r"checkpoint-2 is a checkpoint of another model: vocab_size 120 there, "
                                          r"101 in "):
        AutoTrainProject(params=params).create()
    assert not (tmp_path / "run").exists()
