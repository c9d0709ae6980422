"""The newcomer's CPU run on the embedded SmolLM2-135M: ours and TRL's ORPOTrainer side by side, interleaved, against
the machine's matmul rate measured in the same process.

    python bench/cpu_bench.py                         # LoRA (make demo's settings on 64 pairs), 3 rounds
    python bench/cpu_bench.py --workload full         # full fine-tune of 8 pairs
    python bench/cpu_bench.py --also lora_dropout=0.05 --also optimizer=adamw_torch    # what a setting costs
    python bench/cpu_bench.py --threads 1 --rounds 5  # one thread: CPU time that other processes disturb less

Workloads (each one epoch of the bundled train pairs, no chat template, lr 2e-4, batch 4 x accumulation 2,
gradient checkpointing off, warm-up ratio 0.1, this tool's defaults for everything else):
- lora: the first 64 pairs (8 steps), LoRA r 16, alpha 32, all-linear; ours packed and ours padded (--no-packing);
- full: the first 8 pairs, full fine-tune, --epochs N (default 6, so 6 steps).

Ours runs through the tool's own run (autotrain.project.run: data, model, trainer, as `aitraining llm --train`
does); TRL's ORPOTrainer gets what aitraining's train_clm_orpo gives it: the model, ORPOConfig with the same
hyperparameters and optimizer (ours resolved), a LoraConfig(lora_dropout=0.05) as peft_config, and the pairs as text
(our token ids decoded, so both sides train on the same text).

Each round measures the matmul rate, then runs every side once, the order rotating from round to round so that a
change of load does not favour one side. Reported per run: Trainer's train_runtime, the process CPU time of
train(), the load average before it. Per side: the median over rounds. The conclusions are ratios taken within a
round (TRL's train_runtime / ours, ours / the round's matmul rate), then their median: on a machine shared with
other work only those mean anything, and the load average says how much.

Useful FLOPs of a run (the same number for every side: the work the run needs): each real token of our packed
layout (the prompt once) through every linear layer of the decoder, forward 2 * params; backward 2 * params for
LoRA (activation gradients through frozen weights) plus the adapters' own 2 * 2 * params, 4 * params for a full
fine-tune; the LM head (tied, hidden x vocab) at each target token: forward 2 * H * V, backward 2 * H * V (4 * H * V
with its weight gradient in the full fine-tune). Attention scores (under 1% at these lengths), norms and
elementwise work are not counted. The matmul rate: torch's matmuls of exactly these shapes (a micro-batch's median
token count by the decoder's weights, forward and backward, and the head at a micro-batch's targets), FLOPs over
time, median of 3, just before the round.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

WORKLOADS = {
    "lora": dict(pairs=64, peft=True, lora_r=16, lora_alpha=32, epochs=1, merge_adapter=False),
    "full": dict(pairs=8, peft=False, epochs=6),
}
COMMON = dict(chat_template="none", lr=2e-4, batch_size=4, gradient_accumulation=2,
              disable_gradient_checkpointing=True, log="none", save_strategy="no")


@dataclass
class Run:
    side: str
    runtime: list[float] = field(default_factory=list)  # train_runtime per round, s
    cpu: list[float] = field(default_factory=list)  # process CPU time of train(), s
    load: list[float] = field(default_factory=list)  # 1-min load average before the run
    tokens: int = 0  # real tokens the side computes per epoch (its own layout, padding excluded)


class Clock(TrainerCallback):
    """Trainer's train_runtime and the process CPU time between the start and the end of training."""

    def __init__(self) -> None:
        self.runtime = self.cpu = 0.0
        self._start = 0.0

    @staticmethod
    def _cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: D102
        self._start = self._cpu()

    def on_train_end(self, args, state, control, **kwargs):  # noqa: D102
        self.cpu = self._cpu() - self._start

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D102
        if logs and "train_runtime" in logs:
            self.runtime = logs["train_runtime"]


