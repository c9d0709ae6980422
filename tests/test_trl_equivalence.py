"""With orpo_prompt_loss=True the loss equals TRL's ORPOTrainer's on the same model and batch (TRL is test-only)."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import make_tokenizer

from autotrain.data.collate import PaddedCollator
from autotrain.methods.orpo import orpo_step

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def trl_batch(features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """TRL's per-side layout: prompt+answer ids, labels with the prompt masked as -100, right-padded per side."""
    batch = {}
    for side in ("chosen", "rejected"):
        seqs = [f["prompt_ids"] + f[f"{side}_ids"] for f in features]
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), pad_id)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        labels = torch.full((len(seqs), width), -100)
        for i, (f, seq) in enumerate(zip(features, seqs)):
            ids[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
            labels[i, len(f["prompt_ids"]) : len(seq)] = torch.tensor(f[f"{side}_ids"])
        batch.update({f"{side}_input_ids": ids, f"{side}_attention_mask": mask, f"{side}_labels": labels})
    return batch


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_loss_matches_trl_orpo_trainer(tmp_path, chat_model, beta):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(chat_model, dtype=torch.float32)
    # Perturb the weights so that the tiny model's log-probs are far from uniform.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    tokenizer = make_tokenizer(chat=True)
    rows = Dataset.from_list([{"prompt": "1+1=", "chosen": "2", "rejected": "3"}])
    args = ORPOConfig(output_dir=str(tmp_path), beta=beta, report_to=[], max_length=64, use_cpu=True)
    trainer = ORPOTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)

    generator = torch.Generator().manual_seed(1)
    features = []
    for prompt_len, chosen_len, rejected_len in [(5, 3, 7), (2, 6, 1), (9, 4, 4)]:
        draw = lambda n: torch.randint(5, 100, (n,), generator=generator).tolist()  # noqa: E731
        features.append({"prompt_ids": draw(prompt_len), "chosen_ids": draw(chosen_len),
                          "rejected_ids": draw(rejected_len)})

    model.eval()
    with torch.no_grad():
        trl_loss, trl_metrics = trainer.get_batch_loss_metrics(model, trl_batch(features, tokenizer.pad_token_id))
        ours, metrics = orpo_step(model, PaddedCollator(tokenizer.pad_token_id, prompt_loss=True)(features), beta)

    assert ours.item() == pytest.approx(trl_loss.item(), rel=1e-5)
    for name in ("nll_loss", "log_odds_ratio", "log_odds_chosen", "logps/chosen", "logps/rejected",
                 "rewards/accuracies", "rewards/margins"):
        assert metrics[name].item() == pytest.approx(trl_metrics[name], rel=1e-5, abs=1e-7), name
