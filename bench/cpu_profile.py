"""Where one optimizer step of the newcomer's CPU workloads spends its time (BENCHMARKS.md), ours only.

    python bench/cpu_profile.py                      # lora, lora --no-packing, full; one profiled step each
    python bench/cpu_profile.py --threads 1 --workloads lora

Each workload of bench/cpu_bench.py runs through the tool's own run; torch.profiler records its step 3 (steps 1 and 2
warm up; a full fine-tune runs its epochs until then): the collation of the step's micro-batches, their forward and
backward, gradient clipping, the optimizer step and the Trainer's bookkeeping. Each operator's own time goes to one
line:
- matmuls of the decoder's weights, of the LoRA adapters (a dimension equal to the rank) and of the LM head (a
  dimension equal to the vocabulary), with the rate they ran at (their FLOPs from the recorded shapes);
- attention (SDPA forward and backward), the head's other work (log-sum-exp, its gradient), other operators
  (norms, activations, rotary, LoRA's scaling, copies);
- the optimizer step, zero_grad and gradient clipping; data: the collator;
- Python, autograd and Trainer overhead: the step's wall time minus every operator's own time.
The step's useful GFLOP/s (bench/cpu_bench.py's count, for the step's own micro-batches) is set against the matmul
rate measured at the workload's shapes in the same process just before. The profiler itself adds a few percent,
mostly to the overhead line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_bench import prepare, useful_flops, matmul_rate, our_params  # noqa: E402

PROFILED_STEP = 3
SCOPES = {"collate": "data: collation", "Optimizer.": "optimizer step and zero_grad", "clip_grad": "gradient clipping"}


class StepProfile(TrainerCallback):
    def __init__(self) -> None:
        self.prof: Any = None
        self.wall = 0.0
        self._start = 0.0

    def on_step_end(self, args, state, control, **kwargs):  # noqa: D102
        if state.global_step == PROFILED_STEP - 1:
            self.prof = profile(activities=[ProfilerActivity.CPU], record_shapes=True)
            self.prof.__enter__()
            self._start = time.perf_counter()
        elif state.global_step == PROFILED_STEP and self.prof is not None:
            self.wall = time.perf_counter() - self._start
            self.prof.__exit__(None, None, None)


def labelled(fn: Any, name: str) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with record_function(name):
            return fn(*args, **kwargs)
    return wrapper


def profile_step(workload: str, extra: dict[str, Any], root: Path) -> tuple[StepProfile, list[list[dict]]]:
    """One run of ours whose step PROFILED_STEP is profiled; the features of the micro-batches of that step."""
    from autotrain.model import kernels
    from autotrain.project import _trial

    seen: list[dict] = []
    recorder = StepProfile()
    make = kernels.make_collator

    def make_labelled(*args: Any, **kwargs: Any) -> Any:
        collate = make(*args, **kwargs)

        def run(features: list[dict]) -> dict:
            with record_function("collate"):
                batch = collate(features)
            if recorder.prof is not None and not recorder.wall:
                seen.append(features)
            return batch
        return run

    clip = torch.nn.utils.clip_grad_norm_
    kernels.make_collator, torch.nn.utils.clip_grad_norm_ = make_labelled, labelled(clip, "clip_grad")
    try:
        epochs = {"epochs": PROFILED_STEP + 1} if workload == "full" else {}
        params = our_params(workload, root / f"p-{len(os.listdir(root))}", {**epochs, **extra})
        _trial(params, (recorder,))
    finally:
        kernels.make_collator, torch.nn.utils.clip_grad_norm_ = make, clip
    return recorder, seen


def categorize(recorder: StepProfile, vocab: int, rank: int) -> tuple[Counter, dict[str, float]]:
    seconds: Counter = Counter()
    mm_flops: Counter = Counter()
    def scope_of(event: Any) -> str | None:
        return next((label for key, label in SCOPES.items() if event.name.startswith(key)), None)

    for event in recorder.prof.events():
        scope, parent = scope_of(event), event.cpu_parent
        if scope is not None:  # a labelled region: all its time, Python included, the outermost one only
            while parent is not None and scope_of(parent) is None:
                parent = parent.cpu_parent
            if parent is None:
                seconds[scope] += event.cpu_time_total / 1e6
            continue
        if not event.name.startswith("aten::"):
            continue
        while parent is not None and scope_of(parent) is None:
            parent = parent.cpu_parent
        if parent is not None:  # counted with its region
            continue
        own = event.self_cpu_time_total / 1e6
        shapes = [s for s in (event.input_shapes or []) if s]
        if event.name in ("aten::mm", "aten::addmm", "aten::bmm"):
            kind = "LM head" if any(vocab in s for s in shapes) else "LoRA adapters" if any(
                rank in s for s in shapes) and rank else "decoder weights"
            seconds[f"matmul: {kind}"] += own
            a, b = shapes[-2], shapes[-1]
            mm_flops[f"matmul: {kind}"] += 2 * a[-2] * a[-1] * b[-1] * (a[0] if len(a) == 3 else 1)
        elif "scaled_dot_product" in event.name:
            seconds["attention (SDPA)"] += own
        elif any(vocab in s for s in shapes):
            seconds["LM head: log-sum-exp and its gradient"] += own
        else:
            seconds["other operators (norms, activations, rotary, copies)"] += own
    rates = {k: mm_flops[k] / seconds[k] / 1e9 for k in mm_flops if seconds[k]}
    return seconds, rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["lora", "padded", "full"],
                        choices=["lora", "padded", "full"])
    parser.add_argument("--threads", type=int, default=None)
    cli = parser.parse_args()
    if cli.threads:
        torch.set_num_threads(cli.threads)
    logging.getLogger("autotrain").setLevel(logging.WARNING)
    from autotrain.model.kernels import make_collator

    root = Path(tempfile.mkdtemp(prefix="cpu-profile-"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.1f}")
    for name in cli.workloads:
        workload = "lora" if name == "padded" else name
        prep = prepare(workload, root)
        _, sizes = useful_flops(prep)
        rate, _ = matmul_rate(prep, sizes)
        recorder, features = profile_step(workload, {"packing": False} if name == "padded" else {}, root)
        # The profiled step's own micro-batches, counted as packed (the prompt once) whatever the layout ran.
        collate = make_collator(True, prep.tokenizer.pad_token_id, prep.params.nll_on_prompt)
        prep.batches = batches = [collate(f) for f in features]
        prep.params = our_params(workload, root / "x", {"epochs": 1})
        step_flops, _ = useful_flops(prep)
        seconds, rates = categorize(recorder, sizes["vocab"], prep.params.lora_r if prep.params.peft else 0)
        seconds["Python, autograd and Trainer overhead"] = recorder.wall - sum(seconds.values())
        achieved = step_flops / recorder.wall / 1e9
        print(f"\n{name}: step {PROFILED_STEP}, {len(batches)} micro-batches, "
              f"{sum(b['num_real_tokens'] for b in batches)} real tokens (packed); wall {recorder.wall:.2f} s; "
              f"useful {achieved:.1f} GFLOP/s = {achieved / rate:.0%} of the matmul rate ({rate:.1f} GFLOP/s at "
              f"its shapes); load average {os.getloadavg()[0]:.1f}")
        print("| where | s | share | rate inside (GFLOP/s) |\n|---|---|---|---|")
        for key, value in seconds.most_common():
            inside = f"{rates[key]:.1f}" if key in rates else ""
            print(f"| {key} | {value:.3f} | {value / recorder.wall:.0%} | {inside} |")


if __name__ == "__main__":
    main()
