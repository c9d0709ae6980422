"""One optimizer step, one gradient, however the step is split into micro-batches and processes.

For orpo, dpo, simpo (as CPO-SimPO) and sft, on pairs of very uneven lengths (orpo and simpo on ranked answers, whose
pairs weigh 1 / the pairs of their prompt): batch 4 x accumulation 1, 2 x 2 and 1 x 4 in this process,
and 2 processes x 2 x 1 (one torchrun launch of 2 gloo processes running every method), log the same loss and
grad_norm at every step and end with the same weights, within 1e-5. Before the fix every method's loss was a
per-micro-batch mean divided by the accumulation steps, so the NLL of ORPO and SFT weighted the tokens of a short
micro-batch more than those of a long one.

The launch also evaluates an odd validation split (7 pairs) in batches that do not divide it: the eval metrics of
2 processes must equal those of 1 process (the pairs accelerate's `even_batches` repeats are not counted).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import write_jsonl
from safetensors.torch import load_file

from autotrain.project import AutoTrainProject
from autotrain.trainers.clm.params import LLMTrainingParams

METHODS = ("orpo", "dpo", "simpo", "sft")
SPLITS = ((4, 1), (2, 2), (1, 4))  # (batch_size, gradient_accumulation): 4 pairs per optimizer step
STEPS = 3
COMMON = dict(logging_steps=1, max_steps=STEPS, lr=2e-3, warmup_ratio=0.0, seed=11,
              valid_split="validation", save_steps=1000, dpo_beta=0.5, disable_gradient_checkpointing=True,
              # Named, not left to the defaults: a launched process reads every field from training_params.json.
              prompt_text_column="prompt", text_column="chosen", rejected_text_column="rejected")
# DPO trains LoRA (its reference is the same weights with the adapters off); ORPO and SFT a full fine-tune. SimPO
# runs as CPO-SimPO (an NLL weight of 0.5): mean log-probs, the margin and a weighted NLL, so CPO's path (summed
# log-probs, a weighted NLL) is covered too; tests/test_simpo_cpo.py checks both at the step, cheaply.
PER_METHOD = {"orpo": dict(packing=True), "dpo": dict(peft=True, packing=False), "simpo": dict(cpo_alpha=0.5),
              "sft": dict(packing=True)}
# ORPO and SimPO train on ranked answers (2 to 4 per prompt, one tie): weighted pairs. (DPO's LoRA run on them met
# the Adam effect assert_same_weights describes: one element of 1024 at 1.9e-6, the tensor at 1.0e-5 of its norm.)
RANKED = {"orpo", "simpo"}


def uneven_pairs(count: int, start: int = 0) -> list[dict]:
    """Prompts of 1-9 characters, completions of 1-17: token counts per pair differ up to 10x."""
    rows = []
    for i in range(start, start + count):
        rows.append({"prompt": "q" * (1 + (i * 5) % 9), "chosen": "c" * (1 + (i * 7) % 17),
                     "rejected": "r" * (1 + (i * 3) % 13)})
    return rows


def ranked_rows(answers: list[int], start: int = 0) -> list[dict]:
    """One prompt per entry of `answers`, with that many answers of uneven lengths and distinct scores, plus one
    more that ties the best: the best against each other answer makes answers - 1 pairs, the tie none."""
    rows = []
    for i, count in enumerate(answers, start):
        responses = [chr(ord("a") + k) * (1 + (i * 7 + k * 5) % 13) for k in range(count)]
        rows.append({"prompt": "q" * (1 + (i * 5) % 9), "responses": [*responses, "t" * (1 + i % 4)],
                     "scores": [*range(count, 0, -1), count]})
    return rows


def data_folder(root: Path, ranked: bool = False) -> Path:
    folder = root / ("ranked" if ranked else "data")
    folder.mkdir(exist_ok=True)
    if ranked:  # 3 + 2 + 1 + 3 + 2 + 1 = 12 training pairs, 3 + 2 + 1 + 1 = 7 to validate
        write_jsonl(folder / "train.jsonl", ranked_rows([4, 3, 2, 4, 3, 2]))
        write_jsonl(folder / "validation.jsonl", ranked_rows([4, 3, 2, 2], start=50))
    else:
        write_jsonl(folder / "train.jsonl", uneven_pairs(4 * STEPS))
        write_jsonl(folder / "validation.jsonl", uneven_pairs(7, start=50))
    return folder


def params_for(model: Path, data: Path, project: Path, method: str, batch_size: int, accumulation: int,
               **extra) -> LLMTrainingParams:
    settings = {**COMMON, **PER_METHOD[method], **extra}
    if method in RANKED:  # no rejected column: the responses and their scores
        settings.update(text_column="text", rejected_text_column=None)
    if settings.get("peft"):
        settings["lora_dropout"] = 0.0  # LoRA's own dropout would draw different masks in different splits
    return LLMTrainingParams(model=str(model), data_path=str(data), project_name=str(project), trainer=method,
                             batch_size=batch_size, gradient_accumulation=accumulation, **settings)


def records(project: Path) -> list[dict]:
    return [json.loads(line) for line in (project / "metrics.jsonl").read_text().splitlines()]


def train_steps(project: Path) -> list[dict]:
    return [r for r in records(project) if "grad_norm" in r]


def evals(project: Path) -> list[dict]:
    return [r for r in records(project) if "eval_loss" in r]


def weights(project: Path, method: str) -> dict[str, torch.Tensor]:
    return load_file(project / ("adapter/adapter_model.safetensors" if method == "dpo" else "model.safetensors"))


def assert_close(actual: float, expected: float, what: str, tolerance: float = 1e-5) -> None:
    assert abs(actual - expected) <= tolerance * max(abs(expected), 1e-8), f"{what}: {actual} != {expected}"


def assert_same_weights(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Each tensor within 1e-5 of its own norm. Not element-wise: Adam divides by the root of the squared gradient,
    so an element whose gradient is near 0 turns float32 rounding of 1e-7 into a weight difference 100x larger
    (seen: one LoRA element of 256 at 1.2e-5 of the tensor's largest, the tensor at 9e-7 of its norm)."""
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        error = ((actual[name] - tensor).norm() / tensor.norm().clamp(min=1e-12)).item()
        assert error <= 1e-5, f"{name}: relative difference {error:.3g}"


