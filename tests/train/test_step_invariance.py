"""One optimizer step, one gradient, however the step is split into micro-batches and processes.

For orpo, dpo, simpo (as CPO-SimPO) and sft, on pairs of very uneven lengths (orpo and simpo on ranked answers, whose
pairs weigh 1 / the pairs of their prompt): batch 4 x accumulation 1, 2 x 2 and 1 x 4 in this process,
and 2 processes x 2 x 1 (one torchrun launch of 2 gloo processes running every method), log the same loss and
grad_norm at every step and end with the same weights, within 1e-5. Before the fix every method's loss was a
per-micro-batch mean divided by the accumulation steps, so the NLL of ORPO and SFT weighted the tokens of a short
micro-batch more than those of a long one.

Every --loss-type of dpo and cpo (and their combinations, LD-DPO) is checked at the step, cheaply: micro-batch
shares add up to the whole batch's loss and gradient. TRL's aot and aot_unpaired cannot be: they sort across the
batch (refused by the params).

kto trains on unpaired labelled examples (full fine-tune, a second copy as its reference, packed): its KL reference
point is the whole step's, taken before the step (autotrain.train.losses), so it is split-invariant too. Taken per
micro-batch, as TRL's KTOTrainer takes it, it would not be: the cheap check shows those shares missing the whole
batch's loss.

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

METHODS = ("orpo", "dpo", "simpo", "sft", "kto")
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
              "sft": dict(packing=True), "kto": dict(packing=True, desirable_weight=1.5)}
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


def unpaired_rows(count: int, start: int = 0) -> list[dict]:
    """kto's labelled examples of uneven lengths, two desirable to one undesirable."""
    return [{"prompt": "q" * (1 + (i * 5) % 9), "completion": ("c" if i % 3 else "r") * (1 + (i * 7) % 17),
             "label": i % 3 != 0} for i in range(start, start + count)]


def data_folder(root: Path, ranked: bool = False, unpaired: bool = False) -> Path:
    folder = root / ("ranked" if ranked else "unpaired" if unpaired else "data")
    folder.mkdir(exist_ok=True)
    if ranked:  # 3 + 2 + 1 + 3 + 2 + 1 = 12 training pairs, 3 + 2 + 1 + 1 = 7 to validate
        write_jsonl(folder / "train.jsonl", ranked_rows([4, 3, 2, 4, 3, 2]))
        write_jsonl(folder / "validation.jsonl", ranked_rows([4, 3, 2, 2], start=50))
    elif unpaired:
        write_jsonl(folder / "train.jsonl", unpaired_rows(4 * STEPS))
        write_jsonl(folder / "validation.jsonl", unpaired_rows(7, start=50))
    else:
        write_jsonl(folder / "train.jsonl", uneven_pairs(4 * STEPS))
        write_jsonl(folder / "validation.jsonl", uneven_pairs(7, start=50))
    return folder


def folders_of(root: Path) -> dict[str, Path]:
    """Each method's data: pairs, ranked answers (orpo, simpo) or labelled examples (kto)."""
    kinds = {False: data_folder(root), True: data_folder(root, ranked=True)}
    return {method: data_folder(root, unpaired=True) if method == "kto" else kinds[method in RANKED]
            for method in METHODS}


def params_for(model: Path, data: Path, project: Path, method: str, batch_size: int, accumulation: int,
               **extra) -> LLMTrainingParams:
    settings = {**COMMON, **PER_METHOD[method], **extra}
    if method in RANKED:  # no rejected column: the responses and their scores
        settings.update(text_column="text", rejected_text_column=None)
    if method == "sft":  # SFT has no rejected column and no beta, and naming either is refused
        del settings["rejected_text_column"], settings["dpo_beta"]
    if method == "kto":  # unpaired rows: a completion and its label
        settings.update(text_column="completion", rejected_text_column=None, label_column="label")
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
    folders = folders_of(root)
    runs = {}
    for method in METHODS:
        data = folders[method]
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
import conftest  # noqa: F401 - puts every folder of tests on the path
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
    folders = folders_of(root)
    data = folders["sft"]
    configs, projects = [], {}
    for method in METHODS:
        projects[method] = root / f"{method}-2proc"
        config = root / f"{method}.json"
        params_for(chat_model, folders[method], projects[method], method, 2, 1).save_json(config)
        configs.append(str(config))
    scaled = params_for(scaled_model_dir(root / "scaled-model"), data, root / "scaled-2proc", "orpo", 2, 1, peft=True)
    scaled.save_json(root / "scaled.json")
    script = root / "launched.py"
    script.write_text(textwrap.dedent(LAUNCHED))
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         str(Path(__file__).resolve().parents[1]), *configs, str(root / "scaled.json")], capture_output=True, text=True,
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


