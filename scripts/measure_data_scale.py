"""Measure the data stage at scale: peak RSS and wall time of a cold tokenization, and the time to a ready
dataset on a cache hit.

    python scripts/measure_data_scale.py                      # 200,000 pairs, the embedded SmolLM2 tokenizer
    python scripts/measure_data_scale.py --pairs 20000 200000 # two sizes: peak RSS must not grow with rows

Each size writes a JSONL of short, varied preference pairs (~1 KB each) under --workdir, then runs two fresh
processes against an empty, private cache (so nothing else is measured): `cold` (tokenize, write the cache) and
`hit` (the same inputs again). Each reports its RSS after imports (transformers, datasets) and tokenizer load
(`base`), its peak RSS, the time prepare_data took, and the process's whole wall time (interpreter start to
dataset ready, so it includes importing torch and transformers).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

WORDS = (
    "model data train answer question value result system user reason step method number table file line river "
    "city market garden energy water light music history science language memory network signal pattern "
    "quickly carefully often rarely always never because although however therefore while after before during "
    "small large bright quiet heavy simple complex early late warm cold green ancient modern useful fragile"
).split()
TOPICS = ["photosynthesis", "compound interest", "the French revolution", "binary search", "sourdough bread",
          "plate tectonics", "vaccines", "the Roman empire", "solar panels", "jazz harmony", "sorting algorithms",
          "coral reefs", "inflation", "black holes", "the printing press", "recycling plastics"]
ASKS = ["Explain {} to a curious teenager.", "Write a short paragraph about {}.", "What are common myths about {}?",
        "Summarize the key ideas of {} in plain words.", "Give three practical facts about {}."]


def sentence(rng: random.Random, words: int) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    return text[0].upper() + text[1:] + rng.choice([".", ".", "!", "?"])


def pair(rng: random.Random, index: int) -> dict[str, str]:
    topic = rng.choice(TOPICS)
    prompt = f"{rng.choice(ASKS).format(topic)} (request {index}) " + " ".join(sentence(rng, 8) for _ in range(4))
    chosen = f"Here is a clear answer about {topic}. " + " ".join(sentence(rng, 10) for _ in range(5))
    rejected = f"I think {topic} is not worth discussing. " + " ".join(sentence(rng, 10) for _ in range(5))
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def write_pairs(path: Path, count: int) -> None:
    rng = random.Random(count)
    with path.open("w") as handle:
        for index in range(count):
            handle.write(json.dumps(pair(rng, index)) + "\n")


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def phase(data: Path, model: str) -> None:
    """One measured run, in its own process: print one JSON line."""
    started = time.perf_counter()
    from autotrain.data.prepare import prepare_data
    from autotrain.model.embedded import resolve_model
    from autotrain.model.loading import load_tokenizer
    from autotrain.trainers.clm.params import LLMTrainingParams

    tokenizer = load_tokenizer(resolve_model(model), trust_remote_code=False)
    import datasets  # noqa: F401 - training imports it anyway: keep its ~70 MB out of what the data stage adds

    params = LLMTrainingParams(data_path=str(data), prompt_text_column="prompt", text_column="chosen",
                               rejected_text_column="rejected", max_prompt_length=256)
    base = rss_mib()
    begin = time.perf_counter()
    prepared = prepare_data(params, tokenizer, 8192)
    assert prepared.train.dataset[len(prepared.train) - 1]["chosen_ids"]  # the memory-mapped data is readable
    done = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"pairs": len(prepared.train), "base_rss_mib": round(base), "peak_rss_mib": round(peak),
                      "prepare_s": round(done - begin, 2), "process_s": round(done - started, 2)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, nargs="+", default=[200_000])
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/aitraining-scale"))
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        phase(args.data, args.model)
        return
    # Resolve (convert once) the embedded model outside the measured processes and the private cache.
    from autotrain.model.embedded import resolve_model

    model = resolve_model(args.model)
    args.workdir.mkdir(parents=True, exist_ok=True)
    for count in args.pairs:
        data = args.workdir / f"pairs-{count}.jsonl"
        if not data.exists():
            write_pairs(data, count)
        cache = args.workdir / f"cache-{count}"
        shutil.rmtree(cache, ignore_errors=True)
        size = data.stat().st_size
        print(f"{count} pairs, {size / 2**20:.0f} MiB ({size / count:.0f} B/pair): {data}", flush=True)
        for name in ("cold", "hit"):
            env = {**__import__("os").environ, "AITRAINING_CACHE": str(cache)}
            cmd = [sys.executable, __file__, "--phase", name, "--data", str(data), "--model", model]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.exit(f"{name} run failed:\n{done.stderr[-3000:]}")
            print(f"  {name:4s} {done.stdout.strip()}", flush=True)
        entries = sum(f.stat().st_size for f in (cache / "tokenized").rglob("*") if f.is_file())
        print(f"  cache entry: {entries / 2**20:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
