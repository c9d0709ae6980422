"""A full disk: a run that could not save its model is not started; a save that fails half way leaves nothing half
written, keeps the previous checkpoint, and says in one line what was lost and what was kept.

The disk is made full by the writers themselves: torch.save and safetensors' save_file write part of their file and
raise what they raise on a full disk (torch's stream writer a RuntimeError, Python's writes OSError ENOSPC);
the free space the run sees before writing is shutil.disk_usage's."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
import torch
from test_faults import run_child

from autotrain.errors import AutoTrainError
from autotrain.project import AutoTrainProject
from autotrain.trainers.clm.params import LLMTrainingParams


def test_a_disk_that_cannot_hold_the_final_model_is_refused_before_training(tmp_path, chat_model, pairs_file,
                                                                             monkeypatch):
    small = tmp_path / "small"
    small.mkdir()
    real = shutil.disk_usage

    def usage(path):
        found = real(path)
        # 50 KB free where the project goes: less than the tiny model's weights alone (about 100 KB in fp32).
        return found._replace(free=50_000) if Path(path).resolve().is_relative_to(small) else found

    monkeypatch.setattr(shutil, "disk_usage", usage)
    params = LLMTrainingParams(model=str(chat_model), data_path=str(pairs_file), project_name=str(small / "run"),
                               max_steps=2, gradient_accumulation=1)
    with pytest.raises(AutoTrainError, match=r"not enough free space for the final model in .*small/run: about "
                                             r"[\d.]+ MB needed \(\d+ KB of weights, .*\), 50 KB free \(checked "
                                             r"before training"):
        AutoTrainProject(params=params).create()
    assert list(small.iterdir()) == []


FULL_AT_FINAL_SAVE = """
import errno, os, safetensors.torch
def save_file(tensors, filename, metadata=None):
    with open(filename, "wb") as handle:  # part of the file reaches the disk, then the disk is full
        handle.write(bytes(4096))
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))
safetensors.torch.save_file = save_file  # before transformers imports it
"""


def test_a_full_disk_during_the_final_save_says_what_was_lost_and_leaves_no_half_weights(tmp_path, chat_model,
                                                                                         pairs_file):
    project = tmp_path / "run"
    args = ["llm", "--train", "--model", str(chat_model), "--data-path", str(pairs_file), "--project-name",
            str(project), "--max-steps", "3", "--gradient-accumulation", "1", "--save-strategy", "no"]
    failed = run_child(args, FULL_AT_FINAL_SAVE)
    assert failed.returncode == 2, failed.stderr[-3000:]
    errors = [line for line in failed.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "Traceback" not in failed.stderr, failed.stderr[-3000:]
    assert errors[0].startswith(f"error: writing the final model into {project} failed (No space left on device")
    assert "Lost: all 3 steps of training (no checkpoint was saved); kept: metrics.jsonl, training_params.json" in \
        errors[0]
    assert sorted(p.name for p in project.iterdir()) == ["metrics.jsonl", "training_params.json"]
    # The plain rerun the line names is accepted and trains the run again.
    again = LLMTrainingParams(model=str(chat_model), data_path=str(pairs_file), project_name=str(project),
                              max_steps=3, gradient_accumulation=1, save_strategy="no", resume_from_checkpoint="auto")
    AutoTrainProject(params=again).create()
    assert (project / "model.safetensors").stat().st_size > 4096 and (project / "README.md").exists()


def test_a_full_disk_during_a_checkpoint_save_keeps_the_previous_checkpoint(tmp_path, chat_model, pairs_file,
                                                                            monkeypatch):
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if str(f).endswith(os.path.join("checkpoint-4", "optimizer.pt")):
            Path(f).write_bytes(bytes(4096))  # what reached the disk before it was full
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4096 vs 4032\n"
                               "basic_ios::clear: iostream error")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    project = tmp_path / "run"
    params = LLMTrainingParams(model=str(chat_model), data_path=str(pairs_file), project_name=str(project),
                               max_steps=6, save_steps=2, gradient_accumulation=1, logging_steps=1)
    with pytest.raises(AutoTrainError) as stopped:
        AutoTrainProject(params=params).create()
    message = str(stopped.value)
    assert "\n" not in message
    assert message.startswith(f"writing checkpoint-4 into {project} failed (basic_ios::clear: iostream error; ")
    assert "its partial copy was removed; checkpoint-2 is intact" in message
    assert "--resume-from-checkpoint auto (the steps after 2 run again)" in message
    assert not (project / ".staging").exists()
    assert sorted(p.name for p in project.glob("checkpoint-*")) == ["checkpoint-2"]
    monkeypatch.setattr(torch, "save", real_save)
    resumed = LLMTrainingParams(model=str(chat_model), data_path=str(pairs_file), project_name=str(project),
                                max_steps=6, save_steps=2, gradient_accumulation=1, logging_steps=1,
                                resume_from_checkpoint="auto")
    AutoTrainProject(params=resumed).create()
    assert (project / "README.md").exists()


def test_write_failures_are_told_from_other_errors():
    from autotrain.disk import write_failure

    assert write_failure(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) == "No space left on device"
    assert write_failure(RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"))
    assert write_failure(Exception("Error while serializing: IoError(Os { code: 28, kind: StorageFull })"))
    assert write_failure(RuntimeError("size mismatch for lm_head.weight")) is None
    assert write_failure(OSError(errno.ENOENT, "No such file or directory")) is None
