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
import torch
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
    """The trials' table: from its fifth line to the first blank one (the fixed settings follow)."""
    lines = (project / "sweep.md").read_text().splitlines()[4:]
    lines = lines[: lines.index("")] if "" in lines else lines
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


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


# --- Publishing the best trial -----------------------------------------------------------------------------------


def fake_trial(folder: Path, params: LLMTrainingParams, files: dict[str, bytes]) -> None:
    """A finished trial's folder as a run leaves it: its files, and its params."""
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    params.model_copy(update={"project_name": str(folder)}).save_json(folder / "training_params.json")


def published(project: Path) -> dict[str, bytes]:
    """Every file of the project outside what the sweep itself keeps there, by relative path."""
    own = {"sweep.db", "sweep.md", "sweep.png", "trials"}
    return {str(p.relative_to(project)): p.read_bytes() for p in sorted(project.rglob("*"))
            if p.is_file() and p.relative_to(project).parts[0] not in own and not p.name.startswith(".")}


def test_a_new_best_trial_replaces_the_published_one_whole(tmp_path):
    """A finished sweep run again with more trials: trial 002 (adapter merged) beats trial 000 (adapter only). The
    project must then hold trial 002's files and nothing of trial 000's: no adapter_config.json at the top beside
    the merged weights (inference would load both)."""
    import optuna

    from autotrain.params.sweep import parse_space
    from autotrain.project import result_of
    from autotrain.sweep import _conclude

    project = tmp_path / "sweep"
    space = '{"merge_adapter": [false, true]}'
    params = LLMTrainingParams(use_sweep=True, valid_split="validation", peft=True, project_name=str(project),
                               sweep_params=space, sweep_n_trials=1)
    ranges = parse_space(space, LLMTrainingParams.model_fields)
    adapter_only = {"adapter_config.json": b'{"r": 8}', "adapter_model.safetensors": b"A" * 64,
                    "README.md": b"trial 000", "tokenizer.json": b"{}"}
    merged = {"config.json": b'{"merged": true}', "model.safetensors": b"M" * 64, "README.md": b"trial 002",
              "adapter/adapter_config.json": b'{"r": 8}', "adapter/adapter_model.safetensors": b"B" * 64,
              "tokenizer.json": b"{}"}
    study = optuna.create_study(study_name="sweep", storage=f"sqlite:///{tmp_path / 'sweep.db'}")
    distribution = {"merge_adapter": optuna.distributions.CategoricalDistribution([False, True])}
    for number, (merge, value, files) in enumerate([(False, 2.0, adapter_only), (True, 3.0, None),
                                                    (True, 1.0, merged)]):
        folder = project / "trials" / f"{number:03d}"
        folder.mkdir(parents=True)
        trial_params = LLMTrainingParams(valid_split="validation", peft=True, project_name=str(folder),
                                         merge_adapter=merge)  # as run_sweep builds a trial: no sweep fields
        fake_trial(folder, trial_params, files or {"README.md": b"trial 001"})
        if number == 0:  # the first sweep: one trial, published
            study.add_trial(optuna.trial.create_trial(params={"merge_adapter": merge}, distributions=distribution,
                                                      value=value))
            _conclude(study, params, ranges, project, result_of)
            assert published(project) == published(folder)
        else:
            study.add_trial(optuna.trial.create_trial(params={"merge_adapter": merge}, distributions=distribution,
                                                      value=value))
    more = params.model_copy(update={"sweep_n_trials": 3})
    result = _conclude(study, more, ranges, project, result_of)
    assert published(project) == published(project / "trials" / "002")
    assert not (project / "adapter_model.safetensors").exists()
    assert result.output_dir == project and result.adapter_dir == project / "adapter"
    assert [r[1] for r in table_rows(project)] == ["complete", "complete", "complete (best)"]


# --- A resumed sweep is the same sweep ---------------------------------------------------------------------------


