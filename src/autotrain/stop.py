"""A clean stop on SIGINT/SIGTERM: save a checkpoint at the end of the current optimizer step, then stop.

The first signal asks the loop to save and stop at the next step boundary (`StopOnSignal`); one that comes after the
last step (the final evaluation, the sample answers, the final save) abandons the final save and saves a checkpoint
of the last step instead (`save_last_step`), so that every stop can be resumed. A second signal falls back
to the default behaviour (exit at once), so a run that hangs can still be stopped. The run then raises
`interrupted(...)`: the error naming what was saved and how to resume, with the shell's exit code (130, 143). A
launched run's parent raises the same error for its children (autotrain.launch).
"""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType
from typing import Any

from transformers import TrainerCallback

from autotrain.checkpoints import checkpoints, step_of
from autotrain.errors import TrainingInterrupted


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


def save_last_step(trainer: Any) -> None:
    """A signal after the last step's boundary (during the last evaluation, the sample answers or the final save)
    stops the run as one during training does: with a checkpoint of the step it reached, saved now unless the newest
    checkpoint is of that step, so that the printed resume only has the final save left to do."""
    saved = checkpoints(Path(trainer.args.output_dir))
    if not saved or step_of(saved[-1]) != trainer.state.global_step:
        trainer.save_checkpoint()


def interrupted(number: int, project: Path) -> TrainingInterrupted:
    """The error for a run stopped by signal `number`: what was saved, and how to resume."""
    saved = checkpoints(project)
    name = signal.Signals(number).name
    return TrainingInterrupted(
        f"stopped by {name} after saving {saved[-1] if saved else 'no checkpoint'}; resume with the same command "
        "plus --resume-from-checkpoint auto (Python: resume_from_checkpoint='auto')",
        signal_number=number,
        checkpoint=str(saved[-1]) if saved else None,
    )
