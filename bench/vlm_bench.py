"""This project's DPO step on a vision-language model against TRL's DPOTrainer vision path, in one process, on the
same model, images and pairs.

    python bench/vlm_bench.py            # a Qwen2-VL layout scaled down; CPU, fp32; ~10 minutes on 2 cores

The layout is a VLM's: each prompt holds one image of 256 or 144 image tokens (448 or 336 pixels square, Qwen2-VL's
one token per 28 x 28 pixels) and a short question, each answer a few words. Both sides run inside transformers'
Trainer (same optimizer, learning rate, seed and order of pairs), a full fine-tune of the language model with the
vision encoder frozen on both sides (this project's default; TRL trains what is not frozen), a frozen reference
model (a copy with other weights, so that the first-batch losses differ from log 2):
- TRL: trl.DPOTrainer with its vision collator (DataCollatorForVisionPreference: the prompt and its image in the
  chosen row and again in the rejected row, so the vision encoder reads every image twice), gradient checkpointing
  on (its default);
- ours: MethodTrainer with --trainer dpo, the images through this project's data stage and its vision collator,
  packed (the prompt and its image once per pair) and padded.

Reported per run: real tokens/s (the non-padding tokens of the two scored sequences of each pair, image tokens
included: 2 * prompt + chosen + rejected, the same numerator on both sides), seconds per step and the peak RSS growth
during training (weights excluded: optimizer state, activations, pixel values); and the first-batch loss of each.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tiny-model builder of the tests

import torch  # noqa: E402
import transformers  # noqa: E402
from orpo_bench import Counting, Result, RssPeak, StepClock, checkpointing, cpu_name, release_memory  # noqa: E402

PAIRS, WARMUP, STEPS = 8, 1, 3
TEXT = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "mrope_section": [16, 8, 8], "rope_theta": 10000.0})
VISION = dict(depth=4, embed_dim=128, hidden_size=256, num_heads=4, mlp_ratio=4)
SIDES = (448, 336)  # image sizes in pixels: 256 and 144 image tokens
WORDS = "red blue green cat dog tree house car boat sky sea sun moon road bird".split()


def make_data(folder: Path, count: int) -> list[dict]:
    """`count` pairs, each with an image file of its own (random pixels) and short answers."""
    from PIL import Image

    rng = random.Random(0)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for i in range(count):
        side = SIDES[i % 2]
        pixels = torch.randint(0, 256, (side, side, 3), generator=generator, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"img{i}.png")
        phrase = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
        rows.append({"id": i, "prompt": f"What is in picture {i}? Answer briefly.", "images": [f"img{i}.png"],
                     "chosen": f"A {phrase(rng.randint(2, 5))}.", "rejected": f"Maybe {phrase(rng.randint(2, 5))}."})
    return rows


def trl_rows(rows: list[dict], folder: Path) -> Any:
    from datasets import Dataset
    from PIL import Image

    def conversation(row: dict) -> dict:
        return {"id": row["id"], "images": [Image.open(folder / name).convert("RGB") for name in row["images"]],
                "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": row["prompt"]}]}],
                "chosen": [{"role": "assistant", "content": [{"type": "text", "text": row["chosen"]}]}],
                "rejected": [{"role": "assistant", "content": [{"type": "text", "text": row["rejected"]}]}]}

    return Dataset.from_list([conversation(row) for row in rows])


def load(folder: Path) -> torch.nn.Module:
    """A model as each side trains it: fp32, the vision encoder frozen."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    model.model.visual.requires_grad_(False)
    model.config.use_cache = False
    return model


def common_args(out: str) -> dict[str, Any]:
    return dict(output_dir=out, per_device_train_batch_size=PAIRS, max_steps=WARMUP + STEPS, logging_steps=10**6,
                save_strategy="no", report_to=[], disable_tqdm=True, seed=0, data_seed=0, bf16=False, use_cpu=True,
                dataloader_num_workers=0, remove_unused_columns=False, **checkpointing(transformers.TrainingArguments,
                                                                                          True))


