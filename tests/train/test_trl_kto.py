"""--trainer kto equals TRL 1.16's KTOTrainer on unpaired rows, one micro-batch: the same tokenized examples (each
one's KL completion included), and the first-step loss, KL reference point, rewards and log-probs at 1e-5, padded and
packed, with a separate reference model and with LoRA (adapters off as the reference), for kto and apo_zero_unpaired.
TRL is test-only.

`pytest -s tests/test_trl_kto.py` prints the parity table (case, TRL, ours, relative difference).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import make_tokenizer, write_jsonl
from test_trl_loss_types import LORA, base_model, parity_table, perturbed, reference_of

from autotrain.batch.packed import PackedCollator
from autotrain.batch.padded import PaddedCollator
from autotrain.params import methods
from autotrain.trainers.clm.params import LLMTrainingParams

BETA, DESIRABLE, UNDESIRABLE = 0.4, 1.3, 0.7  # none of them a default, so a setting lost on the way shows
# Uneven lengths; three desirable answers and two undesirable ones, so a mean over all examples is not a class's.
ROWS = [{"prompt": "What is 12+30?", "completion": " 42", "label": True},
        {"prompt": "Name a colour.", "completion": " The sky is sometimes green.", "label": False},
        {"prompt": "2*3=", "completion": "6", "label": True},
        {"prompt": "Say hi.", "completion": " Goodbye forever, I refuse.", "label": False},
        {"prompt": "Capital of France?", "completion": " Paris", "label": True}]
METRICS = ("kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected")
TABLE: list[tuple[str, float, float]] = []


@pytest.fixture(scope="module")
def table():
    yield TABLE
    if TABLE:
        print(parity_table("case", TABLE))


@pytest.fixture(scope="module")
def trainers(tmp_path_factory, chat_model) -> dict[tuple[str, str], Any]:
    """TRL's KTOTrainer per (loss type, reference mode), its whole dataset one batch, in eval mode."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import KTOConfig, KTOTrainer

    found = {}
    for loss_type in ("kto", "apo_zero_unpaired"):
        for mode in ("reference model", "peft"):
            args = KTOConfig(output_dir=str(tmp_path_factory.mktemp("kto")), beta=BETA, loss_type=loss_type,
                             desirable_weight=DESIRABLE, undesirable_weight=UNDESIRABLE,
                             per_device_train_batch_size=len(ROWS), report_to=[], use_cpu=True, bf16=False,
                             gradient_checkpointing=False)
            peft = mode == "peft"
            # Seeds under which the KL point is above 0 (not clamped away) in both modes
            trainer = KTOTrainer(model=base_model(chat_model, seed=7), args=args, train_dataset=Dataset.from_list(ROWS),
                                 processing_class=make_tokenizer(chat=True),
                                 **({"peft_config": LoraConfig(**LORA)} if peft else
                                    {"ref_model": base_model(chat_model, seed=3)}))
            if peft:
                perturbed(trainer.model, seed=5)
            trainer.model.eval()
            found[loss_type, mode] = trainer
    return found


def our_examples(tmp_path, chat_model, loss_type: str) -> list[dict]:
    """The rows through this tool's data stage (no chat template, as TRL reads plain strings)."""
    from autotrain.data.prepare import prepare_data

    params = LLMTrainingParams(model=str(chat_model), data_path=str(write_jsonl(tmp_path / "rows.jsonl", ROWS)),
                               trainer="kto", loss_type=loss_type, chat_template="none",
                               project_name=str(tmp_path / "p"))
    dataset = prepare_data(params, make_tokenizer(chat=True), 512).train.dataset
    return [dataset[i] for i in range(len(dataset))]


@pytest.mark.parametrize("mode", ["reference model", "peft"])
@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
def test_kto_matches_trl(trainers, table, tmp_path, chat_model, monkeypatch, loss_type, mode):
    monkeypatch.setenv("AITRAINING_CACHE", str(tmp_path / "cache"))
    trainer = trainers[loss_type, mode]
    theirs = [trainer.train_dataset[i] for i in range(len(ROWS))]
    examples = our_examples(tmp_path, chat_model, loss_type)
    # The same examples: prompt, completion, label and TRL's mismatched KL completion (rotated by one)
    assert [e["prompt_ids"] for e in examples] == [t["prompt_ids"] for t in theirs]
    assert [e["chosen_ids"] for e in examples] == [t["completion_ids"] for t in theirs]
    assert [e["label"] for e in examples] == [t["label"] for t in theirs] == [row["label"] for row in ROWS]
    if loss_type == "kto":
        assert [e["rejected_ids"] for e in examples] == [t["KL_completion_ids"] for t in theirs]
    else:
        assert "KL_completion_ids" not in theirs[0] and all(not e["rejected_ids"] for e in examples)

    trainer._metrics["eval"].clear()
    model = trainer.model
    with torch.no_grad():
        trl_loss = trainer._compute_loss(model, trainer.data_collator(theirs), return_outputs=False).item()
    trl_metrics = {key: values[-1] for key, values in trainer._metrics["eval"].items()}

    reference = reference_of(trainer, peft=mode == "peft")
    options = {"loss_type": (loss_type,), "desirable_weight": DESIRABLE, "undesirable_weight": UNDESIRABLE}
    pad = trainer.processing_class.pad_token_id
    for layout, collate in (("padded", PaddedCollator(pad)), ("packed", PackedCollator(pad, token_budget=40))):
        batch = collate(examples)
        with torch.no_grad():
            terms = methods.load("kto").terms(model, batch, BETA, reference, **options)
            loss, metrics = terms.loss().item(), {k: v.item() for k, v in terms.batch_metrics().items()}
        name = f"{loss_type}, {mode}, {layout}"
        table.append((f"{name}: loss", trl_loss, loss))
        table.extend((f"{name}: {key}", trl_metrics[key], metrics[key]) for key in METRICS[:3])
        assert loss == pytest.approx(trl_loss, rel=1e-5, abs=1e-7), name
        # A reward is beta times a difference of summed log-probs: compared at 1e-5 of the metrics' scale.
        scale = max(abs(trl_metrics[key]) for key in METRICS)
        for key in METRICS:
            assert metrics[key] == pytest.approx(trl_metrics[key], rel=0, abs=1e-5 * scale), f"{name}: {key}"
    assert batch["input_ids"].shape[0] > 1  # the packed batch holds several rows, and examples share them
    if loss_type == "kto":
        assert trl_metrics["kl"] > 0  # a reference point the loss reads, not clamped to 0 on this batch
