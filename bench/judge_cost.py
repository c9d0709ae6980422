"""What --judge costs next to --sample-answers, on `make demo`'s model and validation prompts: seconds per greedy
answer (the sample answers' loop, before and after training) and per judge call (the embedded model as a local
log-prob judge), and what they add up to for the demo's 3 sample answers and for judging its 81 validation prompts.

    python bench/judge_cost.py --after demo-orpo                # answers by the base model and by a trained run
    python bench/judge_cost.py --after demo-orpo --prompts 10   # time the first 10 validation prompts

The prompts are rendered as `make demo` renders them (the tokenizer's chat template, via the run's data stage is not
needed: each validation prompt is one user message). Run it on an idle machine for numbers worth comparing; on a
shared one, the ratios hold better than the seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from autotrain import answers, defaults, models
from autotrain.data.templates import stop_ids
from autotrain.judge.local import load
from autotrain.judge.spec import DEFAULT_TEMPLATE

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "autotrain" / "data" / "samples" / "validation.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--after", required=True, help="a finished run of make demo (its model answers after)")
    parser.add_argument("--prompts", type=int, default=6, help="validation prompts to time")
    args = parser.parse_args()
    rows = [json.loads(line) for line in SAMPLES.read_text().splitlines() if line.strip()]
    questions = [row["prompt"] for row in rows]
    base = defaults.resolve_model(defaults.DEFAULT_MODEL)
    timed: dict[str, float] = {}
    said: dict[str, list[str]] = {}
    for side, folder in (("before", base), ("after", args.after)):
        model, tokenizer = models.load_trained(Path(folder))
        ids = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                             return_dict=True)["input_ids"] for q in questions[: args.prompts]]
        stops = stop_ids(tokenizer, tokenizer.chat_template, also=model.generation_config.eos_token_id)
        start = time.perf_counter()
        said[side] = answers.answer(model, tokenizer, ids, stops)
        timed[side] = (time.perf_counter() - start) / args.prompts
    judge = load(defaults.DEFAULT_MODEL, DEFAULT_TEMPLATE)
    start = time.perf_counter()
    for q, a, b in zip(questions, said["after"], said["before"]):
        judge.prefer(q, a, b)
        judge.prefer(q, b, a)
    timed["judge call"] = (time.perf_counter() - start) / (2 * args.prompts)
    n = len(questions)
    sample = 3 * (timed["before"] + timed["after"])
    judging = n * (timed["before"] + timed["after"]) + 2 * n * timed["judge call"]
    print(f"per answer before training {timed['before']:.2f} s, after {timed['after']:.2f} s; per judge call "
          f"{timed['judge call']:.2f} s (over {args.prompts} prompts)")
    print(f"make demo's 3 sample answers: {sample:.0f} s; judging its {n} validation prompts: {judging:.0f} s "
          f"({2 * n} answers, {2 * n} judge calls), {judging / sample:.0f}x the sample answers")


if __name__ == "__main__":
    main()
