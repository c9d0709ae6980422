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


# --- Tool rows --------------------------------------------------------------------------------------------------------

TOOL_PAIRS = [  # single-turn answers, the shape TRL's preference rows take; tools as a list, passed to TRL as tools=
    {"prompt": [{"role": "user", "content": "Weather in Paris?"}], "chosen": "call Paris",
     "rejected": "call Lyon with text"},
    {"prompt": [{"role": "user", "content": "Weather in Lyon?"}], "chosen": "call Lyon", "rejected": "No idea."},
]


def tool_pairs() -> list[dict]:
    from tool_templates import WEATHER_TOOL, call

    answers = {"call Paris": [call("Paris")], "call Lyon": [call("Lyon")],
               "call Lyon with text": [call("Lyon", content="Let me check.")],
               "No idea.": [{"role": "assistant", "content": "No idea."}]}
    return [{"prompt": r["prompt"], "chosen": answers[r["chosen"]], "rejected": answers[r["rejected"]],
             "tools": [WEATHER_TOOL]} for r in TOOL_PAIRS]


@pytest.mark.parametrize("name", ["tools-in-system", "json-in-tag", "special-block"])
def test_tool_rows_render_the_prompt_trl_renders(name):
    from tool_templates import TEMPLATES, tool_tokenizer
    from trl.data_utils import maybe_apply_chat_template

    from autotrain.data.render import Columns, Renderer

    tok = tool_tokenizer(TEMPLATES[name])
    renderer = Renderer(tok, tok.chat_template, Columns("prompt", "chosen", "rejected", tools="tools"))
    for row in tool_pairs():
        ours = renderer.pairs(row, "mem.jsonl:1")[0]
        example = {key: row[key] for key in ("prompt", "chosen", "rejected")}
        trl = maybe_apply_chat_template(example, tok, tools=row["tools"])
        assert ours.prompt == trl["prompt"]
        if name != "json-in-tag":  # there the answers' empty think blocks are context, cut out as pieces
            assert (ours.chosen, ours.rejected) == (trl["chosen"], trl["rejected"])


@pytest.mark.parametrize("beta", [0.1, 1.0])
@pytest.mark.parametrize("name", ["tools-in-system", "json-in-tag", "special-block"])
def test_tool_rows_loss_matches_trl_orpo_first_step(tmp_path, name, beta):
    """special-block's turns end with EOS: TRL's ORPOTrainer tokenizes its own text rows (rendered with tools=, the
    only way TRL takes tool definitions) into the ids this project trains, and its first-step loss is compared. The
    ChatML-like templates end a turn with a newline after <|im_end|>, where TRL appends a second EOS; there its loss
    is computed on this project's ids."""
    from datasets import Dataset
    from test_packing import tiny_model
    from tool_templates import TEMPLATES, VOCAB_SIZE, tool_tokenizer
    from trl.data_utils import maybe_apply_chat_template
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    from autotrain.data.render import Columns, Renderer
    from autotrain.data.sources import RawSplit
    from autotrain.data.tokenize import Limits, tokenize_split

    tok = tool_tokenizer(TEMPLATES[name])
    rows = tool_pairs()
    renderer = Renderer(tok, tok.chat_template, Columns("prompt", "chosen", "rejected", tools="tools"),
                        reasoning_loss="include")
    ours_split = tokenize_split(RawSplit("mem.jsonl", rows, [1, 2]), renderer, tok,
                                Limits(4000, None, 4000), tmp_path / "t.arrow")
    features = [ours_split.dataset[k] for k in range(len(rows))]
    if name == "json-in-tag":  # its empty think blocks are context here; TRL trains them: compare the same targets
        features = [{**f, "chosen_mask": [], "rejected_mask": []} for f in features]
    model = tiny_model(vocab=VOCAB_SIZE, seed=4).eval()
    texts = Dataset.from_list([maybe_apply_chat_template({k: r[k] for k in ("prompt", "chosen", "rejected")}, tok,
                                                         tools=r["tools"]) for r in rows])
    args = ORPOConfig(output_dir=str(tmp_path), beta=beta, report_to=[], max_length=4000, use_cpu=True,
                      per_device_train_batch_size=2, remove_unused_columns=False)
    trainer = ORPOTrainer(model=model, args=args, train_dataset=texts, processing_class=tok)
    if name == "special-block":
        batch = next(iter(trainer.get_train_dataloader()))
        trl_ids = sorted(zip(batch["chosen_input_ids"].tolist(), batch["rejected_input_ids"].tolist()))
        assert trl_ids == sorted(_padded(f, tok.pad_token_id, batch) for f in features)
    else:
        batch = trl_batch(features, tok.pad_token_id)
    with torch.no_grad():
        trl_loss, _ = trainer.get_batch_loss_metrics(model, batch)
        ours, _ = orpo_step(model, PaddedCollator(tok.pad_token_id, prompt_loss=True)(features), beta)
    assert ours.item() == pytest.approx(trl_loss.item(), rel=1e-5)


def _padded(feature: dict, pad: int, batch: dict) -> tuple[list[int], list[int]]:
    """A pair's prompt+chosen and prompt+rejected ids, right-padded to the TRL batch's widths."""
    sides = []
    for side in ("chosen", "rejected"):
        seq = feature["prompt_ids"] + feature[f"{side}_ids"]
        sides.append(seq + [pad] * (batch[f"{side}_input_ids"].shape[1] - len(seq)))
    return tuple(sides)