# --- every loss type of dpo and cpo, at the step -------------------------------------------------------------------
# name -> (trainer, options of its terms). Each is a per-pair loss (plus the NLL's token mean for sft), so its step
# reduces as any other method's: the shares of micro-batches of 2, 1 and 4 pairs give the 7-pair batch's loss and
# gradient. Not here: TRL's aot and aot_unpaired, which sort across the batch (refused, autotrain.params.loss_types).
MENU = {
    # robust at e 0.02: its two terms cancel less than at the authors' 0.1, which on this batch's margins leaves a
    # loss near 0 whose float32 rounding (packed against padded) is 1e-5 of itself
    **{f"dpo {name}": ("dpo", {"loss_type": (name,), "label_smoothing": {"exo_pair": 0.1, "robust": 0.02}.get(name, 0.0),
                               "discopop_tau": 0.05})
       for name in ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "apo_zero",
                    "apo_down", "discopop", "sigmoid_norm")},
    "dpo cDPO": ("dpo", {"loss_type": ("sigmoid",), "label_smoothing": 0.2}),
    "dpo sigmoid,bco_pair,sft": ("dpo", {"loss_type": ("sigmoid", "bco_pair", "sft"), "loss_weights": (0.8, 0.2, 1.0)}),
    "dpo ipo, LD-DPO": ("dpo", {"loss_type": ("ipo",), "ld_alpha": 0.3}),
    **{f"cpo {name}": ("cpo", {"loss_type": (name,), "alpha": 0.5}) for name in ("hinge", "ipo")},
    "cpo sigmoid, label smoothing": ("cpo", {"loss_type": ("sigmoid",), "alpha": 1.0, "label_smoothing": 0.1}),
    "cpo alphapo": ("cpo", {"loss_type": ("alphapo",), "alpha": 0.0, "gamma": 0.1, "alphapo_alpha": 0.25}),
}


@pytest.fixture(scope="module")
def policy_and_reference():
    from test_packing import tiny_model

    return tiny_model(seed=2), tiny_model(seed=4)


@pytest.mark.parametrize("case", list(MENU))
def test_every_loss_type_is_one_loss_however_the_step_is_split(case, policy_and_reference):
    from test_packing import ODD, assert_same, random_pairs

    from autotrain.batch.packed import PackedCollator
    from autotrain.batch.padded import PaddedCollator
    from autotrain.model.forward import sequence_logps
    from autotrain.params import methods

    trainer, options = MENU[case]
    options = dict(options)
    ld = options.pop("ld_alpha", None)
    # DiscoPOP at its authors' beta: at 0.5 this batch's margins reach exp(10) in its exponential term, whose float32
    # gradient then differs packed and padded at 5e-5
    beta = 0.05 if "discopop" in case else 0.5
    features = random_pairs(ODD, seed=6)
    terms = methods.load(trainer).terms
    model, ref = policy_and_reference
    model.zero_grad(set_to_none=True)
    reference = (lambda batch: sequence_logps(ref, batch).sums) if trainer == "dpo" else None

    whole = terms(model, PaddedCollator(0, ld_alpha=ld)(features), beta, reference, **options).loss()
    whole.backward()
    expected = (whole.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    model.zero_grad(set_to_none=True)
    parts = [PackedCollator(0, token_budget=30, ld_alpha=ld)(features[a:b]) for a, b in [(0, 2), (2, 3), (3, 7)]]
    tokens, total = sum(int(b["in_nll"].sum()) for b in parts), 0.0
    for batch in parts:
        loss = terms(model, batch, beta, reference, **options).loss(tokens, len(features))
        loss.backward()
        total += loss.item()
    assert_same((torch.tensor(total), {n: p.grad for n, p in model.named_parameters()}), expected)


@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
def test_kto_is_one_loss_however_the_step_is_split_given_the_steps_kl_point(loss_type, policy_and_reference):
    """kto's examples are rows of the step's reduction like pairs, each loss at its class's weight, so the shares of
    micro-batches of 2, 1 and 4 examples give the 7-example batch's loss and gradient once every share reads the
    step's KL reference point (what the trainer hands them). With each micro-batch's own point, as TRL takes it, the
    shares miss it: the point sits inside each example's sigmoid, and no sum of shares can undo that."""
    from test_packing import ODD, assert_same, random_pairs

    from autotrain.batch.packed import PackedCollator
    from autotrain.batch.padded import PaddedCollator
    from autotrain.model.forward import sequence_logps
    from autotrain.params import methods
    from autotrain.train.methods.base import STEP_STATISTIC

    features = [{**f, "label": i % 3 != 0, **({} if loss_type == "kto" else {"rejected_ids": []})}
                for i, f in enumerate(random_pairs(ODD, seed=6))]
    method = methods.load("kto")
    options = {"loss_type": (loss_type,), "desirable_weight": 1.5, "undesirable_weight": 0.8}
    ref, model = policy_and_reference  # this way round the batch's KL point is above 0: not clamped away
    reference = lambda batch: sequence_logps(ref, batch).sums  # noqa: E731

    def shares(step_point: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        model.zero_grad(set_to_none=True)
        total = 0.0
        for a, b in [(0, 2), (2, 3), (3, 7)]:
            batch = PackedCollator(0, token_budget=30)(features[a:b])
            if step_point is not None:
                batch[STEP_STATISTIC] = step_point
            loss = method.terms(model, batch, 0.5, reference, **options).loss(0, len(features))
            loss.backward()
            total += loss.item()
        return torch.tensor(total), {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad(set_to_none=True)
    whole_batch = PaddedCollator(0)(features)
    whole = method.terms(model, whole_batch, 0.5, reference, **options)
    whole.loss().backward()
    expected = (whole.loss().detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    values = method.step_values(model, whole_batch, reference, **options)
    if loss_type == "apo_zero_unpaired":  # no reference point: nothing to hand over
        assert values is None
        assert_same(shares(None), expected)
        return
    step_point = method.step_statistic(values.sum(), values.numel())
    assert step_point.item() == pytest.approx(whole.metrics["kl"][0].item()) and step_point.item() > 0
    assert_same(shares(step_point), expected)
    own, _ = shares(None)
    assert abs(own.item() - expected[0].item()) > 1e-3 * abs(expected[0].item())
