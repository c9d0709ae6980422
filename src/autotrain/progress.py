"""Training progress: step/total, loss, tokens/s and ETA, as a bar on a terminal and plain lines elsewhere.

transformers' own ProgressCallback shows a step bar but no tokens/s (the number that says whether a change to
batching, packing or attention made training faster), and its PrinterCallback, used when tqdm is disabled, dumps
raw log dicts. `Progress` replaces both; the trainer must remove them (`trainer.remove_callback(ProgressCallback)`
/ `PrinterCallback`) or their output is added to this one's.

- On a TTY: one tqdm bar, advanced at every step, whose postfix shows the loss, accuracy and tokens/s of the last
  training log; tqdm gives the ETA. Eval results are printed as one line above the bar (tqdm.write).
- Elsewhere (log file, CI, pipe): nothing per step, one flushed line per logging step, e.g.
      step 10/40 (25%) | loss 1.2345 | 812 tokens/s | ETA 2m03s
      eval step 10/40 | loss 0.7120 | accuracy 0.800

Tokens/s comes from `num_tokens`, a cumulative count of real (non-padding) tokens this process has seen, which
the trainer puts into each training log: the difference between two consecutive training logs over the wall
time between them (for the first log: since on_train_begin, counting from 0). It therefore includes whatever ran
in between (evaluation, checkpointing). Without `num_tokens` it is omitted. Only the main process prints.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, TextIO

from tqdm import tqdm
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

LOSS = "loss"
ACCURACY = "rewards/accuracies"
TOKENS = "num_tokens"
EVAL_PREFIX = "eval_"
JUDGE_PREFIX = "eval_judge_"  # the judged comparison's record (autotrain.judge), written once after training


def is_evaluation(logs: dict[str, Any]) -> bool:
    """An evaluation's log (or metrics.jsonl record) rather than a training one: Trainer prefixes its keys with eval_.
    The judged comparison's record is not an evaluation of the validation split: it has no loss to compare."""
    return any(key.startswith(EVAL_PREFIX) and not key.startswith(JUDGE_PREFIX) for key in logs)


def format_duration(seconds: float) -> str:
    """45s, 2m03s, 1h02m."""
    total = int(round(seconds))
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    return f"{total // 3600}h{total % 3600 // 60:02d}m"


def _step(state: TrainerState) -> str:
    if state.max_steps > 0:
        return f"{state.global_step}/{state.max_steps}"
    return str(state.global_step)


def _metrics(logs: dict[str, Any], prefix: str) -> list[str]:
    parts = []
    if prefix + LOSS in logs:
        parts.append(f"loss {logs[prefix + LOSS]:.4f}")
    if prefix + ACCURACY in logs:
        parts.append(f"accuracy {logs[prefix + ACCURACY]:.3f}")
    return parts


class Progress(TrainerCallback):
    """Shows training progress on `stream` (default sys.stdout): a tqdm bar if it is a TTY, plain lines otherwise.

    `clock` returns seconds (time.monotonic by default); it times tokens/s and the plain-line ETA.
    """

    def __init__(self, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic):
        self.stream = sys.stdout if stream is None else stream
        self.clock = clock
        self.tty = self.stream.isatty()
        self._bar: tqdm | None = None
        self._start_time = 0.0
        self._start_step = 0
        self._last_time = 0.0
        self._last_tokens: float | None = 0

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if not state.is_world_process_zero:
            return
        self._start_time = self._last_time = self.clock()
        self._start_step = state.global_step
        self._last_tokens = 0
        if self.tty:
            self._bar = tqdm(
                total=state.max_steps, initial=state.global_step, unit="step", file=self.stream, dynamic_ncols=True
            )

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if self._bar is not None:  # only the main process has one
            self._bar.update(state.global_step - self._bar.n)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        if not logs or not state.is_world_process_zero:
            return
        if is_evaluation(logs):
            line = " | ".join([f"eval step {_step(state)}", *_metrics(logs, EVAL_PREFIX)])
            if self.tty:
                tqdm.write(line, file=self.stream)
            else:
                self._print(line)
        elif LOSS in logs:
            now = self.clock()
            parts = [*_metrics(logs, ""), *self._tokens_per_second(logs.get(TOKENS), now)]
            if not self.tty:
                self._print(" | ".join([self._position(state), *parts, *self._eta(state, now)]))
            elif self._bar is not None:
                self._bar.set_postfix_str(" | ".join(parts))

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _tokens_per_second(self, tokens: float | None, now: float) -> list[str]:
        """`812 tokens/s` since the previous training log (or on_train_begin); nothing without `num_tokens`."""
        elapsed = now - self._last_time
        previous = self._last_tokens
        self._last_time, self._last_tokens = now, tokens
        if tokens is None or previous is None or elapsed <= 0:
            return []
        return [f"{(tokens - previous) / elapsed:.0f} tokens/s"]

    def _position(self, state: TrainerState) -> str:
        if state.max_steps <= 0:
            return f"step {state.global_step}"
        return f"step {_step(state)} ({100 * state.global_step // state.max_steps}%)"

    def _eta(self, state: TrainerState, now: float) -> list[str]:
        """`ETA 2m03s` from the mean time per step since on_train_begin, once a step has been done."""
        done = state.global_step - self._start_step
        if done <= 0 or state.max_steps <= 0:
            return []
        eta = (now - self._start_time) / done * (state.max_steps - state.global_step)
        return [f"ETA {format_duration(eta)}"]

    def _print(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()