@pytest.fixture(scope="module")
def split_runs(tmp_path_factory, chat_model) -> dict[tuple[str, int, int], Path]:
    root = tmp_path_factory.mktemp("splits")
    folders = {False: data_folder(root), True: data_folder(root, ranked=True)}
    runs = {}
    for method in METHODS:
        data = folders[method in RANKED]
        for batch_size, accumulation in SPLITS:
            project = root / f"{method}-{batch_size}x{accumulation}"
            compared = {} if (batch_size, accumulation) == SPLITS[0] else {"valid_split": None}  # evals: 4 x 1 only
            AutoTrainProject(params_for(chat_model, data, project, method, batch_size, accumulation,
                                        **compared)).create()
            runs[method, batch_size, accumulation] = project
    return runs


def assert_same_run(actual: Path, expected: Path, method: str) -> None:
    got, want = train_steps(actual), train_steps(expected)
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(1, STEPS + 1))
    for a, b in zip(got, want):
        for key in ("loss", "grad_norm", "nll_loss"):
            assert_close(a[key], b[key], f"step {b['step']} {key}")
    assert_same_weights(weights(actual, method), weights(expected, method))


@pytest.mark.parametrize("method", METHODS)
def test_accumulation_splits_give_one_gradient(split_runs, method):
    reference = split_runs[method, 4, 1]
    for batch_size, accumulation in SPLITS[1:]:
        assert_same_run(split_runs[method, batch_size, accumulation], reference, method)


@pytest.mark.parametrize("method", METHODS)
def test_logged_loss_is_the_methods_reduction_of_the_step(split_runs, method):
    """With one logging step per optimizer step, the logged loss is the step's loss: ORPO's is its NLL plus beta
    times its odds-ratio term (the logged -log_odds_ratio), SFT's its NLL."""
    for record in train_steps(split_runs[method, 2, 2]):
        if method == "orpo":
            assert_close(record["loss"], record["nll_loss"] - 0.5 * record["log_odds_ratio"], "orpo loss")
        elif method == "sft":
            assert_close(record["loss"], record["nll_loss"], "sft loss")