def our_params(workload: str, folder: Path, extra: dict[str, Any]) -> Any:
    from autotrain.trainers.clm.params import LLMTrainingParams

    spec = dict(WORKLOADS[workload])
    pairs = spec.pop("pairs")
    return LLMTrainingParams(project_name=str(folder), max_samples=pairs, **{**COMMON, **spec, **extra})


def run_ours(workload: str, root: Path, extra: dict[str, Any]) -> Clock:
    from autotrain.project import _trial

    clock = Clock()
    folder = Path(tempfile.mkdtemp(dir=root))
    shutil.rmtree(folder)
    _trial(our_params(workload, folder, extra), (clock,))
    shutil.rmtree(folder, ignore_errors=True)
    return clock


@dataclass
class Prepared:
    """What both sides train on, and what the useful FLOPs and the matmul shapes are computed from."""

    model_path: str
    text: list[dict[str, str]]  # the pairs as TRL reads them: our ids decoded
    batches: list[dict[str, Any]]  # our packed micro-batches
    params: Any  # ours, resolved
    tokenizer: Any


def prepare(workload: str, root: Path) -> Prepared:
    from autotrain.model import embedded as defaults, loading
    from autotrain.run import preflight
    from autotrain.model.kernels import make_collator
    from autotrain.data.prepare import prepare_data

    params = our_params(workload, root / "unused", {})
    path = defaults.resolve_model(params.model)
    tokenizer = loading.load_tokenizer(path, False)
    config = loading.load_config(path, False)
    data = prepare_data(params, tokenizer, loading.model_max_length(config), opened=preflight.check_inputs(params))
    rows = [data.train.dataset[i] for i in range(len(data.train.dataset))]
    eos = tokenizer.eos_token_id
    decode = lambda ids: tokenizer.decode(ids[:-1] if ids and ids[-1] == eos else ids)  # noqa: E731  TRL adds EOS
    text = [{"prompt": tokenizer.decode(r["prompt_ids"]), "chosen": decode(r["chosen_ids"]),
             "rejected": decode(r["rejected_ids"])} for r in rows]
    collate = make_collator(True, tokenizer.pad_token_id, params.nll_on_prompt)
    size = params.batch_size
    batches = [collate(rows[i : i + size]) for i in range(0, len(rows), size)]
    return Prepared(path, text, batches, params, tokenizer)


def run_trl(prep: Prepared, root: Path) -> tuple[Clock, int]:
    """TRL's ORPOTrainer as aitraining's train_clm_orpo builds it (utils.configure_training_args, its LoraConfig)."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    p = prep.params
    clock, seen = Clock(), []
    model = AutoModelForCausalLM.from_pretrained(prep.model_path, dtype=torch.float32)
    model.config.use_cache = False
    args = ORPOConfig(
        output_dir=str(root / "trl"), per_device_train_batch_size=p.batch_size, learning_rate=p.lr,
        num_train_epochs=p.epochs, gradient_accumulation_steps=p.gradient_accumulation, optim=p.optimizer,
        lr_scheduler_type=p.scheduler, warmup_steps=p.warmup_ratio, weight_decay=p.weight_decay,
        max_grad_norm=p.max_grad_norm, seed=p.seed, data_seed=p.seed, gradient_checkpointing=False, beta=0.1,
        max_length=1024, remove_unused_columns=False, report_to=[], logging_steps=10**6, save_strategy="no",
        disable_tqdm=True, use_cpu=True, dataloader_num_workers=0, bf16=False)  # fp32 as ours: TRL defaults to bf16
    lora = LoraConfig(r=p.lora_r, lora_alpha=p.lora_alpha, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM",
                      target_modules="all-linear") if p.peft else None
    trainer = ORPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(prep.text),
                          processing_class=prep.tokenizer, peft_config=lora, callbacks=[clock])
    collate = trainer.data_collator

    def counting(features: list[dict]) -> dict:
        seen.append(sum(len(f["chosen_input_ids"]) + len(f["rejected_input_ids"]) for f in features))
        return collate(features)

    trainer.data_collator = counting
    trainer.train()
    shutil.rmtree(root / "trl", ignore_errors=True)
    return clock, sum(seen)


def useful_flops(prep: Prepared) -> tuple[float, dict[str, int]]:
    """The run's useful FLOPs (module docstring) and the sizes they come from."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(prep.model_path)
    h, v, i = config.hidden_size, config.vocab_size, config.intermediate_size
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    d = getattr(config, "head_dim", None) or h // heads
    linear = config.num_hidden_layers * (h * heads * d + 2 * h * kv * d + heads * d * h + 3 * h * i)
    r = prep.params.lora_r if prep.params.peft else 0
    # all-linear adapters: A (in x r) and B (r x out) on q, k, v, o, gate, up, down of every layer
    lora = config.num_hidden_layers * r * ((h + heads * d) * 2 + (h + kv * d) * 2 + (h + i) * 3) if r else 0
    tokens = sum(b["num_real_tokens"] for b in prep.batches) * prep.params.epochs
    targets = sum(len(b["target_ids"]) for b in prep.batches) * prep.params.epochs
    forward = 2 * tokens * (linear + lora) + 2 * targets * h * v
    if prep.params.peft:
        backward = 2 * tokens * linear + 4 * tokens * lora + 2 * targets * h * v
    else:
        backward = 4 * tokens * linear + 4 * targets * h * v
    sizes = dict(hidden=h, vocab=v, intermediate=i, q=heads * d, kv=kv * d, linear_params=linear,
                 lora_params=lora, tokens=tokens, targets=targets)
    return float(forward + backward), sizes


