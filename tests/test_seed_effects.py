"""Each aitraining field this tool took over does what it does there: every test here fails if its field were
accepted and ignored. Expected values are written by hand (conftest's character vocabulary) or come from the
libraries the field hands over to (transformers' TrainingArguments, huggingface_hub's create_repo)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from conftest import BOS, EOS, IM_START, arithmetic_pairs, char_ids, make_tokenizer, write_jsonl

from autotrain.data.collate import PaddedCollator
from autotrain.data.prepare import open_data, prepare_data
from autotrain.errors import ModelError, ParamsError
from autotrain.project import AutoTrainProject, training_arguments
from autotrain.trainers.clm.params import LLMTrainingParams


def pairs_file(tmp_path: Path, count: int) -> Path:
    rows = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(count)]
    return write_jsonl(tmp_path / "pairs.jsonl", rows)


def prompts(split) -> list[str]:
    return [row["prompt"] for _, row in split.rows()]


# --- Data -------------------------------------------------------------------------------------------------------


def test_max_samples_takes_evenly_spaced_training_rows_and_the_first_fifth_to_validate(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(10)])
    write_jsonl(folder / "validation.jsonl", [{"prompt": f"v{i}", "chosen": "a", "rejected": "b"} for i in range(9)])
    opened = open_data(LLMTrainingParams(data_path=str(folder), valid_split="validation", max_samples=3))
    assert prompts(opened.train) == ["p0", "p3", "p6"]  # step 10 // 3 = 3
    assert prompts(opened.valid) == ["v0"]  # max(1, 3 // 5)
    opened = open_data(LLMTrainingParams(data_path=str(folder), valid_split="validation", max_samples=10))
    assert len(prompts(opened.train)) == 10 and prompts(opened.valid) == ["v0", "v1"]
    # Errors still name the row's line in its file: row p6 is line 7.
    assert opened.train.where(7) == f"{folder / 'train.jsonl'}:7"


def test_model_max_length_overrides_the_models_and_caps_block_size(tmp_path):
    data = str(pairs_file(tmp_path, 2))
    tokenizer = make_tokenizer(False)
    assert prepare_data(LLMTrainingParams(data_path=data), tokenizer, 512).limits.block_size == 512
    assert prepare_data(LLMTrainingParams(data_path=data, model_max_length=16), tokenizer, 512).limits.block_size == 16
    capped = prepare_data(LLMTrainingParams(data_path=data, model_max_length=16, block_size=100), tokenizer, 512)
    assert capped.limits.block_size == 16
    # 2048, the default, means the model's own maximum (aitraining's auto-detection).
    assert prepare_data(LLMTrainingParams(data_path=data, block_size=900), tokenizer, 512).limits.block_size == 512


def test_add_eos_token_ends_untemplated_completions(tmp_path):
    data = str(pairs_file(tmp_path, 1))
    with_eos = prepare_data(LLMTrainingParams(data_path=data), make_tokenizer(False), 512)
    without = prepare_data(LLMTrainingParams(data_path=data, add_eos_token=False), make_tokenizer(False), 512)
    assert with_eos.train.chosen_ids[0] == [*char_ids("c0"), EOS]
    assert without.train.chosen_ids[0] == char_ids("c0")
    assert without.train.prompt_ids[0] == [BOS, *char_ids("p0")]  # the prompt keeps its BOS


def test_apply_chat_template_off_renders_plain_text(tmp_path):
    data = str(pairs_file(tmp_path, 1))
    templated = prepare_data(LLMTrainingParams(data_path=data), make_tokenizer(True), 512)
    plain = prepare_data(LLMTrainingParams(data_path=data, apply_chat_template=False), make_tokenizer(True), 512)
    assert templated.train.prompt_ids[0][0] == IM_START and templated.template is not None
    assert plain.template is None and plain.train.prompt_ids[0] == char_ids("p0")
    with pytest.raises(ParamsError, match="apply_chat_template is off but chat_template is chatml"):
        LLMTrainingParams(apply_chat_template=False, chat_template="chatml")


def test_left_padding_pads_before_the_row_and_keeps_every_log_prob(chat_model):
    features = [{"prompt_ids": [5, 6], "chosen_ids": [8, 2], "rejected_ids": [10, 2]},
                {"prompt_ids": [7], "chosen_ids": [9, 2], "rejected_ids": [11, 12, 2]}]
    left = PaddedCollator(pad_id=0, padding_side="left")(features)
    assert left["input_ids"].tolist() == [[5, 6, 8, 2], [0, 7, 9, 2], [5, 6, 10, 2], [7, 11, 12, 2]]
    assert left["attention_mask"].tolist() == [[1, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]]
    assert left["position_ids"].tolist() == [[0, 1, 2, 3], [0, 0, 1, 2], [0, 1, 2, 3], [0, 1, 2, 3]]
    assert left["hidden_index"].tolist() == [1, 2, 5, 6, 9, 10, 12, 13, 14]
    # The same tokens at the same positions: each target's log-prob equals the right-padded layout's.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(chat_model, dtype=torch.float64).eval()
    right = PaddedCollator(pad_id=0)(features)

    def target_logps(batch):
        kwargs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
        logits = model(**kwargs).logits.flatten(0, 1)[batch["hidden_index"]]
        return torch.log_softmax(logits, -1).gather(1, batch["target_ids"][:, None]).squeeze(1)

    assert left["target_ids"].tolist() == right["target_ids"].tolist()
    torch.testing.assert_close(target_logps(left), target_logps(right), rtol=0, atol=1e-10)


# --- Training arguments -------------------------------------------------------------------------------------------


def args_of(tmp_path: Path, **fields):
    return training_arguments(LLMTrainingParams(**fields), tmp_path, train_pairs=8, has_valid=False)


def test_save_strategy_and_save_steps(tmp_path):
    assert args_of(tmp_path).save_strategy.value == "epoch"
    assert args_of(tmp_path, save_strategy="no").save_strategy.value == "no"
    steps = args_of(tmp_path, save_strategy="steps", save_steps=7)
    assert (steps.save_strategy.value, steps.save_steps) == ("steps", 7)
    assert args_of(tmp_path, save_steps=3).save_strategy.value == "steps"  # --save-steps alone, as before
    with pytest.raises(ParamsError, match=r"save_steps applies to --save-strategy steps only \(save_strategy is epoch\)"):
        args_of(tmp_path, save_strategy="epoch", save_steps=3)  # would save each epoch, ignoring save_steps


def test_auto_find_batch_size_and_ddp_timeout_reach_the_trainer(tmp_path):
    assert args_of(tmp_path).auto_find_batch_size is False
    assert args_of(tmp_path, auto_find_batch_size=True).auto_find_batch_size is True
    assert args_of(tmp_path).ddp_timeout == 7200  # aitraining's default (transformers' own is 1800)
    assert args_of(tmp_path, ddp_timeout=60).ddp_timeout == 60


def test_ddp_timeout_reaches_the_process_group(monkeypatch):
    """The first PartialState decides the process group's timeout: it must be built with the run's."""
    import accelerate
    from datetime import timedelta

    from autotrain.project import process_state

    seen = {}
    monkeypatch.setattr(accelerate, "PartialState", lambda **kwargs: seen.update(kwargs) or "state")
    assert process_state(LLMTrainingParams(ddp_timeout=90)) == "state"
    assert seen["timeout"] == timedelta(seconds=90)


def test_auto_find_batch_size_halves_the_batch_on_out_of_memory(tmp_path, chat_model, monkeypatch):
    """~6 s. A CUDA out-of-memory error at batch 2 (raised here on purpose): with auto_find_batch_size training
    starts again at batch 1 and finishes; without it, the error ends the run."""
    from autotrain.trainers.clm.trainer import MethodTrainer

    seen = []
    original = MethodTrainer.training_step

    def training_step(self, model, inputs, *rest):
        seen.append(inputs["num_pairs"])
        if inputs["num_pairs"] > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, model, inputs, *rest)

    monkeypatch.setattr(MethodTrainer, "training_step", training_step)
    data = write_jsonl(tmp_path / "d.jsonl", arithmetic_pairs(4))
    common = dict(model=str(chat_model), data_path=str(data), batch_size=2, gradient_accumulation=1, max_steps=2)
    result = AutoTrainProject(LLMTrainingParams(project_name=str(tmp_path / "auto"), auto_find_batch_size=True,
                                                **common)).create()
    assert seen == [2, 1, 1]  # the failed step at 2 pairs, then both steps at 1
    assert (result.output_dir / "model.safetensors").exists()
    seen.clear()
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        AutoTrainProject(LLMTrainingParams(project_name=str(tmp_path / "fixed"), **common)).create()
    assert seen == [2]


# --- Attention --------------------------------------------------------------------------------------------------


def test_attn_implementation_is_used_as_given(chat_model):
    from autotrain import models

    params = LLMTrainingParams(model=str(chat_model), attn_implementation="eager", packing=False)
    assert models.load_model(params, str(chat_model)).config._attn_implementation == "eager"
    default = LLMTrainingParams(model=str(chat_model), packing=False)
    assert models.load_model(default, str(chat_model)).config._attn_implementation == "sdpa"


def test_attn_implementation_the_model_cannot_run_is_refused_with_the_reason(chat_model):
    from transformers import Gemma2Config

    from autotrain import models

    gemma2 = Gemma2Config(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                          num_attention_heads=1, num_key_value_heads=1, head_dim=8)
    with pytest.raises(ModelError, match=r"^attn_implementation sdpa: Gemma2ForCausalLM does not support it; it "
                                         r"supports eager, flex_attention, flash_attention_2, flash_attention_3$"):
        models.check_attention(LLMTrainingParams(attn_implementation="sdpa"), gemma2)
    if torch.cuda.is_available():
        pytest.skip("flash_attention_2 may be installed on a GPU machine")
    params = LLMTrainingParams(use_flash_attention_2=True)
    with pytest.raises(ModelError, match=r"^attn_implementation flash_attention_2: "):
        models.load_model(params, str(chat_model))
    with pytest.raises(ParamsError, match="use_flash_attention_2 asks for flash_attention_2, attn_implementation for "
                                          "eager: give one"):
        LLMTrainingParams(use_flash_attention_2=True, attn_implementation="eager")


# --- Trackers and the hub -----------------------------------------------------------------------------------------


def test_wandb_token_and_run_id_go_to_the_environment_only(tmp_path, monkeypatch, caplog):
    from autotrain import project

    for name in ("WANDB_API_KEY", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    params = LLMTrainingParams(log="wandb", wandb_token="k-123", wandb_run_id="run7")
    with caplog.at_level("INFO", logger="autotrain"):
        project._tracker_environment(params, tmp_path)
    assert (os.environ["WANDB_API_KEY"], os.environ["WANDB_RUN_ID"], os.environ["WANDB_RESUME"]) == (
        "k-123", "run7", "allow")
    assert "wandb beta leet" in caplog.text  # wandb_visualizer: on by default with --log wandb
    params.save_json(tmp_path / "p.json")
    assert "k-123" not in (tmp_path / "p.json").read_text() and "k-123" in params.secret_values()
    caplog.clear()
    with caplog.at_level("INFO", logger="autotrain"):
        project._tracker_environment(LLMTrainingParams(log="wandb", wandb_visualizer=False), tmp_path)
    assert "wandb beta leet" not in caplog.text and "WANDB_RUN_ID" not in os.environ
    with pytest.raises(ParamsError, match="wandb_visualizer shows a W&B run: add --log wandb"):
        LLMTrainingParams(wandb_visualizer=True)


def test_repo_id_and_hub_private_reach_the_hub(tmp_path, monkeypatch):
    import huggingface_hub

    from autotrain import hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, private, exist_ok):
            calls.append(("create", repo_id, private))

        def upload_folder(self, folder_path, repo_id, ignore_patterns):
            calls.append(("upload", repo_id))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    params = LLMTrainingParams(push_to_hub=True, repo_id="my-org/my-model", hub_private=False, token="t")
    assert hub.push_to_hub(tmp_path, params) == "my-org/my-model"
    assert calls == [("token", "t"), ("create", "my-org/my-model", False), ("upload", "my-org/my-model")]
    calls.clear()
    hub.push_to_hub(tmp_path, LLMTrainingParams(push_to_hub=True, username="me", project_name="x/run"))
    assert calls[1] == ("create", "me/run", True)  # aitraining's default: private


# --- One run: where the tokenized data goes, enhanced eval, no checkpoints ------------------------------------------


def test_run_keeps_processed_data_adds_perplexity_and_saves_no_checkpoint(tmp_path, chat_model):
    """~8 s: one tiny run with save_processed_data local, use_enhanced_eval, save_strategy no and
    response_only_loss off."""
    from datasets import load_from_disk

    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", arithmetic_pairs(6))
    write_jsonl(folder / "validation.jsonl", arithmetic_pairs(2, start=10))
    params = LLMTrainingParams(
        model=str(chat_model), data_path=str(folder), valid_split="validation", project_name=str(tmp_path / "run"),
        batch_size=2, gradient_accumulation=1, max_steps=2, save_strategy="no", save_processed_data="local",
        use_enhanced_eval=True, response_only_loss=False, logging_steps=1,
    )
    result = AutoTrainProject(params).create()
    project = result.output_dir
    saved = load_from_disk(str(project / "processed_data" / "train"))
    expected = prepare_data(params, make_tokenizer(True), 512).train
    assert saved["prompt_ids"] == expected.prompt_ids and saved["chosen_ids"] == expected.chosen_ids
    assert len(load_from_disk(str(project / "processed_data" / "validation"))) == 2
    evals = [json.loads(line) for line in (project / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if "eval_nll_loss" in r]
    assert len(evals) >= 2
    for record in evals:
        assert record["eval_perplexity"] == pytest.approx(math.exp(record["eval_nll_loss"]), rel=1e-9)
    assert not list(project.glob("checkpoint-*"))


def test_response_only_loss_off_puts_the_prompt_under_the_nll():
    """aitraining's response_only_loss is the opposite of --prompt-loss; the collator reads the result."""
    assert LLMTrainingParams().nll_on_prompt is False
    assert LLMTrainingParams(response_only_loss=False).nll_on_prompt is True
    assert LLMTrainingParams(prompt_loss=True).nll_on_prompt is True
    with pytest.raises(ParamsError, match="prompt_loss and response_only_loss say opposite things"):
        LLMTrainingParams(prompt_loss=True, response_only_loss=True)


