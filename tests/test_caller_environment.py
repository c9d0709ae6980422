"""From Python, a run leaves the caller's environment as it found it: no W&B key for later subprocesses to inherit,
no WANDB_DIR or WANDB_PROJECT sending the caller's own wandb runs into the project folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import arithmetic_pairs, write_jsonl

from autotrain.project import AutoTrainProject
from autotrain.trainers.clm.params import LLMTrainingParams

KEY = "wandbKEYsecret0123456789abcdef01234567"


@pytest.fixture
def callers_environment(monkeypatch) -> dict[str, str]:
    """A caller with wandb settings of its own (offline, its own project) and no key."""
    for name in [name for name in os.environ if name.startswith("WANDB_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_PROJECT", "callers-own")
    return dict(os.environ)


def changed(before: dict[str, str]) -> dict[str, tuple[str | None, str | None]]:
    names = (set(before) | set(os.environ)) - {"PYTEST_CURRENT_TEST"}
    return {name: (before.get(name), os.environ.get(name)) for name in sorted(names)
            if before.get(name) != os.environ.get(name)}


def test_a_wandb_run_leaves_the_callers_environment_and_wandb_as_they_were(tmp_path, chat_model, monkeypatch,
                                                                            callers_environment):
    import wandb

    monkeypatch.chdir(tmp_path)
    data = write_jsonl(tmp_path / "pairs.jsonl", arithmetic_pairs(4))
    project = tmp_path / "run"
    params = LLMTrainingParams(model=str(chat_model), data_path=str(data), project_name=str(project), log="wandb",
                               wandb_token=KEY, max_steps=1, gradient_accumulation=1)
    AutoTrainProject(params).create()
    assert list((project / "wandb").glob("offline-run-*"))  # the run logged where it should
    assert changed(callers_environment) == {}
    mine = wandb.init()  # the caller's own run afterwards: its own project, not in the project folder
    try:
        assert mine.project == "callers-own"
        assert not Path(mine.dir).resolve().is_relative_to(project.resolve())
    finally:
        mine.finish()


def test_the_environment_is_restored_when_a_run_fails(tmp_path, callers_environment):
    from autotrain import project

    params = LLMTrainingParams(project_name=str(tmp_path / "run"), log="wandb", wandb_token=KEY,
                               wandb_run_id="run7")
    with pytest.raises(RuntimeError, match="a failing step"), project.session(params):
        project._tracker_environment(params, tmp_path / "run")
        assert os.environ["WANDB_API_KEY"] == KEY  # while the run lasts, the trackers have what they need
        raise RuntimeError("a failing step")
    assert changed(callers_environment) == {}


def test_runs_after_the_callers_own_wandb_run_still_log(tmp_path, chat_model, monkeypatch, callers_environment):
    """WANDB_SERVICE is wandb's note of its live service process, not a caller's setting: a run that tears down the
    caller's wandb (so as to start its own) must not put the dead service's address back afterwards, or the next
    run's wandb.init fails to connect."""
    import wandb

    monkeypatch.chdir(tmp_path)
    data = write_jsonl(tmp_path / "pairs.jsonl", arithmetic_pairs(4))
    mine = wandb.init()
    mine.finish()
    for name in ("first", "second"):
        params = LLMTrainingParams(model=str(chat_model), data_path=str(data), project_name=str(tmp_path / name),
                                   log="wandb", max_steps=1, gradient_accumulation=1)
        AutoTrainProject(params).create()
        assert list((tmp_path / name / "wandb").glob("offline-run-*"))
