"""Stage 2 of bench/gpu_run.sh: on CUDA, this tool's first-step ORPO loss against TRL's ORPOTrainer, per layout.

    python bench/gpu_correctness.py        (PYTHONPATH holding src and bench)

A tiny Qwen2-layout model (random weights, the bench's word tokenizer, so TRL sees exactly our token ids) and one
batch of 8 pairs with the GPU bench's lengths (prompts 32-256, completions 32-512). In fp32 (TF32 off) and under
bf16 autocast with fp32 weights (what `--mixed-precision bf16` runs), the loss of:
- TRL's ORPOTrainer (`get_batch_loss_metrics`, its padded layout, sdpa), the reference;
- ours padded (sdpa), packed with the dense sdpa mask, packed with flex_attention (a BlockMask), and packed varlen
  (flash_attention_2) when flash-attn is installed.
fp32 must agree to 1e-4 relative, bf16 to 2e-2 (bf16 rounding; the two sides round differently). Then, in fp32, the
gradients of packed flex against padded sdpa (flex cannot run backward on CPU, so this is its first backward
check), and the dtypes each attention kernel receives under bf16 autocast (one dtype for q, k and v).
Each check prints one `RESULT` line as it ends; the exit code is the number of failed checks.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import tempfile
import time
import traceback

import orpo_bench as ob
import torch

TINY = ob.Size(model=dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          intermediate_size=352, vocab_size=2048),
               pairs=8, prompt=(32, 256), completion=(32, 512), warmup=0, steps=1, bf16=False, our_attn="sdpa")
TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2}
failed = 0


def result(name: str, ok: bool, text: str) -> None:
    global failed
    failed += not ok
    print(f"RESULT {name}: {text}: {'ok' if ok else 'FAILED'}", flush=True)


def autocast(precision: str):
    return torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def on(device: torch.device, batch: dict) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def layouts() -> list[tuple[str, str, bool]]:
    """(name, attn_implementation, packing)."""
    out = [("padded sdpa", "sdpa", False), ("packed sdpa dense mask", "sdpa", True),
           ("packed flex", "flex_attention", True)]
    if importlib.util.find_spec("flash_attn") is not None:
        out.append(("packed varlen flash_attention_2", "flash_attention_2", True))
    else:
        print("RESULT packed varlen: skipped (flash-attn not installed)", flush=True)
    return out


def losses(device: torch.device, pairs: list[dict], text, tok) -> None:
    from autotrain.model.kernels import make_collator
    from autotrain.train.methods.orpo import orpo_step

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    batch = pairs[: TINY.pairs]
    for precision in ("fp32", "bf16"):
        with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
            ref = ob.build_model(TINY, "sdpa", device).eval()
            trainer = ob.trl_trainer(ref, TINY, text, tok, tmp, True, gc_on=False)
            rows = [trainer.train_dataset[i] for i in range(TINY.pairs)]
            with autocast(precision):
                trl, _ = trainer.get_batch_loss_metrics(ref, trainer._prepare_inputs(trainer.data_collator(rows)))
            trl = trl.item()
            del trainer, ref
            for name, attn, packing in layouts():
                try:
                    model = ob.build_model(TINY, attn, device).eval()
                    collate = make_collator(packing, ob.PAD, prompt_loss=True, model=model)
                    start = time.perf_counter()
                    with autocast(precision):
                        ours = orpo_step(model, on(device, collate(batch)), 0.1)[0].item()
                    seconds = time.perf_counter() - start
                    gap = abs(ours - trl) / abs(trl)
                    result(f"loss {name} {precision}", gap <= TOLERANCE[precision],
                           f"ours {ours:.6f}, TRL {trl:.6f}, {gap:.1e} relative (first call {seconds:.1f} s)")
                except Exception as exc:  # noqa: BLE001 - one layout's failure must not hide the others
                    result(f"loss {name} {precision}", False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


def gradients(device: torch.device, pairs: list[dict]) -> None:
    """fp32: d loss / d weights of packed flex against padded sdpa, largest difference relative to each tensor."""
    from autotrain.model.kernels import make_collator
    from autotrain.train.methods.orpo import orpo_step

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    grads = {}
    for name, attn, packing in (("padded sdpa", "sdpa", False), ("packed flex", "flex_attention", True)):
        model = ob.build_model(TINY, attn, device)
        model.train()
        batch = on(device, make_collator(packing, ob.PAD, prompt_loss=True, model=model)(pairs[: TINY.pairs]))
        start = time.perf_counter()
        orpo_step(model, batch, 0.1)[0].backward()
        torch.cuda.synchronize()
        print(f"  {name}: forward + backward {time.perf_counter() - start:.1f} s (compile included)", flush=True)
        grads[name] = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
    worst = max(((a - grads["padded sdpa"][k]).abs().max() / grads["padded sdpa"][k].abs().max().clamp(min=1e-30)).item()
                for k, a in grads["packed flex"].items())
    result("gradients packed flex vs padded sdpa fp32", worst <= 1e-3, f"largest difference {worst:.1e} of the tensor's scale")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


def kernel_dtypes(device: torch.device, pairs: list[dict]) -> None:
    """Under bf16 autocast with fp32 weights, the q/k/v dtypes torch's kernels receive from transformers (spied at
    torch's sdpa and at transformers' call into the compiled flex_attention, past autotrain's casting wrappers)."""
    import transformers.integrations.flex_attention as hf_flex

    from autotrain.model.kernels import make_collator
    from autotrain.train.methods.orpo import orpo_step

    seen: set[tuple[str, str, str]] = set()
    sdpa, flex = torch.nn.functional.scaled_dot_product_attention, hf_flex.compile_friendly_flex_attention

    def spy(kernel):
        def call(query, key, value, *args, **kwargs):
            seen.add((str(query.dtype), str(key.dtype), str(value.dtype)))
            return kernel(query, key, value, *args, **kwargs)
        return call

    torch.nn.functional.scaled_dot_product_attention = spy(sdpa)
    hf_flex.compile_friendly_flex_attention = spy(flex)
    try:
        for attn in ("sdpa", "flex_attention"):
            seen.clear()
            try:
                model = ob.build_model(TINY, attn, device)
                batch = on(device, make_collator(True, ob.PAD, prompt_loss=True, model=model)(pairs[: TINY.pairs]))
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    orpo_step(model, batch, 0.1)[0].backward()
                result(f"kernel dtypes {attn} under bf16 autocast", bool(seen) and all(len(set(d)) == 1 for d in seen),
                       f"q, k, v dtypes seen: {sorted(seen)}")
            except Exception as exc:  # noqa: BLE001
                result(f"kernel dtypes {attn} under bf16 autocast", False,
                       f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    finally:
        torch.nn.functional.scaled_dot_product_attention, hf_flex.compile_friendly_flex_attention = sdpa, flex


def main() -> int:
    if not torch.cuda.is_available():
        print("STOP gpu_correctness: no CUDA device visible (this stage and the ones after it need one)", flush=True)
        return 1
    device = torch.device("cuda")
    pairs = ob.make_pairs(TINY, 2 * TINY.pairs)
    from datasets import Dataset

    text, tok = Dataset.from_list(ob.as_text(pairs)), ob.word_tokenizer(TINY.model["vocab_size"])
    for check in (lambda: losses(device, pairs, text, tok), lambda: gradients(device, pairs),
                  lambda: kernel_dtypes(device, pairs)):
        try:
            check()
        except Exception:  # noqa: BLE001 - report and go on
            traceback.print_exc()
            result("check", False, traceback.format_exc().strip().splitlines()[-1])
    return failed


if __name__ == "__main__":
    sys.exit(main())