LAUNCHED = """
import os, sys
from pathlib import Path
from accelerate import PartialState
from autotrain import project
from autotrain.errors import ModelError
from autotrain.trainers.clm.params import LLMTrainingParams
from autotrain.worker import _configure_logging

sys.path.insert(0, sys.argv[1])
import test_head_check  # registers ScaledLlamaForCausalLM, the wrong head

os.environ.setdefault("ACCELERATE_USE_CPU", "true")
_configure_logging(int(os.environ.get("RANK", "0")))
for path in sys.argv[2:]:
    params = LLMTrainingParams.load_json(path)
    Path(params.project_name).mkdir(parents=True, exist_ok=True)
    PartialState().wait_for_everyone()
    try:
        project.run(params, folder_checked=True)
    except ModelError as exc:  # the wrong head, last: every process refuses it, none waits for the others
        sys.stdout.write(f"rank {os.environ['RANK']} refused: {exc}\\n")  # one write: no interleaving with rank 1
        sys.stdout.flush()
"""


@pytest.fixture(scope="module")
def launched_runs(tmp_path_factory, chat_model) -> dict[str, Path | str]:
    """2 processes x batch 2 x accumulation 1, for each method in turn, then the head check's wrong head (packed,
    LoRA), in one torchrun launch."""
    from test_head_check import scaled_model_dir

    root = tmp_path_factory.mktemp("launched-splits")
    folders = {False: data_folder(root), True: data_folder(root, ranked=True)}
    data = folders[False]
    configs, projects = [], {}
    for method in METHODS:
        projects[method] = root / f"{method}-2proc"
        config = root / f"{method}.json"
        params_for(chat_model, folders[method in RANKED], projects[method], method, 2, 1).save_json(config)
        configs.append(str(config))
    scaled = params_for(scaled_model_dir(root / "scaled-model"), data, root / "scaled-2proc", "orpo", 2, 1, peft=True)
    scaled.save_json(root / "scaled.json")
    script = root / "launched.py"
    script.write_text(textwrap.dedent(LAUNCHED))
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         str(Path(__file__).parent), *configs, str(root / "scaled.json")], capture_output=True, text=True,
        timeout=420, env=env)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return {**projects, "stdout": done.stdout + done.stderr}


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_give_the_one_process_gradient(launched_runs, split_runs, method):
    assert_same_run(launched_runs[method], split_runs[method, 4, 1], method)


@pytest.mark.parametrize("method", METHODS)
def test_eval_metrics_of_two_processes_count_each_pair_once(launched_runs, split_runs, method):
    two, one = evals(launched_runs[method]), evals(split_runs[method, 4, 1])
    assert [r["step"] for r in two] == [r["step"] for r in one] == [0, STEPS]
    for a, b in zip(two, one):
        keys = {k for k in b if k.startswith("eval_") and not k.endswith(("runtime", "per_second"))}
        assert keys == {k for k in a if k.startswith("eval_") and not k.endswith(("runtime", "per_second"))}
        for key in sorted(keys):
            assert_close(a[key], b[key], f"step {b['step']} {key}")


def test_the_head_check_refuses_on_every_process(launched_runs):
    refused = re.findall(r"rank (\d) refused: (ScaledLlamaForCausalLM: the chunked LM head's log-probs differ)",
                         launched_runs["stdout"])
    assert sorted(rank for rank, _ in refused) == ["0", "1"], launched_runs["stdout"][-3000:]


def test_dpo_starts_with_every_pair_a_tie(split_runs):
    """Before the first step the policy is its reference (LoRA's B is 0): every implicit reward is 0, every pair a
    tie, counted as a tie and not as a loss for accuracy."""
    first = evals(split_runs["dpo", 4, 1])[0]
    assert first["step"] == 0
    assert first["eval_rewards/ties"] == 1.0 and first["eval_rewards/accuracies"] == 0.0