def timed(name: str, make: Callable[[str], tuple[Any, Counting]]) -> Result:
    release_memory()
    result = Result(name)
    with tempfile.TemporaryDirectory() as out:
        trainer, counter = make(out)
        clock = StepClock(cuda=False)
        trainer.add_callback(clock)
        with RssPeak() as rss:
            trainer.train()
        result.peak_gib = (rss.peak - rss.base) / 2**30
        seconds = clock.ends[-1] - clock.ends[WARMUP - 1]
        result.tokens_per_s = sum(counter.tokens[WARMUP : WARMUP + STEPS]) / seconds
        result.step_s, result.warmup_s = seconds / STEPS, clock.ends[WARMUP - 1] - clock.start
    del trainer
    release_memory()
    print(f"  {name}: {result.tokens_per_s:,.0f} real tokens/s, {result.step_s:.1f} s/step, peak "
          f"{result.peak_gib:.2f} GiB", flush=True)
    return result


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    import trl
    from trl import DPOConfig, DPOTrainer
    from vision_models import make_vlm_dir

    from autotrain.data.prepare import prepare_data
    from autotrain.model import vision
    from autotrain.model.forward import sequence_logps
    from autotrain.model.loading import load_config
    from autotrain.params import LLMTrainingParams, methods
    from autotrain.train.trainer import MethodTrainer

    print(f"cpu: {cpu_name()}, {torch.get_num_threads()} threads; torch {torch.__version__}, transformers "
          f"{transformers.__version__}, trl {trl.__version__}")
    print(f"Qwen2-VL layout: text {TEXT}, vision {VISION}; {PAIRS} pairs/step, one image each of {SIDES} pixels; "
          f"{WARMUP} warm-up + {STEPS} timed steps", flush=True)
    root = Path(tempfile.mkdtemp(prefix="vlm-bench-"))
    policy_dir = make_vlm_dir(root / "policy", "qwen2_vl", text=TEXT, vision=VISION, max_pixels=max(SIDES) ** 2)
    reference_dir = make_vlm_dir(root / "reference", "qwen2_vl", seed=1, text=TEXT, vision=VISION,
                                 max_pixels=max(SIDES) ** 2)
    rows = make_data(root, PAIRS * (WARMUP + STEPS))
    (root / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    params = LLMTrainingParams(model=str(policy_dir), data_path=str(root / "pairs.jsonl"), image_column="images",
                               trainer="dpo", max_prompt_length=1024, project_name=str(root / "unused"))
    processor = vision.processor_for(params, str(policy_dir), load_config(str(policy_dir), False))
    ours = prepare_data(params, processor.tokenizer, 4096, processor=processor).train.dataset
    count = {row["id"]: 2 * len(f["prompt_ids"]) + len(f["chosen_ids"]) + len(f["rejected_ids"])
             for row, f in zip(rows, ours)}
    ours = ours.add_column("id", [row["id"] for row in rows])
    theirs = trl_rows(rows, root)
    print(f"real tokens per pair: {min(count.values())}-{max(count.values())} (2 x prompt + answers)", flush=True)
    defaults = DPOConfig(output_dir=str(root), use_cpu=True, bf16=False)

    def trl_trainer(out: str) -> Any:
        args = DPOConfig(**common_args(out), beta=0.1, max_length=None, optim=defaults.optim,
                         learning_rate=defaults.learning_rate)
        return DPOTrainer(model=load(policy_dir), ref_model=load(reference_dir), args=args, train_dataset=theirs,
                          processing_class=processor)

    def our_trainer(out: str, packing: bool) -> tuple[Any, Counting]:
        model = load(policy_dir)
        run = params.model_copy(update={"packing": packing})
        counter = Counting(vision.collator(run, processor, model), lambda row: count[row["id"]])
        args = transformers.TrainingArguments(**common_args(out), optim=defaults.optim,
                                              learning_rate=defaults.learning_rate)
        return MethodTrainer(model=model, args=args, train_dataset=ours, data_collator=counter, method="dpo",
                             beta=0.1, ref_model=load(reference_dir)), counter

    print("first-batch loss (fp32):", flush=True)
    with tempfile.TemporaryDirectory() as out, torch.no_grad():
        trainer = trl_trainer(out)
        trl_loss = trainer.compute_loss(trainer.model.eval(), trainer.data_collator([theirs[i] for i in range(PAIRS)]))
        policy, reference = trainer.model, trainer.ref_model
        losses = {"TRL DPOTrainer": trl_loss.item()}
        for packing in (True, False):
            batch = vision.collator(params.model_copy(update={"packing": packing}), processor, policy)(
                [ours[i] for i in range(PAIRS)])
            loss, _ = methods.load("dpo").step(policy, batch, 0.1, lambda b: sequence_logps(reference, b).sums)
            losses[f"ours, {'packed' if packing else 'padded'}"] = loss.item()
        del trainer, policy, reference
    for name, value in losses.items():
        print(f"  {name}: {value:.6f}")

    def trl_run(out: str) -> tuple[Any, Counting]:
        trainer = trl_trainer(out)
        trainer.data_collator = Counting(trainer.data_collator, lambda row: count[row["id"]])
        return trainer, trainer.data_collator

    print(f"timed runs (load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs):", flush=True)
    results = [timed("TRL DPOTrainer (vision collator, checkpointing on)", trl_run),
               timed("ours, packed (checkpointing on)", lambda out: our_trainer(out, True)),
               timed("ours, padded (checkpointing on)", lambda out: our_trainer(out, False))]
    print("\n| run | real tokens/s | s/step | peak RSS growth GiB |\n|---|---|---|---|")
    for r in results:
        print(f"| {r.name} | {r.tokens_per_s:,.0f} | {r.step_s:.1f} | {r.peak_gib:.2f} |")
    print(f"load average after the runs: {os.getloadavg()[0]:.2f} (1 min), {os.getloadavg()[1]:.2f} (5 min)")
    print(f"ours packed / TRL: {results[1].tokens_per_s / results[0].tokens_per_s:.2f}x tokens/s, "
          f"{results[1].peak_gib / max(results[0].peak_gib, 1e-9):.2f}x peak memory")


if __name__ == "__main__":
    main()
