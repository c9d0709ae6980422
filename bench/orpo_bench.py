"""This project's ORPO step against TRL's ORPOTrainer, side by side in one process, on the same model and data.

    python bench/orpo_bench.py --size cpu     # a Qwen2.5-0.5B-layout model scaled down; a few minutes on 2 cores
    python bench/orpo_bench.py --size gpu     # Qwen2.5-0.5B shape, bf16 autocast, for one H100-class GPU
    python bench/orpo_bench.py --size cpu --family gemma2   # Gemma-2-2B layout scaled down: windows, softcapping

Both sides run inside transformers' Trainer (same optimizer, learning rate and seed: TRL's ORPOConfig defaults),
full fine-tune, random weights from a fixed seed, synthetic token ids with uniform lengths:
- TRL: trl.experimental.orpo.ORPOTrainer with its defaults (its own tokenization of the same token strings, its
  padded collator), gradient checkpointing on (its default) and off;
- ours: autotrain's MethodTrainer with the packed collator (autotrain.model.kernels.make_collator) and chunked
  log-probs, gradient checkpointing on and off; orpo_prompt_loss on, so the loss is TRL's (its NLL covers the prompt).

Reported per run:
- real tokens/s: the non-padding tokens of the two scored sequences of each pair, sum of (2 * prompt + chosen +
  rejected), over the wall time from the end of the last warm-up step to the end of the last step (data loading,
  collation, forward, backward, optimizer and Trainer overhead included). The same numerator for both sides, so the
  ratio is a ratio of step times;
- peak memory: CUDA max allocated during training (weights included); on CPU the peak RSS growth over the RSS
  before training, sampled every 5 ms (weights excluded, optimizer state and activations included);
- the loss of both on the first batch (fp32, no autocast, before training), and ours in the padded layout.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import platform
import random
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoConfig, TrainerCallback  # noqa: E402

PAD, EOS = 0, 1


@dataclass(frozen=True)
class Size:
    model: dict[str, Any]
    pairs: int  # per step
    prompt: tuple[int, int]  # token lengths, uniform, inclusive
    completion: tuple[int, int]
    warmup: int
    steps: int
    bf16: bool
    our_attn: str  # attn_implementation of our model
    notes: list[str] = field(default_factory=list)
    family: str = "qwen2"
    trl_attn: str = "sdpa"  # TRL's and our padded run's: transformers' default for the family


QWEN2 = dict(max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6, use_sliding_window=False)
QWEN25_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                  intermediate_size=4864, vocab_size=151936, **QWEN2)
# Gemma 2's own: alternating sliding (4096) and full layers, attention logits softcapped at 50, final logits at 30.
GEMMA2_2B = dict(hidden_size=2304, num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                 intermediate_size=9216, vocab_size=256000, query_pre_attn_scalar=256, sliding_window=4096,
                 attn_logit_softcapping=50.0, final_logit_softcapping=30.0, max_position_embeddings=8192)
_HALVED = "lengths halved from the anchor's prompts 32-256 / completions 32-512; fp32 (CPU)"
SIZES = {
    "cpu": Size(
        model=dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=1408, vocab_size=16384, **QWEN2),
        pairs=8, prompt=(16, 128), completion=(16, 256), warmup=2, steps=5, bf16=False, our_attn="sdpa",
        notes=["Qwen2 layout scaled down: head_dim 64, GQA, SwiGLU (intermediate ~5.5x hidden), tied embeddings; "
               "vocab 16384 keeps the LM head ~35% of the parameters (Qwen2.5-0.5B: 28%)",
               _HALVED]),
    "gpu": Size(model=QWEN25_05B, pairs=8, prompt=(32, 256), completion=(32, 512), warmup=3, steps=20, bf16=True,
                our_attn="flex_attention",
                notes=["Qwen2.5-0.5B shape; fp32 weights with bf16 autocast (Trainer bf16=True, TRL's default)"]),
    "cpu-gemma2": Size(
        model={**GEMMA2_2B, "hidden_size": 256, "num_hidden_layers": 6, "num_attention_heads": 4,
               "num_key_value_heads": 2, "head_dim": 64, "query_pre_attn_scalar": 64, "intermediate_size": 1024,
               "vocab_size": 16384, "sliding_window": 128},
        pairs=8, prompt=(16, 128), completion=(16, 256), warmup=2, steps=5, bf16=False, our_attn="eager",
        family="gemma2", trl_attn="eager",
        notes=["Gemma-2-2B layout scaled down: head_dim 64, GQA, GeGLU (intermediate 4x hidden), tied embeddings, "
               "softcaps 50 / 30, sliding and full layers alternating, the window scaled to 128 so that it binds",
               "eager attention on every side: Gemma 2 has no SDPA (SDPA cannot softcap)", _HALVED]),
    "gpu-gemma2": Size(model=GEMMA2_2B, pairs=8, prompt=(32, 256), completion=(32, 512), warmup=3, steps=20,
                       bf16=True, our_attn="flex_attention", family="gemma2", trl_attn="eager",
                       notes=["Gemma-2-2B shape, bf16 autocast; ours on flex_attention (softcap as its score_mod)"]),
}


def build_model(size: Size, attn: str, device: torch.device) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    config = AutoConfig.for_model(size.family, **size.model, tie_word_embeddings=True, pad_token_id=PAD,
                                  eos_token_id=EOS, bos_token_id=None, use_cache=False)
    torch.manual_seed(0)  # every run starts from the same weights
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32).to(device)


def make_pairs(size: Size, count: int) -> list[dict[str, list[int]]]:
    rng = random.Random(0)
    vocab = size.model["vocab_size"]
    draw = lambda n: [rng.randrange(2, vocab) for _ in range(n)]  # noqa: E731
    pairs = []
    for _ in range(count):
        # Completions end with EOS, so TRL (which appends EOS where it is missing) sees exactly these ids.
        pairs.append({"prompt_ids": draw(rng.randint(*size.prompt)),
                      "chosen_ids": draw(rng.randint(*size.completion) - 1) + [EOS],
                      "rejected_ids": draw(rng.randint(*size.completion) - 1) + [EOS]})
    return pairs


def real_tokens(f: dict[str, list[int]]) -> int:
    return 2 * len(f["prompt_ids"]) + len(f["chosen_ids"]) + len(f["rejected_ids"])


def word_tokenizer(vocab: int) -> Any:
    """Token i >= 2 is the word 't<i>': TRL tokenizes text, and this makes its ids exactly our synthetic ids.

    Pad and EOS get names no word starts with: special tokens are matched inside words before splitting."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": PAD, "</s>": EOS, **{f"t{i}": i for i in range(2, vocab)}}
    core = Tokenizer(models.WordLevel(words, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<pad>", pad_token="<pad>", eos_token="</s>")


def as_text(pairs: list[dict[str, list[int]]]) -> list[dict[str, str]]:
    words = lambda ids: " ".join("</s>" if i == EOS else f"t{i}" for i in ids)  # noqa: E731
    return [{"prompt": words(f["prompt_ids"]) + " ", "chosen": words(f["chosen_ids"]),
             "rejected": words(f["rejected_ids"])} for f in pairs]


class Counting:
    """Wraps a collator to record each batch's real tokens (batch i is step i: one micro-batch per step)."""

    def __init__(self, collate: Callable, count: Callable[[dict], int]):
        self.collate, self.count, self.tokens = collate, count, []

    def __call__(self, features: list[dict]) -> dict:
        self.tokens.append(sum(self.count(f) for f in features))
        return self.collate(features)


class StepClock(TrainerCallback):
    def __init__(self, cuda: bool):
        self.cuda, self.ends, self.start = cuda, [], 0.0

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: D102
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):  # noqa: D102
        if self.cuda:
            torch.cuda.synchronize()  # the bench's own sync, outside the measured code's logic
        self.ends.append(time.perf_counter())


class RssPeak:
    """Peak resident memory growth on CPU, sampled: RSS high-water marks cannot be reset within a process."""

    def __init__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif platform.system() == "Linux":
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back, so the next run's RSS baseline is honest


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def checkpointing(args_class: Any, enabled: bool) -> dict[str, Any]:
    """transformers 5 renamed gradient_checkpointing to activation_checkpointing; set whichever exists."""
    name = "activation_checkpointing" if "activation_checkpointing" in args_class.__dataclass_fields__ \
        else "gradient_checkpointing"
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False}}