def matmul_rate(prep: Prepared, sizes: dict[str, int], repeats: int = 3) -> tuple[float, float]:
    """GFLOP/s of torch's matmuls at the workload's own shapes (module docstring), median of `repeats`: over wall
    time, and over the process's CPU time (with one thread, what the rate would be with the core to itself)."""
    m = int(statistics.median(b["num_real_tokens"] for b in prep.batches))
    n = int(statistics.median(len(b["target_ids"]) for b in prep.batches))
    h, v, i, q, kv = (sizes[k] for k in ("hidden", "vocab", "intermediate", "q", "kv"))
    full = not prep.params.peft
    # (rows, inner, cols) of each product: forward x @ W.T, backward grad @ W (and grad.T @ x in the full fine-tune)
    layer = [(m, h, q), (m, h, kv), (m, h, kv), (m, q, h), (m, h, i), (m, h, i), (m, i, h)]
    shapes = layer + [(a, c, b) for a, b, c in layer] + ([(c, a, b) for a, b, c in layer] if full else [])
    head = [(n, h, v), (n, v, h)] + ([(v, n, h)] if full else [])
    tensors = [(torch.randn(a, b), torch.randn(b, c)) for a, b, c in shapes + head]
    flops = sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b in tensors)
    rates, cpu_rates = [], []
    for _ in range(repeats):
        for a, b in tensors:  # warm
            a @ b
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(4):
            for a, b in tensors:
                a @ b
        rates.append(4 * flops / (time.perf_counter() - start) / 1e9)
        cpu_rates.append(4 * flops / (time.process_time() - cpu) / 1e9)
    return statistics.median(rates), statistics.median(cpu_rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=list(WORKLOADS), default="lora")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of the workload (default: lora 1, full 6)")
    parser.add_argument("--also", action="append", default=[], metavar="FIELD=VALUE",
                        help="one more run of ours per round with this setting changed (repeatable)")
    parser.add_argument("--no-trl", action="store_true", help="ours only")
    cli = parser.parse_args()
    if cli.threads:
        torch.set_num_threads(cli.threads)
    if cli.epochs:
        WORKLOADS[cli.workload]["epochs"] = cli.epochs
    logging.getLogger("autotrain").setLevel(logging.WARNING)
    import transformers
    import trl

    root = Path(tempfile.mkdtemp(prefix="cpu-bench-"))
    prep = prepare(cli.workload, root)
    flops, sizes = useful_flops(prep)
    sides: list[tuple[str, dict[str, Any]]] = [("ours", {})]
    if cli.workload == "lora":
        sides.append(("ours --no-packing", {"packing": False}))
    for setting in cli.also:
        name, value = setting.split("=", 1)
        sides.append((f"ours {name}={value}", {name: None if value == "none" else _number(value)}))
    if not cli.no_trl:
        sides.append(("TRL ORPOTrainer", {}))
    runs = {name: Run(name) for name, _ in sides}
    rates: list[float] = []
    cpu_rates: list[float] = []
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}; "
          f"{torch.get_num_threads()} threads on {os.cpu_count()} CPUs; workload {cli.workload}: "
          f"{sizes['tokens']} real tokens (ours, packed), {sizes['targets']} targets, "
          f"{flops / 1e9:.0f} useful GFLOP; optimizer {prep.params.optimizer}", flush=True)
    for round_ in range(cli.rounds):
        rate, cpu_rate = matmul_rate(prep, sizes)
        rates.append(rate)
        cpu_rates.append(cpu_rate)
        print(f"round {round_ + 1}: matmul rate {rate:.1f} GFLOP/s over wall time, {cpu_rate:.1f} over CPU time "
              f"(load {os.getloadavg()[0]:.1f})", flush=True)
        shift = round_ % len(sides)
        for name, extra in sides[shift:] + sides[:shift]:
            load = os.getloadavg()[0]
            if name.startswith("TRL"):
                clock, runs[name].tokens = run_trl(prep, root)
            else:
                clock = run_ours(cli.workload, root, extra)
            run = runs[name]
            run.runtime.append(clock.runtime)
            run.cpu.append(clock.cpu)
            run.load.append(load)
            print(f"  {name}: train_runtime {clock.runtime:.2f} s, CPU {clock.cpu:.2f} s (load before {load:.1f})",
                  flush=True)
    shutil.rmtree(root, ignore_errors=True)
    report(runs, rates, cpu_rates, flops, sizes)


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def report(runs: dict[str, Run], rates: list[float], cpu_rates: list[float], flops: float,
           sizes: dict[str, int]) -> None:
    ours = runs["ours"]
    loads = [load for run in runs.values() for load in run.load]
    print(f"\nmatmul rate at the workload's shapes: median {statistics.median(rates):.1f} GFLOP/s over wall time "
          f"(rounds: {', '.join(f'{r:.1f}' for r in rates)}), {statistics.median(cpu_rates):.1f} over CPU time; "
          f"load average before the runs: {min(loads):.1f} to {max(loads):.1f}")
    print("\n| run | train_runtime s | CPU s | GFLOP/s | of the matmul rate | by CPU time | TRL / this |\n"
          "|---|---|---|---|---|---|---|")
    trl = runs.get("TRL ORPOTrainer")
    for run in runs.values():
        fraction = statistics.median(flops / t / 1e9 / rate for t, rate in zip(run.runtime, rates))
        by_cpu = statistics.median(flops / c / 1e9 / rate for c, rate in zip(run.cpu, cpu_rates))
        ratio = "" if trl is None or run is trl else \
            f"{statistics.median(t / o for t, o in zip(trl.runtime, run.runtime)):.2f}x " \
            f"(CPU {statistics.median(t / o for t, o in zip(trl.cpu, run.cpu)):.2f}x)"
        print(f"| {run.side} | {statistics.median(run.runtime):.2f} | {statistics.median(run.cpu):.2f} | "
              f"{flops / statistics.median(run.runtime) / 1e9:.1f} | {fraction:.0%} | {by_cpu:.0%} | {ratio} |")
    trl = runs.get("TRL ORPOTrainer")
    if trl:
        print(f"\nreal tokens a run: TRL {trl.tokens} (each prompt twice, a BOS added), ours {sizes['tokens']} (packed: "
              "the prompt once).")
    print("Medians over rounds; 'of the matmul rate' and 'TRL / this' are medians of each round's own ratio, by wall "
          "time (train_runtime) and by CPU time (with one thread, what other processes on the machine disturb "
          "least; with more, the CPU time counts the threads' waiting too).")


if __name__ == "__main__":
    main()
