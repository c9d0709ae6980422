"""Faults: nothing lost. Resume after SIGKILL equals an uninterrupted run; saves are atomic; signals stop cleanly;
a non-finite loss stops the run before it reaches the weights; secrets never reach a file."""

from __future__ import annotations

import dataclasses
import json
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import arithmetic_pairs, write_jsonl
from safetensors.torch import load_file

from autotrain.errors import ModelError, ParamsError, TrainingError
from autotrain.project import AutoTrainProject
from autotrain.trainers.clm.params import LLMTrainingParams

# 12 pairs, batch 2, no accumulation: 6 steps an epoch, 2 epochs, a checkpoint every 2 steps. LoRA dropout is on,
# so the RNG state must be restored too, and step 7 crosses an epoch boundary (data order must continue).
RUN = dict(batch_size=2, gradient_accumulation=1, epochs=2, save_steps=2, logging_steps=1, lr=5e-3,
           warmup_ratio=0.2, peft=True, lora_dropout=0.1, merge_adapter=False, seed=3)


def cli_args(model: Path, data: Path, project: Path, **extra) -> list[str]:
    args = ["llm", "--train", "--model", str(model), "--data-path", str(data), "--project-name", str(project)]
    for key, value in {**RUN, **extra}.items():
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [f"--no-{flag[2:]}"] if value is False else [flag, str(value)]
    return args


def run_child(args: list[str], patch: str = "") -> subprocess.CompletedProcess:
    """Run the CLI in a child process, after `patch` (test-only code that kills or signals it at a chosen point)."""
    script = textwrap.dedent(patch) + f"\nimport sys\nfrom autotrain.cli import main\nsys.exit(main({args!r}))\n"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)


