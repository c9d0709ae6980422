"""The step guard and the start-up checks of the Trainer API.

fp16 cannot run on this CPU through the CLI, so the fp16 cases install a real torch GradScaler (CPU) into the
Trainer's accelerator: accelerate then scales the loss, the scaler skips a step whose gradients are not finite and
halves its scale, exactly as under fp16 on a GPU. Before the fix the guard stopped the run on that ordinary overflow
step; now only a non-finite loss, or an overflow at a scale the scaler cannot lower further, stops it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import arithmetic_pairs, write_jsonl
from transformers import Trainer, TrainerCallback

from autotrain.errors import TrainingError
from autotrain.project import AutoTrainProject
from autotrain.train import guards, trainer_api
from autotrain.train.trainer import PreferenceTrainer
from autotrain.trainers.clm.params import LLMTrainingParams

RUN = dict(batch_size=2, gradient_accumulation=1, max_steps=4, logging_steps=1, lr=1e-3, warmup_ratio=0.0,
           save_steps=1000)


def test_step_decisions():
    assert guards.step_problem(True, True, None) is None
    assert guards.step_problem(True, True, 1024.0) is None
    assert guards.step_problem(False, False, 1024.0) == "non-finite loss"  # not an overflow: the loss itself
    assert guards.step_problem(False, True, None) == "non-finite loss"
    assert guards.step_problem(True, False, None) == "non-finite gradient"  # fp32/bf16: nothing skips the step
    assert guards.step_problem(True, False, 2.0) is None  # fp16: the scaler skips it and halves its scale
    assert "overflow even at loss scale 1" in guards.step_problem(True, False, 1.0)
    assert "overflow even at loss scale 0.5" in guards.step_problem(True, False, 0.5)


def run_with_scaler(tmp_path: Path, model: Path, monkeypatch, init_scale: float, poisoned_steps: set[int]):
    """A CPU run with a real GradScaler in the accelerator; gradients made infinite during the given steps (1-based).
    Returns the run's records, the scales seen after each step and a trainable weight after each step."""
    seen: dict[str, list] = {"scales": [], "weights": []}
    real_train = PreferenceTrainer.train

    class Watch(TrainerCallback):
        def __init__(self, trainer):
            self.trainer = trainer

        def on_step_end(self, args, state, control, **kwargs):
            seen["scales"].append(self.trainer.accelerator.scaler.get_scale())
            weight = next(p for p in self.trainer.model.parameters() if p.requires_grad)
            seen["weights"].append(weight.detach().clone())

    def train(self, *args, **kwargs):
        self.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=1000)
        weight = next(p for p in self.model.parameters() if p.requires_grad)
        weight.register_hook(lambda grad: grad * math.inf if self.state.global_step + 1 in poisoned_steps else grad)
        self.add_callback(Watch(self))
        return real_train(self, *args, **kwargs)

    monkeypatch.setattr(PreferenceTrainer, "train", train)
    data = write_jsonl(tmp_path / "pairs.jsonl", arithmetic_pairs(8))
    params = LLMTrainingParams(model=str(model), data_path=str(data), project_name=str(tmp_path / "run"), **RUN)
    return params, seen


def test_an_fp16_overflow_step_is_skipped_and_the_run_goes_on(tmp_path, chat_model, monkeypatch):
    params, seen = run_with_scaler(tmp_path, chat_model, monkeypatch, init_scale=4.0, poisoned_steps={2})
    result = AutoTrainProject(params).create()
    records = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "grad_norm" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert steps[1]["grad_norm"] is None  # metrics.jsonl writes a non-finite value as null
    assert all(math.isfinite(r["loss"]) for r in steps)
    assert seen["scales"] == [4.0, 2.0, 2.0, 2.0]  # halved once, by the skipped step
    weights = seen["weights"]
    assert torch.equal(weights[1], weights[0])  # step 2 did not touch the weights
    assert not torch.equal(weights[2], weights[1]) and not torch.equal(weights[0], weights[3])


def test_an_overflow_at_the_lowest_scale_stops_the_run(tmp_path, chat_model, monkeypatch):
    params, seen = run_with_scaler(tmp_path, chat_model, monkeypatch, init_scale=2.0, poisoned_steps={1, 2, 3, 4})
    with pytest.raises(TrainingError, match=r"^fp16 gradients overflow even at loss scale 1 \(the scaler cannot "
                                            r"lower it further\) at step 2; the weights were not updated"):
        AutoTrainProject(params).create()
    assert seen["scales"] == [1.0]  # step 1 was skipped (scale 2 -> 1); step 2 stopped before its update


