"""The start-up self-check: a model whose head transforms its logits in a way the chunked head does not reproduce
is refused with one ModelError before anything trains; a model the chunked head gets right passes, packed or
padded, full or LoRA.

The wrong head here is synthetic and will stay wrong: a Llama whose forward multiplies its logits by 3 (no family
fix can make the chunked head know it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import arithmetic_pairs, make_tokenizer, write_jsonl
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from autotrain.errors import ModelError
from autotrain.project import AutoTrainProject
from autotrain.trainers.clm.params import LLMTrainingParams


class ScaledLlamaConfig(LlamaConfig):
    model_type = "scaled_llama_test"


class ScaledLlamaForCausalLM(LlamaForCausalLM):
    """A head transform the chunked head cannot know: logits times 3."""

    config_class = ScaledLlamaConfig

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 3.0
        return out


AutoConfig.register(ScaledLlamaConfig.model_type, ScaledLlamaConfig, exist_ok=True)
AutoModelForCausalLM.register(ScaledLlamaConfig, ScaledLlamaForCausalLM, exist_ok=True)


def scaled_model_dir(folder: Path) -> Path:
    torch.manual_seed(0)
    config = ScaledLlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                               tie_word_embeddings=False, bos_token_id=1, eos_token_id=4, pad_token_id=2)
    model = ScaledLlamaForCausalLM(config)
    with torch.no_grad():  # logits far from uniform, as a trained model's are
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    model.save_pretrained(folder)
    make_tokenizer(chat=True).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def scaled_model(tmp_path_factory) -> Path:
    return scaled_model_dir(tmp_path_factory.mktemp("scaled-llama"))


@pytest.mark.parametrize("layout", [dict(packing=False), dict(packing=True, peft=True)], ids=["padded", "packed-lora"])
def test_a_head_transform_the_chunked_head_misses_stops_the_run(tmp_path, scaled_model, layout):
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", arithmetic_pairs(8))
    write_jsonl(data / "validation.jsonl", arithmetic_pairs(3, start=30))
    project = tmp_path / "run"
    params = LLMTrainingParams(model=str(scaled_model), data_path=str(data), project_name=str(project),
                               valid_split="validation", max_steps=2, batch_size=2, gradient_accumulation=1,
                               logging_steps=1, **layout)
    with pytest.raises(ModelError) as raised:
        AutoTrainProject(params).create()
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("ScaledLlamaForCausalLM: the chunked LM head's log-probs differ from the model's own "
                              "forward by up to ")
    assert float(message.split("by up to ")[1].split()[0]) > 0.1
    # Refused before anything ran: no evaluation, no step, no checkpoint, no model.
    metrics = project / "metrics.jsonl"
    assert not metrics.exists() or not [json.loads(line) for line in metrics.read_text().splitlines()]
    assert not list(project.glob("checkpoint-*")) and not (project / "model.safetensors").exists()


def build_trainer(tmp_path: Path, model: torch.nn.Module, packing: bool):
    from datasets import Dataset
    from transformers import TrainingArguments

    from autotrain.data.kernels import make_collator
    from autotrain.trainers.clm.trainer import PreferenceTrainer

    rows = Dataset.from_list([{"prompt_ids": [3, 20, 21, 22, 4, 100, 3, 30], "chosen_ids": [40, 41, 42, 4, 100],
                               "rejected_ids": [50, 51, 4, 100]}])
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, remove_unused_columns=False)
    return PreferenceTrainer(model=model, args=args, train_dataset=rows, method="orpo", beta=0.1,
                             data_collator=make_collator(packing, 2, False, model=model))


def head_check(trainer) -> float:
    """Run the trainer's start-up self-check now (it runs when training begins)."""
    from autotrain.trainers.clm.checks import HeadCheck

    (check,) = [c for c in trainer.callback_handler.callbacks if isinstance(c, HeadCheck)]
    return check.run()


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_a_right_head_passes_within_float_tolerance(tmp_path, chat_model, packing, lora):
    model = AutoModelForCausalLM.from_pretrained(chat_model, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    trainer = build_trainer(tmp_path, model.train(), packing)
    assert head_check(trainer) < 1e-4
    assert model.training  # the check switched to eval mode and back


def test_the_check_measures_the_gap(tmp_path, scaled_model):
    """The gap the check reports is the difference between the two log-softmaxes at the row's last position, here
    computed by hand: at least the largest over the row's own tokens, at most the largest over the vocabulary."""
    model = AutoModelForCausalLM.from_pretrained(scaled_model, dtype=torch.float32)
    trainer = build_trainer(tmp_path, model, packing=False)
    row = [3, 20, 21, 22, 4, 100, 3, 30, 40, 41, 42, 4, 100]  # the end of the prompt and the chosen answer
    with torch.no_grad():
        own = model(input_ids=torch.tensor([row])).logits[0, -1].double()
    gaps = (own.log_softmax(-1) - (own / 3.0).log_softmax(-1)).abs()  # the chunked head sees the unscaled logits
    with pytest.raises(ModelError, match=r"by up to (\S+) ") as raised:
        head_check(trainer)
    reported = float(str(raised.value).split("by up to ")[1].split()[0])
    assert gaps[row].max().item() * 0.99 <= reported <= gaps.max().item() * 1.01
