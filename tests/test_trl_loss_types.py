"""Every --loss-type of dpo and cpo equals TRL 1.16 on one tiny model and one batch: the first-step loss and TRL's
metrics (rewards/*, logps/*) at 1e-5, padded and packed, with a separate reference model and with LoRA (adapters
off as the reference). TRL is test-only; one trainer per reference mode, its loss settings swapped per case.

`pytest -s tests/test_trl_loss_types.py` prints the parity table (loss type, TRL, ours, relative difference).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
from conftest import make_tokenizer

from autotrain import methods
from autotrain.data.collate import PaddedCollator
from autotrain.data.pack import PackedCollator
from autotrain.forward import sequence_logps

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

BETA = 0.5  # not any loss's default, so a setting lost on the way shows
# name -> (--loss-type, --loss-weights, the other settings): every dpo loss type, combinations, LD-DPO.
DPO_CASES: dict[str, tuple[tuple[str, ...], tuple[float, ...] | None, dict[str, float]]] = {
    "sigmoid": (("sigmoid",), None, {}),
    "hinge": (("hinge",), None, {}),
    "ipo": (("ipo",), None, {}),
    "exo_pair": (("exo_pair",), None, {"label_smoothing": 1e-3}),
    "nca_pair": (("nca_pair",), None, {}),
    "robust": (("robust",), None, {"label_smoothing": 0.05}),
    "bco_pair": (("bco_pair",), None, {}),
    "sppo_hard": (("sppo_hard",), None, {}),
    "apo_zero": (("apo_zero",), None, {}),
    "apo_down": (("apo_down",), None, {}),
    "discopop": (("discopop",), None, {"discopop_tau": 0.3}),
    "sigmoid_norm": (("sigmoid_norm",), None, {}),
    "sigmoid,sft (RPO)": (("sigmoid", "sft"), (1.0, 0.7), {}),
    "sigmoid,bco_pair,sft (MPO)": (("sigmoid", "bco_pair", "sft"), (0.8, 0.2, 1.0), {}),
    "ipo + ld_alpha 0.3": (("ipo",), None, {"ld_alpha": 0.3}),
    "sigmoid + ld_alpha 0": (("sigmoid",), None, {"ld_alpha": 0.0}),
}
# name -> (our --loss-type, our settings, TRL's CPOConfig fields)
CPO_CASES: dict[str, tuple[str, dict[str, float], dict[str, Any]]] = {
    "sigmoid": ("sigmoid", {"alpha": 1.0}, {"loss_type": "sigmoid", "cpo_alpha": 1.0}),
    "sigmoid + label_smoothing": ("sigmoid", {"alpha": 0.5, "label_smoothing": 0.2},
                                  {"loss_type": "sigmoid", "cpo_alpha": 0.5, "label_smoothing": 0.2}),
    "hinge": ("hinge", {"alpha": 1.0}, {"loss_type": "hinge", "cpo_alpha": 1.0}),
    "ipo": ("ipo", {"alpha": 0.3}, {"loss_type": "ipo", "cpo_alpha": 0.3}),
    "alphapo": ("alphapo", {"alpha": 0.0, "gamma": 0.4, "alphapo_alpha": 0.25},
                {"loss_type": "simpo", "cpo_alpha": 0.0, "simpo_gamma": 0.4, "alpha": 0.25}),
    "alphapo, alpha < 0": ("alphapo", {"alpha": 0.0, "gamma": 0.1, "alphapo_alpha": -0.5},
                           {"loss_type": "simpo", "cpo_alpha": 0.0, "simpo_gamma": 0.1, "alpha": -0.5}),
}
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
           "logps/rejected")
TABLE: list[tuple[str, str, float, float]] = []


def features() -> list[dict]:
    """Four pairs of uneven lengths (chosen longer and shorter than rejected: LD-DPO reweighs both)."""
    g = torch.Generator().manual_seed(1)
    draw = lambda n: torch.randint(5, 100, (n,), generator=g).tolist()  # noqa: E731
    return [{"prompt_ids": draw(p), "chosen_ids": draw(c), "rejected_ids": draw(r)}
            for p, c, r in [(5, 3, 7), (2, 6, 1), (9, 4, 4), (3, 8, 5)]]


def perturbed(model: torch.nn.Module, seed: int, scale: float = 0.5) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():  # far from uniform log-probs
        for name, p in model.named_parameters():
            if "lora_A" not in name:
                p.add_(torch.randn_like(p) * scale)
    return model


def base_model(chat_model, seed: int) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return perturbed(AutoModelForCausalLM.from_pretrained(chat_model, dtype=torch.float32), seed)


LORA = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "up_proj"])


@pytest.fixture(scope="module")
def table():
    yield TABLE
    if TABLE:
        width = max(len(row[0]) for row in TABLE)
        lines = [f"{'loss type':<{width}}  {'TRL 1.16':>14}  {'ours':>14}  relative difference"]
        lines += [f"{name:<{width}}  {trl:>14.8f}  {ours:>14.8f}  {abs(ours - trl) / max(abs(trl), 1e-12):.2e}"
                  for name, _, trl, ours in TABLE]
        print("\n" + "\n".join(lines))


def trl_trainer(trainer_class: type, args: Any, chat_model, peft: bool, **extra: Any) -> Any:
    """A TRL trainer on the perturbed tiny model, in eval mode; with LoRA its adapters' B perturbed too, so the
    policy differs from the reference it gets by turning them off."""
    from datasets import Dataset
    from peft import LoraConfig

    rows = Dataset.from_list([{"prompt": "1+1=", "chosen": "2", "rejected": "3"}])
    trainer = trainer_class(model=base_model(chat_model, seed=3), args=args, train_dataset=rows,
                            processing_class=make_tokenizer(chat=True),
                            **({"peft_config": LoraConfig(**LORA)} if peft else {}), **extra)
    if peft:
        perturbed(trainer.model, seed=5)
    trainer.model.eval()
    return trainer


@pytest.fixture(scope="module")
def dpo_trainers(tmp_path_factory, chat_model):
    """TRL's DPOTrainer with a separate reference model, and with LoRA."""
    from trl import DPOConfig, DPOTrainer

    def args() -> Any:
        return DPOConfig(output_dir=str(tmp_path_factory.mktemp("dpo")), beta=BETA, report_to=[], use_cpu=True,
                         bf16=False, gradient_checkpointing=False)

    return {"reference model": trl_trainer(DPOTrainer, args(), chat_model, peft=False,
                                           ref_model=base_model(chat_model, seed=7)),
            "peft": trl_trainer(DPOTrainer, args(), chat_model, peft=True)}