def test_save_processed_data_none_keeps_nothing_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AITRAINING_CACHE", str(tmp_path / "cache"))
    data = str(pairs_file(tmp_path, 2))
    prepare_data(LLMTrainingParams(data_path=data, save_processed_data="none"), make_tokenizer(False), 512)
    assert not (tmp_path / "cache" / "tokenized").exists() or not any((tmp_path / "cache" / "tokenized").iterdir())
    prepare_data(LLMTrainingParams(data_path=data), make_tokenizer(False), 512)
    assert any((tmp_path / "cache" / "tokenized").iterdir())  # auto: cached for later runs
    with pytest.raises(ParamsError, match="'hub' uploads the processed data to the hub, which this tool does not do"):
        LLMTrainingParams(save_processed_data="hub")


def test_enhanced_eval_text_metrics_are_refused_with_the_reason():
    with pytest.raises(ParamsError, match="'bleu' scores generated text"):
        LLMTrainingParams(use_enhanced_eval=True, eval_metrics="perplexity,bleu")
    with pytest.raises(ParamsError, match=r"custom_metrics: must be a JSON array of metric names"):
        LLMTrainingParams(custom_metrics='{"a": 1}')
    assert LLMTrainingParams(custom_metrics='["perplexity"]', valid_split="v").custom_metrics == '["perplexity"]'


def test_the_resume_line_leaves_out_the_wandb_token_too():
    from autotrain.cli import _without_resume

    assert _without_resume(["llm", "--train", "--log", "wandb", "--wandb-token", "k-123", "--lr", "1e-4"]) == (
        ["llm", "--train", "--log", "wandb", "--lr", "1e-4"], True)
    assert _without_resume(["llm", "--train", "--wandb_token=k-123"]) == (["llm", "--train"], True)
