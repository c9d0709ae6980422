"""disable_dropout (TRL's name and default): the model's dropout off in the policy and in every DPO reference.

GPT-2 keeps dropout 0.1 in its modules, so on it, before the fix: the first-step loss differed from TRL's ORPOTrainer
(which disables dropout), packed differed from padded in train mode, and DPO's three references (a frozen copy in
eval mode, the adapters disabled in train mode, precomputed in eval mode) gave three different log-probs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import make_tokenizer, write_jsonl
from test_methods import full_logit_sums
from test_packing import ODD, random_pairs
from test_trl_equivalence import trl_batch

from autotrain.batch.packed import PackedCollator
from autotrain.batch.padded import PaddedCollator
from autotrain.model.dropout import disable_dropout
from autotrain.project import AutoTrainProject
from autotrain.trainers.clm.params import LLMTrainingParams

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def tiny_gpt2(seed: int = 0) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=101, n_embd=32, n_layer=2, n_head=4, n_positions=256, bos_token_id=1,
                        eos_token_id=4, pad_token_id=2)  # dropouts at GPT-2's 0.1
    model = GPT2LMHeadModel(config)
    with torch.no_grad():  # far from uniform log-probs
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gpt2")
    tiny_gpt2().save_pretrained(folder)
    make_tokenizer(chat=True).save_pretrained(folder)
    return folder


def train_and_eval_outputs(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        model.train()
        first, second = model(input_ids=ids).logits, model(input_ids=ids).logits
        model.eval()
        return first, second, model(input_ids=ids).logits


@pytest.mark.parametrize("family", ["gpt2", "llama", "falcon"])
def test_train_mode_is_eval_mode_once_dropout_is_off(family):
    """Each form of dropout transformers 5 uses: nn.Dropout modules (GPT-2), a float on the attention module
    (Llama's attention_dropout), a float read from the config at forward time (Falcon's hidden_dropout)."""
    from transformers import AutoModelForCausalLM, FalconConfig, LlamaConfig

    torch.manual_seed(0)
    if family == "gpt2":
        model = tiny_gpt2()
    elif family == "llama":
        model = AutoModelForCausalLM.from_config(LlamaConfig(
            vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, attention_dropout=0.5), attn_implementation="eager")
    else:
        model = AutoModelForCausalLM.from_config(FalconConfig(
            vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, hidden_dropout=0.5,
            attention_dropout=0.5), attn_implementation="eager")
    ids = torch.randint(5, 100, (2, 12), generator=torch.Generator().manual_seed(3))
    first, second, evaluated = train_and_eval_outputs(model, ids)
    assert not torch.equal(first, second)  # the dropout is there to begin with
    saved = model.config.to_dict()
    assert disable_dropout(model) > 0
    first, second, evaluated = train_and_eval_outputs(model, ids)
    torch.testing.assert_close(first, evaluated, rtol=0, atol=0)
    torch.testing.assert_close(second, evaluated, rtol=0, atol=0)
    assert model.config.to_dict() == saved  # the config saved with the model keeps its dropout


def test_lora_dropout_is_the_users_knob():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_gpt2(), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.2, target_modules=["c_attn"]))
    disable_dropout(model)
    kept = [m.p for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout) and "lora_dropout" in n]
    others = [m.p for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout) and "lora_dropout" not in n]
    assert kept and set(kept) == {0.2}
    assert others and set(others) == {0.0}


def _lora_dropouts(net: torch.nn.Module) -> set[float]:
    # peft puts an nn.Identity in place of a zero dropout
    return {getattr(m, "p", 0.0) for name, m in net.named_modules() if name.split(".")[-2:-1] == ["lora_dropout"]}


def test_lora_dropout_by_default_is_what_trl_trains_with(gpt2_dir):
    """aitraining passes lora_dropout 0.05 to peft, but TRL's ORPOTrainer (and DPOTrainer), which it runs, then sets
    every nn.Dropout to 0 (disable_dropout, on by default), LoRA's included: its preference runs train without LoRA
    dropout. So does a run here unless --lora-dropout is given, or --no-disable-dropout brings aitraining's 0.05."""
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    from autotrain.model.loading import load_model

    # What TRL does with aitraining's LoraConfig (its train_clm_orpo passes peft_config=LoraConfig(lora_dropout=0.05)).
    rows = [{"prompt": "a", "chosen": "b", "rejected": "c"}]
    from datasets import Dataset

    trl = ORPOTrainer(model=AutoModelForCausalLM.from_pretrained(gpt2_dir),
                      args=ORPOConfig(output_dir=str(gpt2_dir / "trl"), report_to=[], use_cpu=True, max_length=16),
                      train_dataset=Dataset.from_list(rows), processing_class=make_tokenizer(chat=True),
                      peft_config=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.05, target_modules=["c_attn"]))
    assert _lora_dropouts(trl.model) == {0.0}

    def ours(**settings: object) -> set[float]:
        params = LLMTrainingParams(model=str(gpt2_dir), peft=True, target_modules="c_attn", **settings)
        return _lora_dropouts(load_model(params, str(gpt2_dir)))

    assert ours() == {0.0}
    assert ours(disable_dropout=False) == {0.05}  # aitraining's value where nothing zeroes it
    assert ours(lora_dropout=0.05) == {0.05}  # given: kept, --disable-dropout or not
    assert ours(lora_dropout=0.2, disable_dropout=False) == {0.2}