def ours(method: str, model: torch.nn.Module, batch: dict, beta: float, options: dict,
         reference: Any = None) -> tuple[float, dict[str, float]]:
    terms = methods.load(method).terms(model, batch, beta, reference, **options)
    return terms.loss().item(), {name: value.item() for name, value in terms.batch_metrics().items()}


def assert_equal(name: str, trl_loss: float, trl_metrics: dict, loss: float, metrics: dict) -> None:
    """The loss within 1e-5 of TRL's; each metric within 1e-5 of the metrics' scale: a reward is a difference of
    summed log-probs (~50 in float32, rounded at ~5e-6 in either implementation), so a small reward or margin is
    compared at the precision of the sums it comes from, not at 1e-5 of itself."""
    TABLE.append((name, "", trl_loss, loss))
    assert loss == pytest.approx(trl_loss, rel=1e-5, abs=1e-7), name
    scale = max(abs(trl_metrics[key]) for key in METRICS)
    for key in METRICS:
        assert metrics[key] == pytest.approx(trl_metrics[key], rel=0, abs=1e-5 * scale), f"{name}: {key}"


@pytest.mark.parametrize("mode", ["reference model", "peft"])
@pytest.mark.parametrize("case", list(DPO_CASES))
def test_dpo_loss_types_match_trl(dpo_trainers, table, case, mode):
    loss_type, weights, settings = DPO_CASES[case]
    trainer = dpo_trainers[mode]
    trainer.loss_types, trainer.loss_weights = list(loss_type), list(weights or [1.0] * len(loss_type))
    trainer.label_smoothing = settings.get("label_smoothing", 0.0)
    trainer.ld_alpha = settings.get("ld_alpha")
    trainer.args.discopop_tau = settings.get("discopop_tau", 0.05)
    trainer._metrics["eval"].clear()
    model, pad = trainer.model, trainer.processing_class.pad_token_id
    with torch.no_grad():
        trl_loss = trainer._compute_loss(model, trainer.data_collator(features()), return_outputs=False).item()
    trl_metrics = {key: values[-1] for key, values in trainer._metrics["eval"].items()}

    def reference(batch: dict) -> torch.Tensor:
        if mode == "peft":
            with model.disable_adapter():
                return sequence_logps(model, batch).sums
        return sequence_logps(trainer.ref_model, batch).sums

    options = {"loss_type": loss_type, "loss_weights": weights, "label_smoothing": settings.get("label_smoothing", 0.0),
               "discopop_tau": settings.get("discopop_tau", 0.05)}
    ld = settings.get("ld_alpha")
    for layout, collate in (("padded", PaddedCollator(pad, ld_alpha=ld)),
                            ("packed", PackedCollator(pad, token_budget=40, ld_alpha=ld))):
        batch = collate(features())
        with torch.no_grad():
            loss, metrics = ours("dpo", model, batch, BETA, options, reference)
        assert_equal(f"dpo {case}, {mode}, {layout}", trl_loss, trl_metrics, loss, metrics)
    assert batch["input_ids"].shape[0] > 1  # the packed batch holds several rows, and pairs share them