def test_a_resumed_sweep_with_another_fixed_setting_is_refused(tmp_path):
    import optuna

    from autotrain.sweep import _same_sweep, open_study

    settings = dict(use_sweep=True, valid_split="validation", data_path=str(tmp_path / "a.jsonl"), lr=1e-4,
                    sweep_params='{"warmup_ratio": [0.0, 0.1]}', project_name=str(tmp_path))
    first = LLMTrainingParams(**settings)
    study, _ = open_study(tmp_path, first)
    _same_sweep(study, first)
    changed = LLMTrainingParams(**{**settings, "lr": 2e-4, "data_path": str(tmp_path / "b.jsonl")})
    # No trial finished yet (trial 000 failed, or was stopped): a corrected command starts the sweep afresh.
    study, _ = open_study(tmp_path, changed)
    _same_sweep(study, changed)
    study, _ = open_study(tmp_path, first)
    _same_sweep(study, first)
    study.add_trial(optuna.trial.create_trial(
        params={"warmup_ratio": 0.0}, value=1.0,
        distributions={"warmup_ratio": optuna.distributions.CategoricalDistribution([0.0, 0.1])}))
    study, _ = open_study(tmp_path, changed)
    with pytest.raises(ParamsError) as refused:
        _same_sweep(study, changed)
    message = str(refused.value)
    assert message.startswith(f"project_name: the sweep in {tmp_path} ran its trials with other settings")
    assert f"data_path {str(tmp_path / 'a.jsonl')!r} -> {str(tmp_path / 'b.jsonl')!r}" in message
    assert "lr 0.0001 -> 0.0002" in message
    # More trials, a field the space sweeps, or the same space written otherwise, is the same sweep.
    more = LLMTrainingParams(**{**settings, "sweep_n_trials": 20, "warmup_ratio": 0.3,
                                "sweep_params": {"warmup_ratio": [0.0, 0.1]}})
    study, _ = open_study(tmp_path, more)
    _same_sweep(study, more)


def test_the_table_shows_the_fixed_settings(tmp_path):
    import optuna

    from autotrain.params.sweep import parse_space
    from autotrain.sweep_report import write_table

    params = LLMTrainingParams(use_sweep=True, valid_split="validation", data_path=str(tmp_path / "a.jsonl"),
                               lr=1e-4, sweep_params='{"warmup_ratio": [0.0, 0.1]}')
    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(
        params={"warmup_ratio": 0.1}, value=1.0,
        distributions={"warmup_ratio": optuna.distributions.CategoricalDistribution([0.0, 0.1])}))
    write_table(study, params, parse_space(params.sweep_params), tmp_path, 0)
    text = (tmp_path / "sweep.md").read_text()
    for line in (f"- data_path: {tmp_path / 'a.jsonl'}", "- lr: 0.0001", "- valid_split: validation",
                 "- model: embedded:smollm2-135m-instruct", "- trainer: orpo"):
        assert line in text.splitlines(), text


# --- The space ---------------------------------------------------------------------------------------------------


def test_sweeping_the_trainer_needs_a_metric_that_all_methods_share():
    with pytest.raises(ParamsError, match="sweep_params: trainer changes the loss itself, so eval_loss cannot rank"):
        LLMTrainingParams(use_sweep=True, valid_split="validation", sweep_params='{"trainer": ["orpo", "dpo"]}')
    LLMTrainingParams(use_sweep=True, valid_split="validation", sweep_params='{"trainer": ["orpo", "dpo"]}',
                      sweep_metric="eval_nll_loss")


