"""What the start-up kernel probe (autotrain.trainers.clm.kernel_probe) costs, against the training steps of the
bench's model in the same process (results go to ../BENCHMARKS.md):

    python bench/kernel_probe_cost.py --size cpu    # ~2 minutes on 2 CPU cores
    python bench/kernel_probe_cost.py --size gpu    # one CUDA GPU: Qwen2.5-0.5B shape, bf16 autocast (gpu_run.sh)
    python bench/kernel_probe_cost.py --calibrate ~/.cache/aitraining/smollm2-135m-instruct-*   # a trained model

`--calibrate MODEL` measures instead what the probe's tolerances (kernel_probe.tolerances) must allow: on three real
pairs, two correct paths, eager and SDPA in the packed layout, probed against SDPA padded, in fp32 and under bf16
autocast; each line gives the gaps next to the tolerances.

CPU: flex_attention's probe with its forward uncompiled (CPU flex has no backward: that raise is its finding, so the
probe ends there), and a probe that runs every pass (eager probed against SDPA, the same work a passing flex probe
does). GPU: flex_attention's probe under bf16 autocast, its first call (flex's compile included) and a second one,
and the same in fp32, with the gaps it measured (the tolerances' check on a GPU). Then the seconds of a training
step (8 pairs at the bench's lengths, packed, forward, backward and AdamW) on the kernel a run uses there, and the
probe's cost as a share of a 100-step run. One `RESULT` line each.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from typing import Any, Callable

import torch

import orpo_bench as ob



def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def autocast(device: torch.device, dtype: torch.dtype | None) -> Callable[[], Any]:
    return lambda: torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def step_seconds(size: ob.Size, attn: str, device: torch.device, pairs: list[dict], dtype: torch.dtype | None,
                 steps: int) -> tuple[float, float]:
    """Seconds of the first ORPO training step (a compile lands there, if the probe's did not serve) and the mean of
    `steps` steps after the size's warm-up steps."""
    from autotrain.data.kernels import make_collator
    from autotrain.methods.orpo import orpo_step

    model = ob.build_model(size, attn, device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    collate = make_collator(True, ob.PAD, prompt_loss=True, model=model)
    seconds = []
    for i in range(size.warmup + steps):
        batch = {k: v.to(device) if torch.is_tensor(v) else v
                 for k, v in collate(pairs[i * size.pairs : (i + 1) * size.pairs]).items()}
        start = time.perf_counter()
        with autocast(device, dtype)():
            loss = orpo_step(model, batch, 0.1)[0]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        seconds.append(time.perf_counter() - start)
    del model, optimizer
    return seconds[0], sum(seconds[size.warmup :]) / steps


def probe(name: str, size: ob.Size, attn: str, device: torch.device, pair: dict, dtype: torch.dtype | None,
          calls: int = 1, eager_flex: bool = False) -> list[float]:
    from autotrain.trainers.clm.kernel_probe import probe_kernel

    model = ob.build_model(size, attn, device)
    stance = torch.compiler.set_stance("force_eager") if eager_flex else contextlib.nullcontext()
    out = []
    with stance:
        for call in range(calls):
            sync(device)
            found = probe_kernel(model, pair, ob.PAD, True, device, dtype)
            out.append(found.seconds)
            print(f"RESULT probe {name} call {call + 1}: {found.seconds:.2f} s; "
                  f"{'passed' if found.problem is None else 'found: ' + found.problem}; log-prob gap "
                  f"{found.logp_gap if found.logp_gap is not None else '-'}, gradient gap "
                  f"{found.grad_gap if found.grad_gap is not None else '-'}", flush=True)
    del model
    return out


PAIRS = [("The capital of France is", " Paris, a city on the Seine.", " Berlin, which is in Germany."),
         ("Question: what is 12 times 11? Answer:", " 132, since 12*11 = 132.", " 121, because eleven squared."),
         ("def add(a, b):\n    ", "return a + b\n", "return a - b\n")]


def calibrate(path: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autotrain.trainers.clm.kernel_probe import probe_kernel, set_kernel, tolerances

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    cpu = torch.device("cpu")
    for prompt, chosen, rejected in PAIRS:
        pair = {"prompt_ids": tokenizer(prompt)["input_ids"], "chosen_ids": tokenizer(chosen)["input_ids"],
                "rejected_ids": tokenizer(rejected)["input_ids"]}
        for dtype in (None, torch.bfloat16):
            for attn in ("eager", "sdpa"):
                set_kernel(model, attn)
                found = probe_kernel(model, pair, tokenizer.pad_token_id or 0, True, cpu, dtype)
                logp, grad = tolerances(torch.finfo(dtype or torch.float32).eps, found.largest_logit)
                print(f"RESULT calibrate {attn} packed {'bf16' if dtype else 'fp32'} {prompt[:12]!r}: log-prob gap "
                      f"{found.logp_gap:.3g} (tolerance {logp:.3g}, largest logit {found.largest_logit:.1f}), "
                      f"gradient gap {found.grad_gap:.3g} (tolerance {grad:.3g})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--calibrate", metavar="MODEL", help="a trained model's folder: the tolerances' check")
    args = parser.parse_args()
    if args.calibrate:
        calibrate(args.calibrate)
        return
    cuda = args.size == "gpu"
    if cuda and not torch.cuda.is_available():
        print("STOP kernel_probe_cost: --size gpu needs a CUDA device", flush=True)
        raise SystemExit(1)
    device = torch.device("cuda" if cuda else "cpu")
    size = ob.SIZES[args.size]
    pairs = ob.make_pairs(size, size.pairs * (size.warmup + args.steps))
    from autotrain.trainers.clm.kernel_probe import probe_pair

    pair = probe_pair(pairs[0])
    print(f"load average {os.getloadavg()[0]:.1f}; {torch.get_num_threads()} threads" if not cuda else
          torch.cuda.get_device_name(0), flush=True)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        costs = probe("flex_attention bf16", size, "flex_attention", device, pair, torch.bfloat16, calls=2)
        probe("flex_attention fp32", size, "flex_attention", device, pair, None)
        first, step = step_seconds(size, "flex_attention", device, pairs, torch.bfloat16, args.steps)
        kernel = "flex_attention bf16"
    else:
        probe("flex_attention uncompiled", size, "flex_attention", device, pair, None, eager_flex=True)
        costs = probe("eager against sdpa", size, "eager", device, pair, None, calls=2)
        first, step = step_seconds(size, "sdpa", device, pairs, None, args.steps)
        kernel = "sdpa fp32"
    print(f"RESULT step {kernel}: {step:.2f} s (mean of {args.steps} after {size.warmup} warm-up); the first step "
          f"{first:.2f} s (after the probe, in the same process: a compile there is one the probe's did not spare)",
          flush=True)
    for call, seconds in enumerate(costs, 1):
        print(f"RESULT probe cost, call {call}: {seconds / (100 * step):.2%} of a 100-step run", flush=True)


if __name__ == "__main__":
    main()