KILL_AT_STEP = """
import os, signal
from autotrain.train import stop as safety
_orig = safety.StopOnSignal.on_step_end
def on_step_end(self, args, state, control, **kw):
    if state.global_step == {step}:
        os.kill(os.getpid(), signal.{signal})
    return _orig(self, args, state, control, **kw)
safety.StopOnSignal.on_step_end = on_step_end
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory, chat_model):
    """The uninterrupted run every resumed run must reproduce."""
    folder = tmp_path_factory.mktemp("reference")
    data = write_jsonl(folder / "pairs.jsonl", arithmetic_pairs(12))
    done = run_child(cli_args(chat_model, data, folder / "run"))
    assert done.returncode == 0, done.stderr[-2000:]
    return data, folder / "run"


def metrics(project: Path) -> list[dict]:
    return [json.loads(line) for line in (project / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(project: Path, reference: Path) -> None:
    ours, theirs = load_file(project / "adapter_model.safetensors"), load_file(reference / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-6)
    steps = lambda rows: [(r["step"], r["learning_rate"], r["loss"]) for r in rows if "nll_loss" in r]  # noqa: E731
    ours_steps, their_steps = steps(metrics(project)), steps(metrics(reference))
    assert [s[:2] for s in ours_steps] == [s[:2] for s in their_steps]  # same steps, same schedule
    assert [s[2] for s in ours_steps] == pytest.approx([s[2] for s in their_steps], abs=1e-6)


@pytest.mark.parametrize("kill_step", [1, 5, 7])
def test_resume_after_sigkill_equals_the_uninterrupted_run(tmp_path, chat_model, reference, kill_step):
    data, expected = reference
    project = tmp_path / "run"
    killed = run_child(cli_args(chat_model, data, project), KILL_AT_STEP.format(step=kill_step, signal="SIGKILL"))
    assert killed.returncode == -signal.SIGKILL
    again = run_child(cli_args(chat_model, data, project))
    assert again.returncode == 2 and "--resume-from-checkpoint auto" in again.stderr
    resumed = run_child(cli_args(chat_model, data, project, resume_from_checkpoint="auto"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_run(project, expected)


def test_kill_during_a_save_leaves_the_previous_checkpoint(tmp_path, chat_model, reference):
    data, expected = reference
    project = tmp_path / "run"
    # Die after the weights and optimizer of checkpoint-4 are written but before the save completes.
    patch = """
    import os, signal, transformers
    _orig = transformers.Trainer._save_rng_state
    def _save_rng_state(self, output_dir):
        if self.state.global_step == 4:
            os.kill(os.getpid(), signal.SIGKILL)
        return _orig(self, output_dir)
    transformers.Trainer._save_rng_state = _save_rng_state
    """
    killed = run_child(cli_args(chat_model, data, project), patch)
    assert killed.returncode == -signal.SIGKILL
    visible = sorted(p.name for p in project.glob("checkpoint-*"))
    assert visible == ["checkpoint-2"]
    assert (project / ".staging" / "checkpoint-4" / "adapter_model.safetensors").exists()  # the half-written one
    resumed = run_child(cli_args(chat_model, data, project, resume_from_checkpoint="latest"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not (project / ".staging" / "checkpoint-4").exists()
    assert_same_run(project, expected)


@pytest.mark.parametrize(("name", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_signal_saves_prints_resume_and_exits(tmp_path, chat_model, reference, name, code):
    data, expected = reference
    project = tmp_path / "run"
    stopped = run_child(cli_args(chat_model, data, project), KILL_AT_STEP.format(step=3, signal=name))
    assert stopped.returncode == code, stopped.stderr[-2000:]
    assert (project / "checkpoint-3" / "trainer_state.json").exists()
    assert not (project / "README.md").exists() and not (project / "adapter_model.safetensors").exists()
    resume_line = [line for line in stopped.stderr.splitlines() if line.startswith("resume: aitraining ")]
    assert resume_line and resume_line[0].endswith("--resume-from-checkpoint auto")
    resumed = run_child(shlex.split(resume_line[0])[2:])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_run(project, expected)


# SIGTERM once the final save has begun (after training and the last step's checkpointing).
TERM_AT_FINAL_SAVE = """
import os, signal
from autotrain.outputs import final as outputs
_orig = outputs.save_model
def save_model(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return _orig(*args, **kwargs)
outputs.save_model = save_model
"""


def test_sigterm_during_the_final_save_stops_like_one_during_training(tmp_path, chat_model, reference):
    data, expected = reference
    project = tmp_path / "run"
    # Checkpoints every 5 of 12 steps: the last one is of step 10, so the stop must save step 12's itself.
    stopped = run_child(cli_args(chat_model, data, project, save_steps=5), TERM_AT_FINAL_SAVE)
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr
    assert f"stopped: stopped by SIGTERM after saving {project / 'checkpoint-12'}" in stopped.stderr
    assert not (project / "README.md").exists() and not (project / "adapter_model.safetensors").exists()
    assert not (project / ".staging" / "final").exists()  # the abandoned final save
    resume_line = [line for line in stopped.stderr.splitlines() if line.startswith("resume: aitraining ")]
    assert resume_line and resume_line[0].endswith("--resume-from-checkpoint auto")
    resumed = run_child(shlex.split(resume_line[0])[2:])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_run(project, expected)


def test_non_finite_loss_stops_before_the_weights_change(tmp_path, chat_model, monkeypatch):
    from autotrain.train.methods import orpo as orpo_module

    calls = {"n": 0}
    real = orpo_module.METHOD

    def poisoned(model, batch, beta, reference):
        calls["n"] += 1
        terms = real.terms(model, batch, beta, reference)
        return dataclasses.replace(terms, nll=terms.nll * float("nan")) if calls["n"] == 3 else terms

    monkeypatch.setattr(orpo_module, "METHOD", dataclasses.replace(real, terms=poisoned))
    data = write_jsonl(tmp_path / "pairs.jsonl", arithmetic_pairs(12))
    params = LLMTrainingParams(model=str(chat_model), data_path=str(data), project_name=str(tmp_path / "run"),
                               **{**RUN, "save_steps": 2})
    with pytest.raises(TrainingError, match=r"non-finite loss at step 3; the weights were not updated .*checkpoint-2"):
        AutoTrainProject(params=params).create()
    project = tmp_path / "run"
    assert not (project / "adapter_model.safetensors").exists() and not (project / "README.md").exists()
    saved = load_file(project / "checkpoint-2" / "adapter_model.safetensors")
    assert all(torch.isfinite(t).all() for t in saved.values())


def test_secrets_never_reach_a_file(tmp_path, chat_model, monkeypatch, capfd):
    token, key = "hf_TOKENsecret0123456789abcdef", "wandbKEYsecret0123456789abcdef01234567"
    monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.setenv("WANDB_MODE", "offline")
    data = write_jsonl(tmp_path / "pairs.jsonl", arithmetic_pairs(4))
    params = LLMTrainingParams(model=str(chat_model), data_path=str(data), project_name=str(tmp_path / "run"),
                               token=token, log="wandb", max_steps=2, gradient_accumulation=1, save_steps=1,
                               save_total_limit=2)
    result = AutoTrainProject(params=params).create()
    files = [p for p in result.output_dir.rglob("*") if p.is_file()]
    assert any("wandb" in str(p) for p in files) and any("checkpoint-" in str(p) for p in files)
    for path in files:
        content = path.read_bytes()
        assert token.encode() not in content and key.encode() not in content, path
    printed = capfd.readouterr()
    assert token not in printed.out + printed.err and key not in printed.out + printed.err
    assert token not in repr(params) and token not in str(params.public_dict())


def test_unfinished_project_names_resume_and_latest_needs_a_checkpoint(tmp_path, chat_model):
    from autotrain.project import resume_point

    project = tmp_path / "p"
    (project / "checkpoint-4").mkdir(parents=True)
    (project / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (project / "training_params.json").write_text("{}")  # what the tool writes first into a run's folder
    with pytest.raises(ParamsError, match="unfinished run .*--resume-from-checkpoint auto"):
        resume_point(project, None)
    assert resume_point(project, "auto") == project / "checkpoint-4"
    with pytest.raises(ParamsError, match="latest, but .* holds no checkpoint"):
        resume_point(tmp_path / "empty", "latest")
    assert resume_point(tmp_path / "empty", "auto") is None
    with pytest.raises(ParamsError, match="not a checkpoint folder"):
        resume_point(project, str(tmp_path / "nowhere"))


def test_model_folders_must_hold_config_and_safetensors(tmp_path, chat_model):
    from autotrain.model.files import check_local as check_model_path

    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        check_model_path(str(bare))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((chat_model / "config.json").read_text())
    torch.save({}, pickled / "pytorch_model.bin")
    with pytest.raises(ModelError, match="only safetensors are loaded"):
        check_model_path(str(pickled))


def test_trust_remote_code_reaches_every_loader(tmp_path, chat_model, monkeypatch):
    from conftest import spy_from_pretrained

    seen = spy_from_pretrained(monkeypatch, ("AutoTokenizer", "AutoConfig", "AutoModelForCausalLM"))
    data = write_jsonl(tmp_path / "pairs.jsonl", arithmetic_pairs(4))
    for flag in (False, True):
        seen.clear()
        params = LLMTrainingParams(model=str(chat_model), data_path=str(data), project_name=str(tmp_path / f"r{flag}"),
                                   trust_remote_code=flag, max_steps=1, gradient_accumulation=1)
        AutoTrainProject(params=params).create()
        assert {n for n, _ in seen} >= {"AutoTokenizer", "AutoConfig", "AutoModelForCausalLM"}
        assert all(value is flag for _, value in seen), seen