@pytest.mark.parametrize("bound", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_bound_is_one_line_and_writes_nothing(tmp_path, capsys, bound):
    from autotrain.cli import main

    space = f'{{"lr": {{"low": {bound}, "high": 1e-3, "type": "log"}}}}'
    with pytest.raises(ParamsError, match=f"sweep_params: lr: needs finite numbers low <= high \\(got low="
                                          f"{float(bound)!r}, high=0.001\\)"):
        LLMTrainingParams(sweep_params=space)
    code = main(["llm", "--train", "--use-sweep", "--valid-split", "validation", "--sweep-params", space,
                 "--project-name", str(tmp_path / "sweep")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert not (tmp_path / "sweep").exists()


def test_a_list_of_strings_is_a_list_of_choices():
    from autotrain.params.sweep import parse_space

    for space, name, choices in [('{"scheduler": ["linear", "cosine", "constant"]}', "scheduler",
                                  ("linear", "cosine", "constant")),
                                 ('{"trainer": ["orpo", "dpo", "simpo"]}', "trainer", ("orpo", "dpo", "simpo")),
                                 ('{"lora_r": [8, 16, 32]}', "lora_r", (8, 16, 32))]:
        (r,) = parse_space(space)
        assert (r.name, r.kind, r.choices) == (name, "categorical", choices)
    (r,) = parse_space('{"lora_r": [8, 64, "int"]}')  # [low, high, type]: two numbers and a type name
    assert (r.kind, r.low, r.high) == ("int", 8, 64)


@pytest.mark.parametrize("space, message", [
    ('{"target_modules": [["q_proj"], ["v_proj"]]}',
     "sweep_params: target_modules: a choice must be a number, a string, true, false or null \\(got \\['q_proj'\\]\\)"),
    ('{"lr": [1e-4, NaN]}', "sweep_params: lr: a choice must be finite \\(got nan\\)"),
])
def test_choices_optuna_cannot_draw_are_refused_when_the_params_are_built(space, message):
    with pytest.raises(ParamsError, match=message):
        LLMTrainingParams(sweep_params=space)


def no_trial(*args, **kwargs):
    raise AssertionError("a trial ran before the space was checked")


@pytest.mark.parametrize("overrides, message", [
    (dict(sweep_metric="eval_acuracy"),
     "sweep_metric: eval_acuracy is not a metric that the evaluation logs with --trainer orpo; did you mean "
     "eval_rewards/accuracies?"),
    (dict(sweep_metric="eval_rewards/accuracies", sweep_direction="maximize",
          sweep_params='{"trainer": ["orpo", "sft"]}'),
     "sweep_metric: eval_rewards/accuracies is not a metric that the evaluation logs with --trainer sft"),
    (dict(sweep_params='{"lora_r": [8, 16]}'),
     "sweep_params: a trial with lora_r=8 cannot run: invalid parameters: lora_r applies to LoRA: add --peft"),
    (dict(sweep_params='{"batch_size": [2, 0]}'),
     "sweep_params: a trial with batch_size=0 cannot run: invalid parameters: batch_size: Input should be greater"),
    (dict(sweep_params='{"warmup_ratio": {"low": 0.0, "high": 2.0}}'),
     "sweep_params: a trial with warmup_ratio=2 cannot run: invalid parameters: warmup_ratio"),
])
def test_the_whole_space_is_checked_before_trial_000(tmp_path, overrides, message):
    from autotrain.project import result_of
    from autotrain.sweep import run_sweep

    params = LLMTrainingParams(**{**dict(use_sweep=True, valid_split="validation",
                                         project_name=str(tmp_path / "sweep")), **overrides})
    with pytest.raises(ParamsError, match=message.replace("[", "\\[").replace("?", "\\?")):
        run_sweep(params, no_trial, result_of)
    assert not (tmp_path / "sweep").exists()


def test_every_metric_a_method_logs_is_in_its_spec():
    """The sweep checks --sweep-metric against the methods' specs before any trial: the specs must name exactly
    what a step logs."""
    from test_packing import random_pairs, tiny_model

    from autotrain import methods
    from autotrain.data.collate import PaddedCollator

    pairs = random_pairs([(4, 3, 5), (2, 6, 2)])
    for name in methods.SPECS:
        method = methods.load(name)
        reference = (lambda batch: -torch.ones(2 * len(pairs))) if method.needs_reference else None
        batch = PaddedCollator(0)(pairs if method.spec.paired else [{**p, "rejected_ids": []} for p in pairs])
        _, metrics = method.step(tiny_model(), batch, 0.1, reference)
        assert set(metrics) == {"nll_loss", *methods.SPECS[name].metrics}, name


def test_a_sweep_params_mapping_in_a_config_file_is_the_same_space(tmp_path):
    from autotrain.cli import build_parser, params_from_args
    from autotrain.params.sweep import parse_space

    config = tmp_path / "run.yml"
    config.write_text("use_sweep: true\nvalid_split: validation\nsweep_params:\n  lr: {low: 1.0e-5, high: 1.0e-3, "
                      "type: log}\n  batch_size: [2, 4]\n")
    params = params_from_args(build_parser().parse_args(["llm", "--train", "--config", str(config)]))
    as_json = parse_space('{"lr": {"low": 1e-5, "high": 1e-3, "type": "log"}, "batch_size": [2, 4]}')
    assert parse_space(params.sweep_params) == as_json


def test_a_yaml_bound_read_as_text_says_why(tmp_path):
    from autotrain.cli import build_parser, params_from_args

    config = tmp_path / "run.yml"
    config.write_text("use_sweep: true\nvalid_split: validation\nsweep_params: {lr: [1e-5, 1e-3, log]}\n")
    with pytest.raises(ParamsError, match=rf"^{config}:3:15: .*lr: \[low, high, type\] needs numbers, not texts "
                                          r"\(got '1e-5', '1e-3'\); in a YAML file write 1.0e-5, not 1e-5"):
        params_from_args(build_parser().parse_args(["llm", "--train", "--config", str(config)]))



def test_a_changed_space_is_refused_even_before_a_trial_finished(tmp_path):
    """optuna's storage keeps each parameter's distribution and the direction: another space or direction cannot
    go on in the same study (optuna would refuse the first draw, or keep the old direction without a word)."""
    from autotrain.sweep import _same_sweep, open_study

    settings = dict(use_sweep=True, valid_split="validation", project_name=str(tmp_path),
                    sweep_params='{"batch_size": [2, 64]}')
    old = LLMTrainingParams(**settings)
    study, _ = open_study(tmp_path, old)
    _same_sweep(study, old)
    study.ask().suggest_categorical("batch_size", [2, 64])  # trial 000, running when the sweep was killed
    for change, named in ((dict(sweep_params='{"batch_size": [2, 4]}'), "space"),
                          (dict(sweep_direction="maximize", sweep_metric="eval_rewards/accuracies"), "direction")):
        new = LLMTrainingParams(**{**settings, **change})
        study, _ = open_study(tmp_path, new)
        with pytest.raises(ParamsError, match=f"ran its trials with other settings \\({named} "):
            _same_sweep(study, new)
