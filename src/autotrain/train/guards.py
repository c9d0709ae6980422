"""What must stop a run rather than train silently wrong: a non-finite loss always; a non-finite gradient unless an fp16
loss scaler will skip the step (its ordinary overflow step), and even then once the scale has fallen to MIN_LOSS_SCALE
(the scaler cannot help any more)."""

from __future__ import annotations

# An fp16 overflow at this loss scale or below stops the run: the scaled gradients overflow although the loss is no
# longer scaled up, so halving the scale again cannot help (DeepSpeed's default min_loss_scale is also 1).
MIN_LOSS_SCALE = 1.0


def step_problem(loss_finite: bool, grad_finite: bool, loss_scale: float | None) -> str | None:
    """Why the coming optimizer step must stop the run, or None.

    `loss_scale` is the current scale of an enabled fp16 loss scaler (torch's GradScaler), None without one. With a
    scaler, a non-finite gradient with a finite loss is an overflow of the scaled gradients: the scaler skips that
    step and halves its scale, which is how it finds its scale, so the run goes on, until the scale reaches
    MIN_LOSS_SCALE.
    """
    if not loss_finite:
        return "non-finite loss"
    if grad_finite:
        return None
    if loss_scale is None:
        return "non-finite gradient"
    if loss_scale <= MIN_LOSS_SCALE:
        return f"fp16 gradients overflow even at loss scale {loss_scale:g} (the scaler cannot lower it further)"
    return None


def stop_message(problem: str, step: int, last_checkpoint: str | None, applied: bool) -> str:
    """The one-line error for a stopped step. `applied`: the optimizer had already stepped (DeepSpeed steps inside
    backward), so the weights in memory cannot be trusted; otherwise the step was refused before it ran."""
    state = ("DeepSpeed had already applied this step inside backward, so the weights in memory are not trusted"
             if applied else "the weights were not updated")
    last = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was saved yet"
    hint = "try a lower --lr, or bf16/fp32" if "fp16" in problem else "try a lower --lr or fp32"
    return f"{problem} at step {step}; {state} and no final model was saved; {last} ({hint})"