def common_args(size: Size, out: str, cuda: bool) -> dict[str, Any]:
    return dict(output_dir=out, per_device_train_batch_size=size.pairs, max_steps=size.warmup + size.steps,
                logging_steps=10**6, save_strategy="no", report_to=[], disable_tqdm=True, seed=0, data_seed=0,
                bf16=size.bf16, use_cpu=not cuda, dataloader_num_workers=0, remove_unused_columns=False)


def trl_trainer(model: torch.nn.Module, size: Size, text: Any, tok: Any, out: str, cuda: bool, gc_on: bool) -> Any:
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    longest = size.prompt[1] + size.completion[1]
    args = ORPOConfig(**common_args(size, out, cuda), max_length=longest, **checkpointing(ORPOConfig, gc_on))
    return ORPOTrainer(model=model, args=args, train_dataset=text, processing_class=tok)


def our_trainer(model: torch.nn.Module, size: Size, pairs: Any, out: str, cuda: bool, gc_on: bool,
                optim: str, lr: float, collate: Callable) -> Any:
    from transformers import TrainingArguments

    from autotrain.train.trainer import MethodTrainer

    args = TrainingArguments(**common_args(size, out, cuda), optim=optim, learning_rate=lr,
                             **checkpointing(TrainingArguments, gc_on))
    return MethodTrainer(model=model, args=args, train_dataset=pairs, data_collator=collate, method="orpo",
                             beta=0.1)