def tiny_trainer(tmp_path: Path, chat_model: Path) -> PreferenceTrainer:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainingArguments

    from autotrain.batch.padded import PaddedCollator

    rows = Dataset.from_list([{"prompt_ids": [5, 6], "chosen_ids": [7, 8, 2], "rejected_ids": [9, 2]}] * 2)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, remove_unused_columns=False)
    return PreferenceTrainer(model=AutoModelForCausalLM.from_pretrained(chat_model), args=args, train_dataset=rows,
                             data_collator=PaddedCollator(0), method="orpo", beta=0.1)


def test_under_deepspeed_the_loss_is_checked_before_backward(tmp_path, chat_model):
    """DeepSpeed steps inside backward: a non-finite loss must stop the run in compute_loss, before backward, so
    that "the weights were not updated" is true."""
    from autotrain.batch.padded import PaddedCollator

    trainer = tiny_trainer(tmp_path, chat_model)
    trainer.is_deepspeed_enabled = True
    real = trainer.method

    def poisoned(*args):
        terms = real.terms(*args)
        return dataclasses.replace(terms, nll=terms.nll * math.nan)

    trainer.method = dataclasses.replace(real, terms=poisoned)
    batch = PaddedCollator(0)([{"prompt_ids": [5, 6], "chosen_ids": [7, 8, 2], "rejected_ids": [9, 2]}])
    counts = torch.tensor([3, 1, 1])
    with pytest.raises(TrainingError, match=r"^non-finite loss at step 1; the weights were not updated"):
        trainer.compute_loss(trainer.model.train(), batch, num_items_in_batch=counts)


def test_under_deepspeed_a_non_finite_gradient_is_reported_as_applied(tmp_path, chat_model, monkeypatch):
    trainer = tiny_trainer(tmp_path, chat_model)
    trainer.is_deepspeed_enabled = True
    monkeypatch.setattr(Trainer, "_clip_grad_norm", lambda self, model: torch.tensor(math.nan))
    trainer._loss_finite = torch.tensor(True)
    with pytest.raises(TrainingError, match=r"^non-finite gradient at step 1; DeepSpeed had already applied this step "
                                            r"inside backward, so the weights in memory are not trusted"):
        trainer._clip_grad_norm(trainer.model)


# --- The Trainer members this loop relies on --------------------------------------------------------------------


def test_the_installed_trainer_has_what_the_loop_relies_on():
    trainer_api.check_trainer_api(Trainer)


def test_a_renamed_or_changed_member_fails_at_start_up():
    class Renamed(Trainer):
        _clip_grad_norm = None

    with pytest.raises(RuntimeError, match=r"Trainer._clip_grad_norm is not what .*\(expected parameters"):
        trainer_api.check_trainer_api(Renamed)

    class Changed(Trainer):
        def get_batch_samples(self, iterator, count, device):
            return [], None

    with pytest.raises(RuntimeError, match=r"Trainer.get_batch_samples"):
        trainer_api.check_trainer_api(Changed)


def test_every_private_trainer_member_the_subclass_uses_is_checked_at_start_up():
    """The subclass's overrides and calls of Trainer's private members, read from its source, are each in the
    start-up check's table, and renaming any one of them fails the check."""
    import ast
    import inspect

    from autotrain.train.trainer import MethodTrainer

    tree = ast.parse(inspect.getsource(MethodTrainer))
    names = {node.name for node in tree.body[0].body if isinstance(node, ast.FunctionDef)}
    names |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    private = {name for name in names if name.startswith("_") and not name.startswith("__") and hasattr(Trainer, name)}
    assert {"_clip_grad_norm", "_get_output_dir", "_save_checkpoint", "_issue_warnings_after_load"} <= private
    unchecked = private - set(trainer_api.TRAINER_MEMBERS)
    assert not unchecked, f"private Trainer members used but not checked at start-up: {sorted(unchecked)}"
    for name in sorted(private):
        with pytest.raises(RuntimeError, match=f"Trainer.{name} is not what"):
            trainer_api.check_trainer_api(type("Renamed", (Trainer,), {name: None}))


def test_a_trainer_that_divides_the_loss_anyway_is_caught_at_the_first_accumulated_step(tmp_path, chat_model,
                                                                                         monkeypatch):
    """What transformers before 5.19 would do without model_accepts_loss_kwargs: divide by the accumulation steps."""
    monkeypatch.setattr(PreferenceTrainer, "loss_is_scaled_for_ga", False)
    data = write_jsonl(tmp_path / "pairs.jsonl", arithmetic_pairs(8))
    params = LLMTrainingParams(model=str(chat_model), data_path=str(data), project_name=str(tmp_path / "run"),
                               **{**RUN, "gradient_accumulation": 2})
    with pytest.raises(RuntimeError, match="divided the loss by the accumulation steps"):
        AutoTrainProject(params).create()
