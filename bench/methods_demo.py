"""Any subset of the methods side by side, `make demo`-style: the embedded SmolLM2-135M-Instruct with LoRA on the
bundled sample pairs, the same steps for every method and the same learning rates each, evaluated on the validation
pairs before and after training. Prints a Markdown table (and writes it to <root>/methods.md, the numbers to
<root>/methods.json).

    python bench/methods_demo.py                       # orpo, simpo, cpo x 2 lr: ~30 minutes on 2 idle CPU cores
    python bench/methods_demo.py --methods orpo,dpo:ipo,rpo --lrs 2e-4 --max-steps 12
    make methods-demo METHODS=dpo:ipo,rpo,orpo

A method is `TRAINER[:LOSS[+LOSS...][@WEIGHT[+WEIGHT...]]]`: a --trainer, optionally with its --loss-type(s) and
--loss-weights (dpo:ipo, dpo:sigmoid+sft@1+0.005, cpo:alphapo); `rpo` is dpo:sigmoid+sft (TRL's equal weights).
Each runs with its authors' defaults for what it leaves unset (the log, each run's README.md and the table's notes
say which): ORPO lambda 0.1, SimPO beta 2.0 and gamma 1.0 without an NLL term, CPO beta 0.1 and alpha 1.0, IPO tau
0.1, DPO beta 0.1. Preference accuracy is each method's own reward comparison: ORPO's log-odds and SimPO's mean
token log-prob order a pair the same way (the log-odds grow with the mean log-prob), CPO's summed log-prob does not,
and DPO's family compares the gain over the reference (every pair a tie before the first step, with LoRA). The NLL
(chosen completion tokens, per token) is the same quantity for every method.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from autotrain.errors import ParamsError
from autotrain.project import AutoTrainProject
from autotrain.trainers.clm.params import LLMTrainingParams

# `make demo`'s settings (Makefile), less the sample answers.
DEMO = dict(peft=True, valid_split="validation", epochs=1, batch_size=4, gradient_accumulation=2, lora_r=16,
            lora_alpha=32, disable_gradient_checkpointing=True)
METRICS = (("accuracy", "eval_rewards/accuracies", 3), ("NLL", "eval_nll_loss", 3), ("loss", "eval_loss", 3))


ALIASES = {"rpo": "dpo:sigmoid+sft"}


def method_fields(method: str) -> dict:
    """`TRAINER[:LOSS[+LOSS...][@WEIGHT[+WEIGHT...]]]` -> the params fields it sets."""
    trainer, _, losses = ALIASES.get(method, method).partition(":")
    fields: dict = {"trainer": trainer}
    if losses:
        names, _, weights = losses.partition("@")
        fields["loss_type"] = tuple(names.split("+"))
        if weights:
            fields["loss_weights"] = tuple(float(w) for w in weights.split("+"))
    return fields


def run(root: Path, method: str, lr: float, extra: dict) -> dict:
    project = root / f"{method.replace(':', '-').replace('+', '_').replace('@', '-w')}-lr{lr:g}"
    params = LLMTrainingParams(project_name=str(project), lr=lr, **{**DEMO, **method_fields(method), **extra})
    start = time.perf_counter()
    result = AutoTrainProject(params).create()
    wall = time.perf_counter() - start
    before, after = result.evaluation
    row = {"method": method, "lr": lr, "steps": after["step"], "wall_s": round(wall, 1),
           "settings": params.method_settings().describe()}
    for name, key, _ in METRICS:
        row[f"{name} before"], row[f"{name} after"] = before.get(key), after.get(key)
    return row


def table(rows: list[dict]) -> str:
    head = ["method", "lr", "steps"] + [f"{name} {when}" for name, _, _ in METRICS for when in ("before", "after")]
    lines = ["| " + " | ".join(head + ["wall time"]) + " |", "|" + "---|" * (len(head) + 1)]
    for row in rows:
        cells = [row["method"], f"{row['lr']:g}", str(row["steps"])]
        for name, _, digits in METRICS:
            for when in ("before", "after"):
                value = row[f"{name} {when}"]
                cells.append("—" if value is None else f"{value:.{digits}f}")
        minutes, seconds = divmod(round(row["wall_s"]), 60)
        lines.append("| " + " | ".join(cells + [f"{minutes} min {seconds:02d} s"]) + " |")
    settings = sorted({f"- {row['method']}: {row['settings']}" for row in rows})
    return "\n".join(lines + ["", *settings])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["orpo", "simpo", "cpo"],
                        help="methods, comma- or space-separated: orpo, dpo:ipo, rpo, dpo:sigmoid+sft@1+0.005, ...")
    parser.add_argument("--lrs", nargs="+", type=float, default=[1e-4, 3e-4], help="learning rates, the same for all")
    parser.add_argument("--root", type=Path, default=Path("methods-demo"), help="folder of the runs (new)")
    parser.add_argument("--max-steps", type=int, default=-1, help="cap on the steps (-1: one epoch, as make demo)")
    parser.add_argument("--model", default=None, help="another model (default: the embedded SmolLM2)")
    parser.add_argument("--data-path", default=None, help="other pairs (default: the bundled sample pairs)")
    args = parser.parse_args()
    chosen = [name for item in args.methods for name in item.split(",") if name]
    for method in chosen:  # every method's params checked before the first run starts
        try:
            LLMTrainingParams(**{**DEMO, **method_fields(method)})
        except (ParamsError, ValueError) as exc:
            raise SystemExit(f"--methods {method}: {exc}") from None
    extra = {"max_steps": args.max_steps}
    extra.update({key: value for key, value in (("model", args.model), ("data_path", args.data_path)) if value})
    args.root.mkdir(parents=True, exist_ok=False)
    rows = []
    for method in chosen:
        for lr in args.lrs:
            rows.append(run(args.root, method, lr, extra))
            (args.root / "methods.json").write_text(json.dumps(rows, indent=2) + "\n")  # kept if a later run fails
    text = table(rows)
    (args.root / "methods.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
