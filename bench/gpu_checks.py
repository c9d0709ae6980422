"""The scale-out GPU checks, in one go, on one CUDA GPU (results go to ../BENCHMARKS.md):

    python bench/gpu_checks.py --out /tmp/gpu-checks

1. QLoRA: ORPO with `--quantization int4 --peft` on a Llama-3.2-1B-shaped model with random weights (hidden 2048,
   16 layers, 32 heads / 8 KV heads, intermediate 8192, vocab 128,256, tied embeddings), 8 pairs a step, prompts
   32-256 and completions 32-512 tokens (uniform), bf16 compute. Reports: it trained (finite, logged losses and a
   saved adapter), peak CUDA memory, real tokens/s; and the same run without quantization for comparison.
2. FSDP smoke: `--distributed-backend fsdp` with one process (AITRAINING_NUM_PROCESSES=1), LoRA and a full fine-tune
   of a small Llama, 3 steps each, through `AutoTrainProject.create()` (so through `accelerate launch`); reports
   that it finished and that the saved model loads and has the trained (not the initial) weights.

Needs: torch with CUDA, this package and its dependencies, and bitsandbytes. Every check runs even if an earlier
one failed; each prints one `RESULT` line, and the exit code is the number of failed checks.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import traceback
from pathlib import Path

import torch

LLAMA_32_1B = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                   intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0,
                   max_position_embeddings=4096)
SMALL = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=704, vocab_size=4096, tie_word_embeddings=False, max_position_embeddings=2048)


def build_model(folder: Path, shape: dict, dtype: torch.dtype) -> Path:
    """A random-weight Llama with a word-level tokenizer whose token i is the word 't<i>' (0 pad, 1 EOS)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(**shape, pad_token_id=0, eos_token_id=1, bos_token_id=1)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(folder)
    del model
    torch.cuda.empty_cache()
    words = {"<pad>": 0, "</s>": 1, **{f"t{i}": i for i in range(2, shape["vocab_size"])}}
    core = Tokenizer(models.WordLevel(words, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<pad>", pad_token="<pad>", eos_token="</s>")
    tokenizer.save_pretrained(folder)
    return folder


def write_pairs(path: Path, vocab: int, count: int, prompt: tuple[int, int], completion: tuple[int, int]) -> Path:
    rng = random.Random(0)
    words = lambda n: " ".join(f"t{rng.randrange(2, vocab)}" for _ in range(n))  # noqa: E731
    with path.open("w") as handle:
        for _ in range(count):
            row = {"prompt": words(rng.randint(*prompt)), "chosen": words(rng.randint(*completion) - 1),
                   "rejected": words(rng.randint(*completion) - 1)}
            handle.write(json.dumps(row) + "\n")
    return path


def train(model: Path, data: Path, project: Path, **overrides) -> tuple[dict, float, float]:
    """(last train record, peak CUDA GiB, wall seconds of create())."""
    from autotrain.project import AutoTrainProject
    from autotrain.trainers.clm.params import LLMTrainingParams

    settings = dict(model=str(model), data_path=str(data), project_name=str(project), chat_template="none",
                    batch_size=8, gradient_accumulation=1, logging_steps=1, lr=1e-4, warmup_ratio=0.0,
                    max_prompt_length=256, block_size=1024, mixed_precision="bf16")
    settings.update(overrides)
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = AutoTrainProject(params=LLMTrainingParams(**settings)).create()
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r and "train_runtime" not in r]
    if not steps or not all(map(lambda r: r["loss"] == r["loss"] and abs(r["loss"]) < 1e4, steps)):
        raise RuntimeError(f"no finite training losses logged: {steps}")
    last = steps[-1]
    return last, torch.cuda.max_memory_allocated() / 2**30, wall


STEPS = 20  # QLoRA steps (--steps)


def qlora(out: Path) -> str:
    model = build_model(out / "llama-1b", LLAMA_32_1B, torch.bfloat16)
    data = write_pairs(out / "pairs.jsonl", LLAMA_32_1B["vocab_size"], 160, (32, 256), (32, 512))
    lines = []
    for name, extra in (("int4", {"quantization": "int4"}), ("bf16 LoRA", {})):
        last, peak, wall = train(model, data, out / f"qlora-{name.split()[0]}", peft=True, lora_r=16, lora_alpha=32,
                                 max_steps=STEPS, **extra)
        rate = last["num_tokens"] / max(wall, 1e-9)
        lines.append(f"{name}: loss {last['loss']:.4f} at step {last['step']}, peak {peak:.2f} GiB, "
                     f"{last['num_tokens']} real tokens in {wall:.1f} s of create() ({rate:.0f}/s incl. load)")
    adapter = out / "qlora-int4" / "adapter" / "adapter_model.safetensors"
    if not adapter.exists():
        raise RuntimeError(f"{adapter} missing")
    return "; ".join(lines)


def fsdp(out: Path) -> str:
    from safetensors.torch import load_file

    os.environ["AITRAINING_NUM_PROCESSES"] = "1"
    model = build_model(out / "small", SMALL, torch.float32)
    data = write_pairs(out / "small.jsonl", SMALL["vocab_size"], 48, (8, 64), (8, 64))
    before = load_file(model / "model.safetensors")
    lines = []
    for name, extra in (("lora", {"peft": True}), ("full", {})):
        last, _, wall = train(model, data, out / f"fsdp-{name}", distributed_backend="fsdp", max_steps=3, **extra)
        after = load_file(out / f"fsdp-{name}" / "model.safetensors")
        moved = sum(not torch.equal(after[k], before[k]) for k in before if k in after)
        if moved == 0:
            raise RuntimeError(f"fsdp {name}: the saved weights equal the initial ones")
        lines.append(f"{name}: loss {last['loss']:.4f} after {last['step']} steps, {moved}/{len(before)} tensors "
                     f"changed, {wall:.1f} s")
    # The two paths CPU cannot show: --precompute-ref-logps runs in the Trainer's __init__, the model still on the
    # CPU (FSDP prepares it in train()) and the batches on CUDA; --sample-answers generates from the sharded model.
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    valid = out / "small-split"
    valid.mkdir(exist_ok=True)
    (valid / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:40]))
    (valid / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[40:]))
    last, _, wall = train(model, valid, out / "fsdp-dpo", distributed_backend="fsdp", max_steps=2, peft=True,
                          trainer="dpo", precompute_ref_logps=True, valid_split="validation", sample_answers=2)
    answers = (out / "fsdp-dpo" / "samples.jsonl").read_text().splitlines()
    if len(answers) != 2:
        raise RuntimeError(f"fsdp dpo: {len(answers)} sample answers written, 2 asked")
    lines.append(f"dpo + precompute + sample answers: loss {last['loss']:.4f} after {last['step']} steps, "
                 f"2 answers, {wall:.1f} s")
    return "; ".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/gpu-checks"))
    parser.add_argument("--only", choices=["qlora", "fsdp"], help="run one check")
    parser.add_argument("--steps", type=int, default=STEPS, help="QLoRA training steps")
    args = parser.parse_args()
    globals()["STEPS"] = args.steps
    if not torch.cuda.is_available():
        print("RESULT none: no CUDA GPU visible")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"card: {torch.cuda.get_device_name()}; torch {torch.__version__}", flush=True)
    failed = 0
    for name, check in (("qlora", qlora), ("fsdp", fsdp)):
        if args.only not in (None, name):
            continue
        try:
            print(f"RESULT {name} ok: {check(args.out)}", flush=True)
        except Exception:  # noqa: BLE001 - report and go on to the next check
            failed += 1
            traceback.print_exc()
            print(f"RESULT {name} FAILED: {traceback.format_exc().strip().splitlines()[-1]}", flush=True)
    return failed


if __name__ == "__main__":
    sys.exit(main())
