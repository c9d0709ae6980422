"""Checkpoints on disk: replacing one is atomic (tested by killing the process between the steps), and resuming
from an older checkpoint keeps that branch: rotation never deletes its saves for newer steps of the abandoned run,
and `auto` resumes the branch."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import arithmetic_pairs, write_jsonl
from test_faults import KILL_AT_STEP, cli_args, run_child

from autotrain.outputs import checkpoints
from autotrain.project import resume_point

# Replaces <project>/checkpoint-4 with the staged copy, killing itself at the point named by argv[2].
REPLACE = """
import os, signal, sys
from pathlib import Path
from autotrain.outputs import checkpoints
project, mode = Path(sys.argv[1]), sys.argv[2]
rename = os.rename
def rename_then_die(src, dst, *args, **kwargs):
    rename(src, dst, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)  # the first rename done, the second never happens
os.rename = rename_then_die
if mode != "first rename":
    from autotrain import atomic
    if mode == "without exchange":  # another OS, or a file system without renameat2(RENAME_EXCHANGE)
        atomic.exchange = lambda a, b: False
    else:
        exchange = atomic.exchange
        def exchange_then_die(a, b):
            done = exchange(a, b)
            os.kill(os.getpid(), signal.SIGKILL)
        atomic.exchange = exchange_then_die
checkpoints.publish(project / ".staging" / "checkpoint-4", project / "checkpoint-4")
"""


def checkpoint(folder: Path, step: int, content: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "weights").write_text(content)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


@pytest.mark.parametrize(("mode", "survivor"), [("first rename", "new"), ("without exchange", "old"),
                                                 ("after the exchange", "new")])
def test_replacing_a_checkpoint_leaves_a_whole_one_whenever_the_process_dies(tmp_path, mode, survivor):
    project = tmp_path / "run"
    checkpoint(project / "checkpoint-4", 4, "old")
    checkpoint(project / ".staging" / "checkpoint-4", 4, "new")
    done = subprocess.run([sys.executable, "-c", REPLACE, str(project), mode], capture_output=True, timeout=120)
    if mode != "first rename":  # with the exchange there is no first rename to die after
        assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    checkpoints.clear_staging(project)  # what the next start does first
    assert (project / "checkpoint-4" / "weights").read_text() == survivor
    assert sorted(p.name for p in project.iterdir()) == ["checkpoint-4"]


def test_rename_exchange_swaps_two_folders_in_one_call(tmp_path):
    from autotrain.atomic import exchange

    checkpoint(tmp_path / "a", 1, "a")
    checkpoint(tmp_path / "b", 2, "b")
    assert exchange(tmp_path / "a", tmp_path / "b")  # Linux (glibc 2.28+) on ext4, xfs, btrfs or tmpfs
    assert [(tmp_path / n / "weights").read_text() for n in "ab"] == ["b", "a"]


def test_set_aside_keeps_the_abandoned_checkpoints_out_of_rotation_and_auto(tmp_path):
    from autotrain.outputs.checkpoints import checkpoints, set_aside_newer

    project = tmp_path / "run"
    for step in (2, 4, 6):
        checkpoint(project / f"checkpoint-{step}", step, f"first {step}")
    assert set_aside_newer(project, project / "checkpoint-2") == [project / "superseded" / "checkpoint-4",
                                                                   project / "superseded" / "checkpoint-6"]
    assert checkpoints(project) == [project / "checkpoint-2"]
    (project / "training_params.json").write_text("{}")
    assert resume_point(project, "auto") == project / "checkpoint-2"  # killed before its first save: the branch
    checkpoint(project / "checkpoint-4", 4, "second 4")  # the branch saved step 4 again, then went back once more
    set_aside_newer(project, project / "checkpoint-2")
    assert (project / "superseded" / "checkpoint-4-2" / "weights").read_text() == "second 4"  # nothing overwritten
    assert set_aside_newer(project, None) == []


def test_resuming_an_older_checkpoint_keeps_its_branch(tmp_path, chat_model):
    data = write_jsonl(tmp_path / "pairs.jsonl", arithmetic_pairs(12))
    project = tmp_path / "run"
    # Run A (12 steps, a save every 2 keeping 3): checkpoints 2, 4 and 6, killed at step 8 before its save.
    first = run_child(cli_args(chat_model, data, project, save_total_limit=3), KILL_AT_STEP.format(step=8,
                                                                                                 signal="SIGKILL"))
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    assert sorted(p.name for p in project.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    # Run B goes back to step 2 keeping one checkpoint; it saves step 4 and is killed at step 6 before that save.
    # Rotation by step number used to keep A's checkpoint-6 and delete B's own checkpoint-4.
    second = run_child(cli_args(chat_model, data, project, save_total_limit=1,
                                resume_from_checkpoint=str(project / "checkpoint-2")),
                       KILL_AT_STEP.format(step=6, signal="SIGKILL"))
    assert second.returncode == -signal.SIGKILL, second.stderr[-3000:]
    newest = resume_point(project, "auto")
    assert newest == project / "checkpoint-4"  # B's own save, not A's step 6
    assert sorted(p.name for p in project.glob("checkpoint-*")) == ["checkpoint-4"]
    assert sorted(p.name for p in (project / "superseded").iterdir()) == ["checkpoint-4", "checkpoint-6"]  # A's
    resumed = run_child(cli_args(chat_model, data, project, save_total_limit=1, resume_from_checkpoint="auto"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    records = [json.loads(line) for line in (project / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "nll_loss" in r] == list(range(1, 13))  # one record per step of B's line