@pytest.fixture(scope="module")
def cpo_trainers(tmp_path_factory, chat_model):
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    def args() -> Any:
        return CPOConfig(output_dir=str(tmp_path_factory.mktemp("cpo")), beta=BETA, report_to=[], max_length=64,
                         use_cpu=True, bf16=False)

    return {mode: trl_trainer(CPOTrainer, args(), chat_model, peft=mode == "peft") for mode in ("full", "peft")}


@pytest.mark.parametrize("mode", ["full", "peft"])
@pytest.mark.parametrize("case", list(CPO_CASES))
def test_cpo_loss_types_match_trl(cpo_trainers, table, case, mode):
    from test_trl_equivalence import trl_batch

    loss_type, settings, trl_settings = CPO_CASES[case]
    trainer = cpo_trainers[mode]
    trainer.label_smoothing, trainer.simpo_gamma, trainer.alpha = 0.0, 0.0, 0.0
    for key, value in trl_settings.items():
        setattr(trainer, key, value)
    model, pad = trainer.model, trainer.processing_class.pad_token_id
    with torch.no_grad():
        trl_loss, trl_metrics = trainer.get_batch_loss_metrics(model, trl_batch(features(), pad))
    options = {"loss_type": (loss_type,), **settings}
    for layout, collate in (("padded", PaddedCollator(pad)), ("packed", PackedCollator(pad, token_budget=40))):
        with torch.no_grad():
            loss, metrics = ours("cpo", model, collate(features()), BETA, options)
        assert_equal(f"cpo {case}, {mode}, {layout}", trl_loss.item(), trl_metrics, loss, metrics)
        if settings["alpha"]:  # TRL logs nll_loss 0 when it does not train on it; this pipeline always reports it
            assert metrics["nll_loss"] == pytest.approx(trl_metrics["nll_loss"], rel=1e-5)
