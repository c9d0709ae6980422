"""Nothing lost: atomic checkpoints, a clean stop on SIGINT/SIGTERM, and no step on a non-finite loss.

- A checkpoint is written into `<project>/.staging/`, every file is fsynced, and only then is the folder renamed
  to `<project>/checkpoint-N`. transformers finds checkpoints by the `checkpoint-N` name, so a save killed half way
  leaves the previous checkpoint as the latest one, and the staging leftovers are removed on the next start.
- The first SIGINT/SIGTERM asks the loop to save and stop at the end of the current optimizer step; a second one
  falls back to the default behaviour (exit at once).
- The optimizer never steps on a non-finite loss or gradient: the run stops with an error naming the step and
  the last good checkpoint, and no final model is saved.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from types import FrameType
from typing import Any

from transformers import TrainerCallback

from autotrain.atomic import fsync_path, fsync_tree

STAGING = ".staging"
CHECKPOINT_PREFIX = "checkpoint-"


def publish(staged: Path, final: Path) -> None:
    """Make a fully written folder visible under its final name in one rename."""
    fsync_tree(staged)
    if final.exists():  # a resumed run saving the same step again: replace the old copy
        trash = final.parent / STAGING / f"replaced-{final.name}"
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(final, trash)
        os.rename(staged, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(staged, final)
    fsync_path(final.parent)


def clear_staging(project: Path) -> None:
    """Leftovers of a save that was killed: never complete, never used."""
    shutil.rmtree(project / STAGING, ignore_errors=True)


def checkpoints(project: Path) -> list[Path]:
    """Published checkpoints, oldest step first."""
    found = [p for p in project.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name[len(CHECKPOINT_PREFIX) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def rotate(project: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints; each leaves the visible set in one rename first."""
    (project / STAGING).mkdir(exist_ok=True)
    for old in checkpoints(project)[:-keep]:
        trash = project / STAGING / f"deleted-{old.name}"
        os.rename(old, trash)
        shutil.rmtree(trash, ignore_errors=True)


class StopOnSignal(TrainerCallback):
    """Turns SIGINT/SIGTERM into 'save a checkpoint and stop' at the next step boundary."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for number in (signal.SIGINT, signal.SIGTERM):
            self._previous[number] = signal.signal(number, self._handle)

    def uninstall(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        self.received = number
        # A second signal must still be able to stop a run that hangs.
        signal.signal(number, signal.SIG_DFL if number == signal.SIGTERM else signal.default_int_handler)

    def on_step_end(self, args, state, control, **kwargs):  # noqa: D102
        if self.received is not None:
            control.should_save = True
            control.should_training_stop = True
        return control