def pair_rows(count: int) -> list[dict]:
    return [{"prompt": "q" * (1 + i % 4) + "?", "chosen": "c" * (2 + i % 5), "rejected": "r" * (1 + (i * 3) % 7)}
            for i in range(count)]


def test_gpt2_first_step_loss_equals_trl(tmp_path, gpt2_dir):
    """The first logged loss of a run (train mode) against TRL's ORPOTrainer on the same pairs, in train mode."""
    from transformers import AutoModelForCausalLM
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    from autotrain.data.prepare import prepare_data
    from autotrain.model.loading import load_tokenizer

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(4))
    params = LLMTrainingParams(model=str(gpt2_dir), data_path=str(data), project_name=str(tmp_path / "run"),
                               orpo_prompt_loss=True, batch_size=4, gradient_accumulation=1, max_steps=1,
                               logging_steps=1, lr=1e-6, warmup_ratio=0.0)
    result = AutoTrainProject(params).create()
    records = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    ours = next(r for r in records if "grad_norm" in r)

    tokenizer = load_tokenizer(str(gpt2_dir), False)
    train = prepare_data(params, tokenizer, 256).train
    features = [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r}
                for p, c, r in zip(train.prompt_ids, train.chosen_ids, train.rejected_ids)]
    model = AutoModelForCausalLM.from_pretrained(gpt2_dir)
    from datasets import Dataset

    beta = params.method_settings().beta  # dpo_beta unset: ORPO's default
    trainer = ORPOTrainer(model=model, args=ORPOConfig(output_dir=str(tmp_path / "trl"), beta=beta,
                                                       report_to=[], max_length=256, use_cpu=True),
                          train_dataset=Dataset.from_list(pair_rows(1)), processing_class=make_tokenizer(chat=True))
    model.train()
    with torch.no_grad():
        trl_loss, trl_metrics = trainer.get_batch_loss_metrics(model, trl_batch(features, tokenizer.pad_token_id))
    assert ours["loss"] == pytest.approx(trl_loss.item(), rel=1e-5)
    assert ours["nll_loss"] == pytest.approx(trl_metrics["nll_loss"], rel=1e-5)


def build_trainer(tmp_path: Path, model: torch.nn.Module, method: str = "orpo", **kwargs):
    from transformers import TrainingArguments

    from autotrain.train.trainer import PreferenceTrainer

    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, per_device_eval_batch_size=8,
                             remove_unused_columns=False, disable_tqdm=True)
    return PreferenceTrainer(model=model, args=args, data_collator=PaddedCollator(0), method=method, beta=0.5,
                             **kwargs)


def test_gpt2_packed_equals_padded_in_train_mode(tmp_path):
    trainer = build_trainer(tmp_path, tiny_gpt2())
    model = trainer.model.train()
    pairs = random_pairs(ODD)
    losses = [trainer.compute_loss(model, collate(pairs)).item()
              for collate in (PaddedCollator(0), PackedCollator(0, token_budget=32), PaddedCollator(0))]
    assert losses[0] == pytest.approx(losses[2], rel=1e-6)  # train mode, twice: deterministic
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)  # and the same packed


def test_gpt2_dpo_references_agree(tmp_path):
    """A frozen copy, the same weights with the adapters disabled, and precomputed log-probs: one reference. The
    first two are computed as during a training step, with the policy in train mode."""
    import copy

    from datasets import Dataset
    from peft import LoraConfig, get_peft_model

    pairs = random_pairs(ODD[:5])
    batch = PaddedCollator(0)(pairs)
    copied = build_trainer(tmp_path / "copy", tiny_gpt2(), "dpo", ref_model=copy.deepcopy(tiny_gpt2()))
    frozen = copied.reference_sums(copied.model.train(), batch)
    lora = get_peft_model(tiny_gpt2(), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["c_attn"]))
    adapters = build_trainer(tmp_path / "lora", lora, "dpo")
    disabled = adapters.reference_sums(adapters.model.train(), batch)
    rows = Dataset.from_list(pairs)
    precomputed = build_trainer(tmp_path / "pre", tiny_gpt2(), "dpo", train_dataset=rows, precompute_ref=True)
    stored = torch.tensor([*precomputed.train_dataset["ref_chosen_logps"], *precomputed.train_dataset["ref_rejected_logps"]])
    plain = tiny_gpt2().eval()  # transformers' own forward without dropout: the reference to expect
    expected = torch.tensor([full_logit_sums(plain, p["prompt_ids"], p[side]) for side in ("chosen_ids", "rejected_ids")
                             for p in pairs], dtype=torch.float32)
    for name, found in (("frozen copy", frozen), ("adapters disabled", disabled), ("precomputed", stored)):
        torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-5, msg=name)