@dataclass
class Result:
    name: str
    tokens_per_s: float = 0.0
    step_s: float = 0.0
    peak_gib: float = 0.0
    error: str = ""
    warmup_s: float = 0.0  # the warm-up steps: flex_attention's compilation lands here, apart from the timed steps


def timed_run(name: str, size: Size, device: torch.device, make: Callable[[torch.nn.Module, str], tuple[Any, Counting]],
              attn: str) -> Result:
    cuda = device.type == "cuda"
    release_memory()
    model = build_model(size, attn, device)
    result = Result(name)
    try:
        with tempfile.TemporaryDirectory() as out:
            trainer, counter = make(model, out)
            clock = StepClock(cuda)
            trainer.add_callback(clock)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
                trainer.train()
                result.peak_gib = torch.cuda.max_memory_allocated() / 2**30
            else:
                with RssPeak() as rss:
                    trainer.train()
                result.peak_gib = (rss.peak - rss.base) / 2**30
            seconds = clock.ends[-1] - clock.ends[size.warmup - 1]
            tokens = sum(counter.tokens[size.warmup : size.warmup + size.steps])
            result.tokens_per_s, result.step_s = tokens / seconds, seconds / size.steps
            result.warmup_s = clock.ends[size.warmup - 1] - clock.start
    except torch.cuda.OutOfMemoryError:
        result.error = "out of memory"
    except Exception as exc:  # one failed run must not cost the others on a rented GPU
        result.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    del model
    release_memory()
    print(f"  {name}: " + (result.error or f"{result.tokens_per_s:,.0f} real tokens/s, {result.step_s:.2f} s/step, "
                           f"peak {result.peak_gib:.2f} GiB; warm-up {result.warmup_s:.1f} s, compile included"),
          flush=True)
    return result


