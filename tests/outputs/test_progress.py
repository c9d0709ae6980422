"""Progress callback: hooks called directly with a fake clock; expected numbers are worked out by hand."""

from __future__ import annotations

import io

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from autotrain.outputs.progress import Progress, format_duration


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TtyIO(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def args(tmp_path):
    return TrainingArguments(output_dir=str(tmp_path), report_to="none")


class Run:
    """Drives a Progress the way Trainer does: begin, step ends, logs, end."""

    def __init__(self, progress: Progress, args: TrainingArguments, state: TrainerState):
        self.progress, self.args, self.state, self.control = progress, args, state, TrainerControl()

    def begin(self) -> None:
        self.progress.on_train_begin(self.args, self.state, self.control)

    def steps_to(self, step: int) -> None:
        while self.state.global_step < step:
            self.state.global_step += 1
            self.progress.on_step_end(self.args, self.state, self.control)

    def log(self, logs: dict) -> None:
        self.progress.on_log(self.args, self.state, self.control, logs=logs)

    def end(self) -> None:
        self.progress.on_train_end(self.args, self.state, self.control)


def test_plain_lines(args):
    stream, clock = io.StringIO(), Clock()
    run = Run(Progress(stream, clock), args, TrainerState(max_steps=40))
    run.begin()
    run.steps_to(9)
    assert stream.getvalue() == ""  # nothing per step

    run.steps_to(10)
    clock.now = 41.0
    run.log({"loss": 1.25, "learning_rate": 1e-5, "num_tokens": 4100})
    # 4100 tokens in 41 s since on_train_begin = 100/s; 41 s / 10 steps * 30 steps left = 123 s
    assert stream.getvalue() == "step 10/40 (25%) | loss 1.2500 | 100 tokens/s | ETA 2m03s\n"

    run.steps_to(20)
    clock.now = 43.0
    run.log({"loss": 0.5, "rewards/accuracies": 0.75, "num_tokens": 5100})
    # 1000 tokens over the 2 s since the previous log = 500/s; 43 s / 20 steps * 20 steps left = 43 s
    run.log({"eval_loss": 0.712, "eval_rewards/accuracies": 0.8, "eval_runtime": 3.0, "epoch": 0.5})
    run.steps_to(40)
    clock.now = 90.0
    run.log({"train_runtime": 90.0, "train_loss": 0.8, "epoch": 1.0})  # the summary log prints nothing
    run.end()
    assert stream.getvalue().splitlines()[1:] == [
        "step 20/40 (50%) | loss 0.5000 | accuracy 0.750 | 500 tokens/s | ETA 43s",
        "eval step 20/40 | loss 0.7120 | accuracy 0.800",
    ]


def test_plain_lines_after_resume_without_token_count(args):
    stream, clock = io.StringIO(), Clock()
    clock.now = 1000.0
    run = Run(Progress(stream, clock), args, TrainerState(max_steps=40, global_step=30))
    run.begin()
    run.steps_to(35)
    clock.now = 1010.0
    run.log({"loss": 0.25})
    # 5 steps since the resume at step 30 took 10 s, 5 left: 10 s; 35/40 = 87.5%
    assert stream.getvalue() == "step 35/40 (87%) | loss 0.2500 | ETA 10s\n"


def test_tokens_per_second_needs_two_counts_in_a_row(args):
    stream, clock = io.StringIO(), Clock()
    run = Run(Progress(stream, clock), args, TrainerState(max_steps=100))
    run.begin()
    for step, now, logs in [
        (10, 10.0, {"loss": 1.0}),
        (20, 20.0, {"loss": 1.0, "num_tokens": 3000}),  # no count at the previous log: rate unknown
        (30, 25.0, {"loss": 1.0, "num_tokens": 4000}),  # 1000 tokens in 5 s
    ]:
        run.steps_to(step)
        clock.now = now
        run.log(logs)
    assert [line.split(" | ")[2:] for line in stream.getvalue().splitlines()] == [
        ["ETA 1m30s"],  # 10 s / 10 steps * 90 left
        ["ETA 1m20s"],  # 20 s / 20 steps * 80 left
        ["200 tokens/s", "ETA 58s"],  # 25 s / 30 steps * 70 left = 58.3 s
    ]


@pytest.mark.parametrize("tty", [False, True])
def test_only_main_process_prints(args, tty):
    stream = TtyIO() if tty else io.StringIO()
    state = TrainerState(max_steps=4)
    state.is_world_process_zero = False
    run = Run(Progress(stream, Clock()), args, state)
    run.begin()
    run.steps_to(2)
    run.log({"loss": 1.0, "num_tokens": 100})
    run.log({"eval_loss": 1.0})
    run.end()
    assert stream.getvalue() == ""


def test_tty_bar(args):
    stream, clock = TtyIO(), Clock()
    run = Run(Progress(stream, clock), args, TrainerState(max_steps=4))
    run.begin()
    run.steps_to(2)
    clock.now = 2.0
    run.log({"loss": 0.5, "num_tokens": 1000})  # 1000 tokens in 2 s
    run.log({"eval_loss": 0.712, "eval_rewards/accuracies": 0.8})
    run.steps_to(4)
    run.end()
    out = stream.getvalue()
    final_bar = out.replace("\r", "\n").strip().splitlines()[-1]
    assert "4/4" in final_bar
    assert "loss 0.5000 | 500 tokens/s" in final_bar
    # the eval result is a line of its own; training logs are only in the bar, never a plain line
    assert "\neval step 2/4 | loss 0.7120 | accuracy 0.800\n" in out.replace("\r", "\n")
    assert "step 2/4 (50%)" not in out
    assert "ETA" not in out  # tqdm shows its own remaining time


@pytest.mark.parametrize(
    "seconds, text",
    [(0, "0s"), (45, "45s"), (59.4, "59s"), (59.6, "1m00s"), (123, "2m03s"), (3599, "59m59s"), (3720, "1h02m")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text
