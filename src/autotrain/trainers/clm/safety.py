"""Nothing lost: atomic checkpoints, a clean stop on SIGINT/SIGTERM, and no step on a non-finite loss.

- Checkpoints are written into `<project>/.staging/`, fsynced, and published by one rename; an existing one is
  replaced in one atomic swap; a save killed half way is undone on the next start (autotrain.checkpoints, whose
  functions are re-exported here).
- The first SIGINT/SIGTERM asks the loop to save and stop at the end of the current optimizer step; a second one
  falls back to the default behaviour (exit at once).
- The optimizer never steps on a non-finite loss or gradient: the run stops with an error naming the step and
  the last good checkpoint, and no final model is saved.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

from transformers import TrainerCallback

from autotrain.checkpoints import (  # noqa: F401 - the checkpoint operations, under the names callers use
    CHECKPOINT_PREFIX,
    STAGING,
    checkpoints,
    clear_staging,
    publish,
    rotate,
)


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