def first_batch_losses(size: Size, device: torch.device, pairs: list[dict], text: Any, tok: Any) -> dict[str, float]:
    """fp32, no autocast, TF32 off: TRL's loss, ours packed (the timed kernel) and ours padded on one batch."""
    from autotrain.batch.padded import PaddedCollator
    from autotrain.model.kernels import make_collator
    from autotrain.train.methods.orpo import orpo_step

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    batch = pairs[: size.pairs]
    out = {}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        ref = build_model(size, size.trl_attn, device).eval()
        trainer = trl_trainer(ref, size, text, tok, tmp, device.type == "cuda", gc_on=False)
        rows = [trainer.train_dataset[i] for i in range(size.pairs)]
        for f, row in zip(batch, rows):  # TRL's own tokenization must give our ids, or the bench compares nothing
            assert row["chosen_input_ids"] == f["prompt_ids"] + f["chosen_ids"], "TRL tokenized differently"
            assert row["rejected_input_ids"] == f["prompt_ids"] + f["rejected_ids"], "TRL tokenized differently"
        trl_loss, _ = trainer.get_batch_loss_metrics(ref, trainer._prepare_inputs(trainer.data_collator(rows)))
        out["TRL"] = trl_loss.item()
        padded = trainer._prepare_inputs(PaddedCollator(PAD, prompt_loss=True)(batch))
        out["ours, padded layout"] = orpo_step(ref, padded, 0.1)[0].item()
        del trainer, ref
        ours = build_model(size, size.our_attn, device).eval()
        collate = make_collator(True, PAD, prompt_loss=True, model=ours)
        packed = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate(batch).items()}
        out[f"ours, packed ({size.our_attn})"] = orpo_step(ours, packed, 0.1)[0].item()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["cpu", "gpu"], required=True)
    parser.add_argument("--family", choices=["qwen2", "gemma2"], default="qwen2")
    parser.add_argument("--steps", type=int, help="timed steps (default: per size)")
    parser.add_argument("--token-budget", type=int, help="tokens per packed row (default: autotrain's choice)")
    cli = parser.parse_args()
    size = SIZES[cli.size if cli.family == "qwen2" else f"{cli.size}-{cli.family}"]
    if cli.steps:
        size = Size(**{**size.__dict__, "steps": cli.steps})
    cuda = cli.size == "gpu"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--size gpu needs a CUDA GPU")
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        # flex_attention is compiled; each new packed-row width may recompile it (dims turn dynamic after the
        # second), and past dynamo's limit it would silently run unfused. Leave headroom.
        import torch._dynamo as dynamo

        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo.config, name):
                setattr(dynamo.config, name, max(64, getattr(dynamo.config, name)))
    import trl
    from datasets import Dataset

    from autotrain.model.kernels import make_collator

    card = torch.cuda.get_device_name() if cuda else f"{cpu_name()}, {torch.get_num_threads()} threads"
    print(f"card: {card}; torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}")
    print(f"size {cli.size}, {size.family}: model {size.model}; {size.pairs} pairs/step; "
          f"prompts {size.prompt[0]}-{size.prompt[1]}, "
          f"completions {size.completion[0]}-{size.completion[1]} tokens; "
          f"{size.warmup} warm-up + {size.steps} timed steps")
    for note in size.notes:
        print(f"  note: {note}")
    pairs = make_pairs(size, 2 * size.pairs * (size.warmup + size.steps + 1))  # enough for the 2x-pairs GPU run
    text = Dataset.from_list(as_text(pairs))
    tok = word_tokenizer(size.model["vocab_size"])

    print("first-batch loss (fp32):", flush=True)
    losses = first_batch_losses(size, device, pairs, text, tok)
    for name, value in losses.items():
        print(f"  {name}: {value:.6f}")
    spread = max(losses.values()) - min(losses.values())
    verdict = "ok" if spread <= 1e-4 * abs(losses["TRL"]) else "EQUIVALENCE CHECK FAILED (> 1e-4 relative)"
    print(f"  largest difference: {spread:.2e} ({spread / abs(losses['TRL']):.1e} relative): {verdict}", flush=True)

    from trl.experimental.orpo import ORPOConfig

    defaults = ORPOConfig(output_dir=tempfile.gettempdir(), use_cpu=not cuda, bf16=size.bf16)
    optim, lr = defaults.optim, defaults.learning_rate
    our_data = Dataset.from_list(pairs)

    def trl_run(gc_on: bool) -> Callable:
        def make(model: torch.nn.Module, out: str) -> tuple[Any, Counting]:
            trainer = trl_trainer(model, size, text, tok, out, cuda, gc_on)
            counter = Counting(trainer.data_collator, lambda row: len(row["chosen_input_ids"]) +
                               len(row["rejected_input_ids"]))
            trainer.data_collator = counter
            return trainer, counter
        return make

    def our_run(gc_on: bool, packing: bool = True, pairs_per_step: int = size.pairs) -> Callable:
        def make(model: torch.nn.Module, out: str) -> tuple[Any, Counting]:
            collate = make_collator(packing, PAD, True, model=model, token_budget=cli.token_budget)
            counter = Counting(collate, real_tokens)
            run_size = Size(**{**size.__dict__, "pairs": pairs_per_step})
            return our_trainer(model, run_size, our_data, out, cuda, gc_on, optim, lr, counter), counter
        return make

    # Other processes on a small CPU distort every number; the load average says whether any ran.
    print(f"timed runs (load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs):", flush=True)
    results = [
        timed_run("TRL ORPOTrainer, checkpointing on (default)", size, device, trl_run(True), size.trl_attn),
        timed_run("TRL ORPOTrainer, checkpointing off", size, device, trl_run(False), size.trl_attn),
        timed_run("ours, packed, checkpointing on", size, device, our_run(True), size.our_attn),
        timed_run("ours, packed, checkpointing off", size, device, our_run(False), size.our_attn),
        timed_run("ours, padded layout, checkpointing off", size, device, our_run(False, packing=False),
                  size.trl_attn),
    ]
    if cuda:  # the dense-mask kernel (what a model loaded with sdpa gets; Gemma 2 has none), and a larger batch
        results += [
            *[timed_run("ours, packed (sdpa dense mask), checkpointing off", size, device, our_run(False), "sdpa")
              for _ in range(size.trl_attn == "sdpa")],
            timed_run(f"ours, packed, {2 * size.pairs} pairs/step, checkpointing on", size, device,
                      our_run(True, pairs_per_step=2 * size.pairs), size.our_attn),
        ]
    print("\n| run | real tokens/s | s/step | peak " + ("GiB (CUDA max allocated)" if cuda else "RSS growth GiB")
          + " |\n|---|---|---|---|")
    for r in results:
        print(f"| {r.name} | {r.error or f'{r.tokens_per_s:,.0f}'} | {r.step_s:.2f} | {r.peak_gib:.2f} |")
    print(f"load average after the runs: {os.getloadavg()[0]:.2f} (1 min), {os.getloadavg()[1]:.2f} (5 min)")
    ok = [r for r in results if not r.error]
    trl_best = max((r for r in ok if r.name.startswith("TRL")), key=lambda r: r.tokens_per_s, default=None)
    ours_best = max((r for r in ok if "packed" in r.name), key=lambda r: r.tokens_per_s, default=None)
    if trl_best and ours_best:
        print(f"\nbest ours / best TRL: {ours_best.tokens_per_s / trl_best.tokens_per_s:.2f}x "
              f"({ours_best.name} vs {trl_best.name})")
        trl_default = next((r for r in ok if r.name.startswith("TRL") and "checkpointing on" in r.name), None)
        lean = [r for r in ok if "packed" in r.name and trl_default and r.peak_gib <= trl_default.peak_gib]
        if lean:
            best = max(lean, key=lambda r: r.tokens_per_s)
            print(f"best ours within TRL's default peak memory / best TRL: "
                  f"{best.tokens_per_s / trl_best.tokens_per_s:.2f}x ({best.name})")
        for gc_on in ("on", "off"):
            a = next((r for r in ok if r.name.startswith("TRL") and f"checkpointing {gc_on}" in r.name), None)
            b = next((r for r in ok if "packed" in r.name and f"checkpointing {gc_on}" in r.name), None)
            if a and b:
                print(f"checkpointing {gc_on}: ours / TRL = {b.tokens_per_s / a.tokens_per_s:.2f}x tokens/s, "
                      f"{b.peak_gib / a.peak_gib:.2f}x peak memory")


if __name__ == "__main__":
    main()
