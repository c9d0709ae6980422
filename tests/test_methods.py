"""DPO and SFT on the shared pipeline: their losses against independent computations (float64 formulas, transformers'
own full-logit forward and cross-entropy), packing for DPO, the reference without a second model under PEFT,
precomputed reference log-probs, and end-to-end runs through both entry points."""

from __future__ import annotations

import gc
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import IM_END, IM_START, NEWLINE, arithmetic_pairs, char_ids, greedy_answer, write_jsonl
from test_packing import ODD, assert_same, random_pairs, tiny_model

from autotrain.data.collate import PaddedCollator
from autotrain.data.pack import PackedCollator
from autotrain.pair_losses import dpo_loss
from autotrain.project import AutoTrainProject
from autotrain.trainers.clm.params import LLMTrainingParams
from autotrain.methods.dpo import dpo_step
from autotrain.methods.sft import sft_step

LN2 = math.log(2.0)


def records_of(project: Path) -> list[dict]:
    return [json.loads(line) for line in (project / "metrics.jsonl").read_text().splitlines()]


def full_logit_sums(model: torch.nn.Module, prompt: list[int], completion: list[int]) -> float:
    """Summed completion log-probs from transformers' ordinary forward (full logits), in float64."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logps = model(input_ids=ids).logits[0].double().log_softmax(-1)
    return sum(logps[len(prompt) + t - 1, tok].item() for t, tok in enumerate(completion))


# --- DPO loss --------------------------------------------------------------------------------------------------


def test_dpo_loss_matches_a_float64_reference():
    c, r, rc, rr = [-3.0, -10.5, -0.25], [-4.0, -9.0, -30.0], [-3.5, -10.0, -1.0], [-3.8, -9.9, -25.0]
    beta = 0.3
    expected = []
    for i in range(3):
        margin = (c[i] - rc[i]) - (r[i] - rr[i])
        expected.append(math.log1p(math.exp(-beta * margin)))  # -log sigmoid(x) = log(1 + e^-x)
    out = dpo_loss(*(torch.tensor(v, dtype=torch.float64) for v in (c, r, rc, rr)), beta)
    assert out.loss.item() == pytest.approx(sum(expected) / 3, rel=1e-12)
    assert out.chosen_rewards.tolist() == pytest.approx([beta * (c[i] - rc[i]) for i in range(3)], rel=1e-12)
    assert out.rejected_rewards.tolist() == pytest.approx([beta * (r[i] - rr[i]) for i in range(3)], rel=1e-12)


def test_dpo_loss_is_stable_for_huge_margins_and_ln2_at_zero():
    policy = torch.tensor([-1e4, 0.0], requires_grad=True)
    out = dpo_loss(policy, torch.tensor([0.0, -1e4]), torch.zeros(2), torch.zeros(2), beta=1.0)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(policy.grad).all()
    assert out.loss.item() == pytest.approx(1e4 / 2, rel=1e-6)  # pair 0: -log sigmoid(-1e4) = 1e4; pair 1: ~0
    same = torch.tensor([-5.0])
    assert dpo_loss(same, same - 1, same, same - 1, beta=0.5).loss.item() == pytest.approx(LN2, rel=1e-7)


def test_dpo_step_matches_full_logit_log_probs_and_the_formula():
    policy, ref = tiny_model(seed=0), tiny_model(seed=3)
    pairs = random_pairs([(4, 3, 5), (2, 6, 2), (7, 1, 3)])
    beta = 0.2
    margins = []
    for p in pairs:
        sums = {side: full_logit_sums(policy, p["prompt_ids"], p[f"{side}_ids"]) for side in ("chosen", "rejected")}
        refs = {side: full_logit_sums(ref, p["prompt_ids"], p[f"{side}_ids"]) for side in ("chosen", "rejected")}
        margins.append((sums["chosen"] - refs["chosen"]) - (sums["rejected"] - refs["rejected"]))
    expected = sum(math.log1p(math.exp(-beta * m)) for m in margins) / len(margins)
    ref_sums = torch.tensor(
        [full_logit_sums(ref, p["prompt_ids"], p["chosen_ids"]) for p in pairs]
        + [full_logit_sums(ref, p["prompt_ids"], p["rejected_ids"]) for p in pairs]
    )
    for collate in (PaddedCollator(0), PackedCollator(0, token_budget=12)):
        loss, metrics = dpo_step(policy, collate(pairs), beta, lambda batch: ref_sums)
        assert loss.item() == pytest.approx(expected, rel=1e-5)
        assert metrics["rewards/accuracies"].item() == pytest.approx(sum(m > 0 for m in margins) / len(margins))


def test_packed_dpo_has_the_padded_loss_and_gradients():
    pairs = random_pairs(ODD)
    ref_sums = -torch.rand(2 * len(pairs), generator=torch.Generator().manual_seed(0)) * 20
    results = []
    for collate in (PaddedCollator(0), PackedCollator(0, token_budget=24)):
        model = tiny_model(lora=True)
        loss, _ = dpo_step(model, collate(pairs), 0.1, lambda batch: ref_sums)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    assert_same(results[1], results[0])


# --- SFT loss --------------------------------------------------------------------------------------------------


def test_sft_masks_the_prompt_like_transformers_cross_entropy():
    model = tiny_model(seed=5)
    rows = [{"prompt_ids": [5, 9, 14], "chosen_ids": [20, 21, 2], "rejected_ids": []},
            {"prompt_ids": [7], "chosen_ids": [30, 31, 32, 33, 2], "rejected_ids": []}]
    width = max(len(r["prompt_ids"] + r["chosen_ids"]) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full_like(ids, -100)  # transformers ignores -100: prompt and padding are not trained on
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        seq = r["prompt_ids"] + r["chosen_ids"]
        ids[i, : len(seq)], mask[i, : len(seq)] = torch.tensor(seq), 1
        labels[i, len(r["prompt_ids"]) : len(seq)] = torch.tensor(r["chosen_ids"])
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
    for collate in (PaddedCollator(0), PackedCollator(0)):
        batch = collate(rows)
        loss, metrics = sft_step(model, batch, 0.1)
        assert loss.item() == pytest.approx(expected, rel=1e-5)
        assert batch["num_real_tokens"] == 3 + 3 + 1 + 5
    with torch.no_grad():
        unmasked = model(input_ids=ids, attention_mask=mask, labels=torch.where(mask.bool(), ids, -100)).loss.item()
    assert unmasked != pytest.approx(expected, rel=1e-3)  # the prompt mask matters for this data


# --- End to end ------------------------------------------------------------------------------------------------

RUN = dict(batch_size=2, gradient_accumulation=1, logging_steps=1, lr=1e-2, warmup_ratio=0.0, lora_dropout=0.0)


def split_folder(tmp_path: Path, train_rows: list[dict], valid_rows: list[dict]) -> Path:
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    write_jsonl(folder / "train.jsonl", train_rows)
    write_jsonl(folder / "validation.jsonl", valid_rows)
    return folder


def run(tmp_path: Path, model: Path, data: Path, name: str, **overrides) -> tuple[Path, list[dict]]:
    settings = {**RUN, **overrides}
    if not settings.get("peft"):
        settings.pop("lora_dropout")  # LoRA fields are refused without peft
    params = LLMTrainingParams(model=str(model), data_path=str(data), project_name=str(tmp_path / name), **settings)
    result = AutoTrainProject(params=params, backend="local", process=True).create()
    return result.output_dir, records_of(result.output_dir)


def live_parameter_count() -> int:
    gc.collect()
    seen, total = set(), 0
    for obj in gc.get_objects():
        if isinstance(obj, torch.nn.Parameter) and id(obj) not in seen:
            seen.add(id(obj))
            total += obj.numel()
    return total


def test_dpo_with_peft_keeps_one_copy_and_starts_at_ln2(tmp_path, chat_model, monkeypatch):
    from safetensors.torch import load_file

    from autotrain import models
    from autotrain.trainers.clm.trainer import PreferenceTrainer

    base = sum(t.numel() for t in load_file(chat_model / "model.safetensors").values())
    counted: list[int] = []
    real_step = PreferenceTrainer.training_step

    def counting_step(self, *args, **kwargs):
        counted.append(live_parameter_count())
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(PreferenceTrainer, "training_step", counting_step)
    monkeypatch.setattr(models, "load_reference", lambda *a, **k: pytest.fail("a second model was loaded"))
    data = split_folder(tmp_path, arithmetic_pairs(8), arithmetic_pairs(2, start=40))
    before = live_parameter_count()  # whatever earlier tests still hold
    project, records = run(tmp_path, chat_model, data, "dpo-peft", trainer="dpo", peft=True, lora_r=4, lora_alpha=8,
                           valid_split="validation", max_steps=2, dpo_beta=0.5)
    evals = [r for r in records if "eval_loss" in r]
    # Before any step the adapters are zero, so policy == reference: every margin is 0 and the loss is log 2.
    assert evals[0]["step"] == 0 and evals[0]["eval_loss"] == pytest.approx(LN2, rel=1e-6)
    assert evals[0]["eval_rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert len(counted) == 2 and max(counted) - before < 1.5 * base  # one copy of the weights (plus LoRA), not two
    assert (project / "adapter" / "adapter_model.safetensors").exists()


def test_dpo_full_finetune_loads_a_frozen_reference_copy(tmp_path, chat_model, monkeypatch):
    from autotrain import models

    loaded = []
    real = models.load_reference
    monkeypatch.setattr(models, "load_reference", lambda *a, **k: loaded.append(a[1]) or real(*a, **k))
    data = split_folder(tmp_path, arithmetic_pairs(8), arithmetic_pairs(2, start=40))
    project, records = run(tmp_path, chat_model, data, "dpo-full", trainer="dpo", valid_split="validation",
                           max_steps=2)
    assert loaded == [str(chat_model)]
    card = (project / "README.md").read_text()  # DPO's accuracy is about rewards over the reference, not log-odds
    assert "where chosen gained more log-probability over the reference than rejected." in card
    assert "log-odds" not in card
    evals = [r for r in records if "eval_loss" in r]
    assert evals[0]["eval_loss"] == pytest.approx(LN2, rel=1e-6)
    assert evals[-1]["step"] == 2 and evals[-1]["eval_loss"] != pytest.approx(LN2, rel=1e-4)  # the policy moved


def test_model_ref_is_the_reference(tmp_path, chat_model, tmp_path_factory):
    from conftest import make_model_dir
    from transformers import AutoModelForCausalLM

    ref_dir = make_model_dir(tmp_path_factory.mktemp("ref-model"), chat=True, seed=7)
    valid = arithmetic_pairs(2, start=40)
    data = split_folder(tmp_path, arithmetic_pairs(4), valid)
    _, records = run(tmp_path, chat_model, data, "dpo-ref", trainer="dpo", valid_split="validation", max_steps=1,
                     model_ref=str(ref_dir), dpo_beta=0.5)
    policy, ref = AutoModelForCausalLM.from_pretrained(chat_model), AutoModelForCausalLM.from_pretrained(ref_dir)
    prompt = lambda p: [IM_START, *char_ids("user\n" + p), IM_END, NEWLINE, IM_START, *char_ids("assistant\n")]  # noqa: E731
    answer = lambda a: [*char_ids(a), IM_END, NEWLINE]  # noqa: E731
    losses = []
    for row in valid:
        gains = [full_logit_sums(policy, prompt(row["prompt"]), answer(row[s]))
                 - full_logit_sums(ref, prompt(row["prompt"]), answer(row[s])) for s in ("chosen", "rejected")]
        losses.append(math.log1p(math.exp(-0.5 * (gains[0] - gains[1]))))
    evals = [r for r in records if "eval_loss" in r]
    assert evals[0]["eval_loss"] == pytest.approx(sum(losses) / 2, rel=1e-5)


def test_precomputed_reference_gives_the_same_run(tmp_path, chat_model):
    data = write_jsonl(tmp_path / "pairs.jsonl", arithmetic_pairs(8))
    losses = {}
    for precompute in (False, True):
        _, records = run(tmp_path, chat_model, data, f"pre{precompute}", trainer="dpo", peft=True, max_steps=4,
                         precompute_ref_logps=precompute)
        losses[precompute] = [r["loss"] for r in records if "loss" in r and "train_runtime" not in r]
    assert len(losses[True]) == 4 and losses[True][0] == pytest.approx(LN2, rel=1e-6)
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    assert any(abs(loss - LN2) > 1e-3 for loss in losses[True][1:])  # training moved the policy off the reference


def test_sft_on_messages_with_eval_steps_through_the_python_api(tmp_path, chat_model):
    conversation = lambda i: {"messages": [  # noqa: E731
        {"role": "user", "content": f"{i}+1="}, {"role": "assistant", "content": f"{i + 1}"},
        {"role": "user", "content": "again"}, {"role": "assistant", "content": f"{i + 1}!"}]}
    data = split_folder(tmp_path, [conversation(i) for i in range(8)], [conversation(i) for i in range(20, 22)])
    project, records = run(tmp_path, chat_model, data, "sft", trainer="default", valid_split="validation",
                           max_steps=4, eval_strategy="steps", eval_steps=2)
    assert [r["step"] for r in records if "eval_loss" in r] == [0, 2, 4]
    train_steps = [r for r in records if "loss" in r and "train_runtime" not in r]
    assert all(r["loss"] == pytest.approx(r["nll_loss"], rel=1e-5) for r in train_steps)
    assert not any("rewards/accuracies" in r for r in records)
    card = (project / "README.md").read_text()
    assert "8 examples" in card and "tags: [aitraining, sft]" in card


def test_sft_conversation_trains_every_assistant_turn_and_masks_the_others(tmp_path, chat_model):
    from autotrain.data.prepare import prepare_data
    from autotrain.models import load_tokenizer

    rows = [{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "a"},
                          {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
                          {"role": "tool", "content": "t"}, {"role": "assistant", "content": "d"}]}]
    data = write_jsonl(tmp_path / "conv.jsonl", rows)
    params = LLMTrainingParams(model=str(chat_model), data_path=str(data), trainer="sft")
    out = prepare_data(params, load_tokenizer(str(chat_model), False), 512, paired=False)
    turn = lambda role, text: [IM_START, *char_ids(f"{role}\n{text}"), IM_END, NEWLINE]  # noqa: E731
    opening = [IM_START, *char_ids("assistant\n")]
    answer_b, answer_d = [*char_ids("b"), IM_END, NEWLINE], [*char_ids("d"), IM_END, NEWLINE]
    context = turn("user", "c") + turn("tool", "t") + opening
    assert out.train.prompt_ids[0] == turn("system", "s") + turn("user", "a") + opening
    assert out.train.chosen_ids[0] == answer_b + context + answer_d
    assert out.train.dataset[0]["chosen_mask"] == [1] * len(answer_b) + [0] * len(context) + [1] * len(answer_d)
    assert out.train.rejected_ids[0] == []


def test_sft_mask_leaves_context_turns_out_of_the_loss_like_transformers():
    from autotrain.data.kernels import make_collator

    model = tiny_model(seed=6)
    rows = [{"prompt_ids": [5, 9], "chosen_ids": [20, 21, 2, 40, 41, 42, 22, 23, 2], "rejected_ids": [],
             "chosen_mask": [1, 1, 1, 0, 0, 0, 1, 1, 1]},
            {"prompt_ids": [7, 8, 9], "chosen_ids": [30, 2, 50, 31, 32, 2], "rejected_ids": [],
             "chosen_mask": [1, 1, 0, 1, 1, 1]}]
    width = max(len(r["prompt_ids"] + r["chosen_ids"]) for r in rows)
    ids, mask = torch.zeros(2, width, dtype=torch.long), torch.zeros(2, width, dtype=torch.long)
    labels, all_chosen = torch.full((2, width), -100), torch.full((2, width), -100)
    for i, r in enumerate(rows):
        seq, p = r["prompt_ids"] + r["chosen_ids"], len(r["prompt_ids"])
        ids[i, : len(seq)], mask[i, : len(seq)] = torch.tensor(seq), 1
        for j, (token, trained) in enumerate(zip(r["chosen_ids"], r["chosen_mask"])):
            all_chosen[i, p + j] = token
            if trained:
                labels[i, p + j] = token
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
        unmasked = model(input_ids=ids, attention_mask=mask, labels=all_chosen).loss.item()
    assert unmasked != pytest.approx(expected, rel=1e-3)  # the context mask matters for this data
    separate = PackedCollator(0, share_prompt=False)
    for collate in (PaddedCollator(0), make_collator(True, 0, False, model=model), separate):
        batch = collate(rows)
        if "cu_seq_lens" in batch:  # the varlen layout needs flash attention; check its targets instead
            assert batch["target_ids"].tolist() == [20, 21, 2, 22, 23, 2, 30, 2, 31, 32, 2]
            continue
        loss, _ = sft_step(model, batch, 0.1)
        assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_sft_plain_text_through_the_cli(tmp_path, base_model):
    from conftest import BOS, EOS

    from autotrain.data.prepare import prepare_data
    from autotrain.models import load_tokenizer

    data = write_jsonl(tmp_path / "text.jsonl", [{"text": f"{i} plus one is {i + 1}."} for i in range(6)])
    params = LLMTrainingParams(model=str(base_model), data_path=str(data), trainer="sft")
    tokens = prepare_data(params, load_tokenizer(str(base_model), False), 512, paired=False).train
    assert tokens.prompt_ids[0] == [BOS] and tokens.chosen_ids[0] == [*char_ids("0 plus one is 1."), EOS]
    done = subprocess.run(
        [sys.executable, "-m", "autotrain", "llm", "--train", "--model", str(base_model), "--data-path", str(data),
         "--project-name", str(tmp_path / "sft-cli"), "--trainer", "sft", "--max-steps", "2", "--batch-size", "2",
         "--gradient-accumulation", "1", "--logging-steps", "1"],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"] and all("tokens/s" in line for line in lines)
    assert (tmp_path / "sft-cli" / "model.safetensors").exists()


def test_sft_without_a_text_column_names_the_choices(tmp_path, chat_model):
    from autotrain.errors import DataError

    data = write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    params = LLMTrainingParams(model=str(chat_model), data_path=str(data), trainer="sft",
                               project_name=str(tmp_path / "x"))
    with pytest.raises(DataError, match=r"odd.jsonl.*no text column for --trainer sft.*columns present: question"):
        AutoTrainProject(params=params).create()
    assert not (tmp_path / "x").exists()


def test_tensorboard_events_load_in_tensorboards_reader(tmp_path, chat_model, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    data = write_jsonl(tmp_path / "pairs.jsonl", arithmetic_pairs(6))
    project, records = run(tmp_path, chat_model, data, "tb", log="tensorboard", max_steps=3)
    (events,) = {path.parent for path in project.rglob("events.out.tfevents.*")}
    reader = EventAccumulator(str(events))
    reader.Reload()
    logged = [(e.step, e.value) for e in reader.Scalars("train/loss")]
    expected = [(r["step"], r["loss"]) for r in records if "loss" in r and "train_runtime" not in r]
    assert [s for s, _ in logged] == [s for s, _ in expected] == [1, 2, 3]
    assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-5)
    assert "train/rewards/accuracies" in reader.Tags()["scalars"]


def test_sample_answers_before_and_after_are_the_models_greedy_answers(tmp_path, chat_model):
    rows = [{"prompt": f"{i}?", "completion": "zzzz"} for i in range(8)]  # quick to learn, unlike the base's answer
    # Prompts that share their first word: it is theirs, not the template's, and must stay (issue 11).
    valid = [{"prompt": "Add 7 and 1.", "completion": "zzzz"}, {"prompt": "Add 2 and 5.", "completion": "zzzz"}]
    data = split_folder(tmp_path, rows, valid)
    params = LLMTrainingParams(model=str(chat_model), data_path=str(data), project_name=str(tmp_path / "s"),
                               trainer="sft", valid_split="validation", sample_answers=2, peft=True, max_steps=8,
                               **{**RUN, "lr": 5e-2})
    result = AutoTrainProject(params=params).create()

    def greedy(model_dir: Path, prompt: str) -> str:
        return greedy_answer(model_dir, chat_model, prompt)

    # The template's own text (role markers here, a default system prompt elsewhere) is dropped, the prompt's kept.
    assert [s["prompt"] for s in result.samples] == [r["prompt"] for r in valid[:2]]
    for sample, row in zip(result.samples, valid):
        assert sample["before"] == greedy(chat_model, row["prompt"])
        assert sample["after"] == greedy(result.output_dir, row["prompt"])  # the merged model at the top
    assert all(s["after"].startswith("zz") and s["before"] != s["after"] for s in result.samples)
    assert "## Sample answers" in (result.output_dir / "README.md").read_text()
    # The summary shows each answer on one line, its line breaks as ⏎.
    shown = "⏎".join(" ".join(part.split()) for part in result.samples[0]["before"].split("\n"))
    assert f"  before: {shown[:199]}" in result.summary()


def test_the_summary_says_what_each_methods_accuracy_counts(tmp_path):
    """DPO's accuracy compares implicit rewards (gains over the reference), ORPO's compares log-odds; SFT has none."""
    from autotrain.project import result_of

    evals = [{"step": 0, "eval_loss": 0.7, "eval_rewards/accuracies": 0.25},
             {"step": 4, "eval_loss": 0.5, "eval_rewards/accuracies": 0.75}]
    said = {}
    for trainer in ("orpo", "dpo", "sft"):
        project = tmp_path / trainer
        project.mkdir()
        rows = evals if trainer != "sft" else [{k: v for k, v in e.items() if "accuracies" not in k} for e in evals]
        (project / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        params = LLMTrainingParams(project_name=str(project), trainer=trainer, valid_split="validation")
        said[trainer] = result_of(params).summary().splitlines()[-1]
    assert said["orpo"] == ("validation preference accuracy (chosen log-odds > rejected): 0.250 before training "
                            "(step 0), 0.750 after (step 4)")
    assert said["dpo"] == ("validation preference accuracy (chosen gained more log-probability over the reference "
                           "than rejected): 0.250 before training (step 0), 0.750 after (step 4)")
    assert said["sft"] == "validation loss: 0.7000 before training, 0.5000 after"
