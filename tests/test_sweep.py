"""use_sweep: optuna trials one after another in <project>/trials/NNN, pruning, the summary, the best model kept,
and a killed sweep resumed with the trials it had finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import arithmetic_pairs, write_jsonl

from autotrain.errors import ParamsError
from autotrain.project import AutoTrainProject
from autotrain.trainers.clm.params import LLMTrainingParams

SPACE = '{"lr": {"low": 1e-4, "high": 1e-2, "type": "log"}, "warmup_ratio": [0.0, 0.5]}'


def data_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", arithmetic_pairs(8))
    write_jsonl(folder / "validation.jsonl", arithmetic_pairs(4, start=20))
    return folder


def sweep_params(tmp_path: Path, model: Path, **overrides) -> LLMTrainingParams:
    settings = dict(model=str(model), data_path=str(data_folder(tmp_path)), project_name=str(tmp_path / "sweep"),
                    valid_split="validation", batch_size=2, gradient_accumulation=1, max_steps=2, logging_steps=1,
                    eval_strategy="steps", eval_steps=1, use_sweep=True, sweep_n_trials=3, sweep_params=SPACE)
    settings.update(overrides)
    return LLMTrainingParams(**settings)


def last_eval(folder: Path, metric: str) -> float:
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [r[metric] for r in records if metric in r][-1]


def table_rows(project: Path) -> list[list[str]]:
    lines = (project / "sweep.md").read_text().splitlines()
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[4:]]


def test_three_trials_summary_plot_and_best_model_kept(tmp_path, chat_model):
    """~30 s: three 2-step trials on the tiny model (most of it each run's fixed cost: loading, plots)."""
    params = sweep_params(tmp_path, chat_model)
    result = AutoTrainProject(params=params).create()
    project = tmp_path / "sweep"
    trials = sorted((project / "trials").iterdir())
    assert [t.name for t in trials if not t.name.startswith(".")] == ["000", "001", "002"]
    rows = table_rows(project)
    assert len(rows) == 3
    values = {}
    for number, state, metric, lr, warmup in rows:
        folder = project / "trials" / number
        saved = json.loads((folder / "training_params.json").read_text())
        assert float(lr) == pytest.approx(saved["lr"], rel=1e-3) and float(warmup) == saved["warmup_ratio"]
        assert 1e-4 <= saved["lr"] <= 1e-2 and saved["warmup_ratio"] in (0.0, 0.5)
        # The table's metric is the trial's own last validation loss, as its metrics.jsonl holds it.
        assert float(metric) == pytest.approx(last_eval(folder, "eval_loss"), rel=1e-5)
        if state.startswith("complete"):
            values[number] = float(metric)
    best = min(values, key=values.get)
    assert [r[1] for r in rows if r[0] == best] == ["complete (best)"]
    # The best trial's model is the project's model, byte for byte.
    assert (project / "model.safetensors").read_bytes() == (project / "trials" / best /
                                                            "model.safetensors").read_bytes()
    assert (project / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.output_dir == project and result.metrics["eval_loss"] == pytest.approx(values[best])


def test_pruning_stops_the_trial_and_reports_each_evaluation():
    from transformers import TrainerControl

    from autotrain.sweep import PruneOnEval

    class Trial:
        def __init__(self):
            self.reported = []

        def report(self, value, step):
            self.reported.append((value, step))

        def should_prune(self):
            return len(self.reported) == 2  # optuna says prune at the second evaluation

    trial, control = Trial(), TrainerControl()
    callback = PruneOnEval(trial, "eval_loss")
    for step, logs in ((0, {"eval_loss": 3.0}), (1, {"loss": 2.5}), (2, {"eval_loss": 2.9})):
        callback.on_log(None, type("State", (), {"global_step": step})(), control, logs=logs)
    assert trial.reported == [(3.0, 0), (2.9, 2)]
    assert callback.pruned and control.should_training_stop


def test_sweep_params_are_checked_before_anything_runs(tmp_path):
    with pytest.raises(ParamsError, match="sweep_params: 'nosuch' cannot be swept"):
        LLMTrainingParams(sweep_params='{"nosuch": [1, 2]}')
    with pytest.raises(ParamsError, match="sweep_params: lr: a log range needs low > 0"):
        LLMTrainingParams(sweep_params='{"lr": {"low": 0, "high": 1, "type": "log"}}')
    with pytest.raises(ParamsError, match="use_sweep optimises eval_loss on the validation split: add --valid-split"):
        LLMTrainingParams(use_sweep=True)


_SWEEP_SCRIPT = """
import json, sys
from autotrain.project import AutoTrainProject
from autotrain.trainers.clm.params import LLMTrainingParams
AutoTrainProject(params=LLMTrainingParams.from_saved(json.loads(sys.argv[1]))).create()
"""


def test_killed_sweep_resumes_with_its_finished_trials(tmp_path, chat_model):
    """~40 s: a sweep killed (SIGKILL) while its second trial trains is started again: the first trial is not run
    again, the killed one is marked failed and its parameters tried again, and the sweep finishes."""
    import optuna

    params = sweep_params(tmp_path, chat_model, sweep_n_trials=2, max_steps=12, eval_steps=6)
    project = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", _SWEEP_SCRIPT, json.dumps(params.public_dict())], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first, second = project / "trials" / "000", project / "trials" / "001"
    deadline = time.monotonic() + 240
    while not (second / "training_params.json").exists():  # the second trial has started training
        assert child.poll() is None, child.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not (second / "README.md").exists(), "the second trial finished before the kill; the test needs it running"
    first_metrics = (first / "metrics.jsonl").read_bytes()
    first_mtime = (first / "model.safetensors").stat().st_mtime_ns

    AutoTrainProject(params=params).create()

    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{project / 'sweep.db'}")
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"]
    assert study.trials[2].params == study.trials[1].params  # the killed trial's parameters, tried again
    assert (first / "metrics.jsonl").read_bytes() == first_metrics  # not run again
    assert (first / "model.safetensors").stat().st_mtime_ns == first_mtime
    assert [r[0] for r in table_rows(project)] == ["000", "001", "002"]


def test_a_resumed_sweep_draws_new_parameters_not_the_first_trials_again(tmp_path):
    """Reopening the study (a resumed sweep) must not replay the seed's first draws: a sampler seeded as the fresh
    sweep was would give trial 3 the parameters of trial 0."""
    import optuna

    from autotrain.sweep import open_study

    params = LLMTrainingParams(use_sweep=True, valid_split="validation", seed=7)
    study, _ = open_study(tmp_path, params)
    first = [study.ask().suggest_float("lr", 1e-5, 1e-3, log=True) for _ in range(2)]
    for trial in study.get_trials(deepcopy=False):
        study.tell(trial.number, 1.0)
    resumed, _ = open_study(tmp_path, params)
    again = resumed.ask().suggest_float("lr", 1e-5, 1e-3, log=True)
    assert again not in first
    fresh = optuna.samplers.TPESampler(seed=7)  # what a fresh sweep with this seed draws first: the same as before
    replay = optuna.create_study(sampler=fresh).ask().suggest_float("lr", 1e-5, 1e-3, log=True)
    assert replay == first[0]


def test_sweeping_a_field_that_changes_the_loss_needs_another_metric():
    space = '{"simpo_gamma": {"low": 0.1, "high": 1.0}}'
    with pytest.raises(ParamsError, match="simpo_gamma changes the loss itself, so eval_loss cannot rank the trials"):
        LLMTrainingParams(trainer="simpo", use_sweep=True, valid_split="validation", sweep_params=space)
    LLMTrainingParams(trainer="simpo", use_sweep=True, valid_split="validation", sweep_params=space,
                      sweep_metric="eval_nll_loss")
