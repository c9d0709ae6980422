"""What a run checks of its models before the data stage: a DPO reference shares the policy's tokenizer (token by
token, not by size), and no block is longer than the model's positions."""

from __future__ import annotations

import pytest
from conftest import BOS, EOS, IM_END, VOCAB_SIZE, arithmetic_pairs, char_ids, make_tokenizer, spy_from_pretrained
from conftest import write_jsonl

from autotrain.errors import ModelError, ParamsError
from autotrain.project import AutoTrainProject
from autotrain.trainers.clm.params import LLMTrainingParams

# --- The DPO reference's tokenizer ------------------------------------------------------------------------------------


def swapped_tokenizer():
    """The test tokenizer with 'a' and 'b' at each other's ids: as many tokens (101), another vocabulary."""
    tok = make_tokenizer(True)
    vocab = tok.get_vocab()
    a, b = vocab["a"], vocab["b"]
    core = tok.backend_tokenizer
    from tokenizers import Tokenizer, models

    swapped = {**vocab, "a": b, "b": a}
    rebuilt = Tokenizer(models.WordLevel(swapped, unk_token="<unk>"))
    rebuilt.pre_tokenizer, rebuilt.decoder = core.pre_tokenizer, core.decoder
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=rebuilt, unk_token="<unk>", eos_token="<|im_end|>",
                                   pad_token="</s>", additional_special_tokens=["<|im_start|>", "<|im_end|>"])


def test_a_reference_with_another_vocabulary_of_the_same_size_is_refused_before_any_weights_load(
        tmp_path, chat_model, tmp_path_factory, monkeypatch):
    import shutil

    ref = tmp_path_factory.mktemp("swapped-ref")
    shutil.copytree(chat_model, ref, dirs_exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (ref / name).unlink(missing_ok=True)
    swapped_tokenizer().save_pretrained(ref)
    assert len(swapped_tokenizer().get_vocab()) == VOCAB_SIZE  # the size alone cannot tell them apart
    data = write_jsonl(tmp_path / "pairs.jsonl", arithmetic_pairs(4))
    project = tmp_path / "run"
    params = LLMTrainingParams(model=str(chat_model), model_ref=str(ref), trainer="dpo", data_path=str(data),
                               project_name=str(project), max_steps=1, gradient_accumulation=1)
    loaded = spy_from_pretrained(monkeypatch, ("AutoModelForCausalLM",))
    with pytest.raises(ModelError) as err:
        AutoTrainProject(params).create()
    assert str(err.value) == (
        f"model_ref: {ref} has another tokenizer than the model being trained: token id {char_ids('a')[0]} is 'a' "
        "in the policy's tokenizer and 'b' in the reference's; the reference scores the policy's token ids, so it "
        "must share the tokenizer")
    assert loaded == [] and not project.exists()  # refused before the weights, with nothing left behind


def test_a_reference_sharing_the_vocabulary_is_accepted_whatever_its_chat_settings(tmp_path, caplog):
    from autotrain.models import check_reference_tokenizer

    # The base tokenizer adds BOS, ends with </s> and has no template: still the same token for every id.
    make_tokenizer(False).save_pretrained(tmp_path / "base")
    check_reference_tokenizer(make_tokenizer(True), str(tmp_path / "base"), False)
    (tmp_path / "weights-only").mkdir()  # nothing to compare: said, and left to the size check
    check_reference_tokenizer(make_tokenizer(True), str(tmp_path / "weights-only"), False)
    assert "no tokenizer to compare with the policy's" in caplog.text


# --- The model's positions --------------------------------------------------------------------------------------------


def short_gpt2(folder):
    """A GPT-2 with 32 learned positions: reading position 32 is an IndexError."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB_SIZE, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=BOS,
                        eos_token_id=IM_END, pad_token_id=EOS)
    GPT2LMHeadModel(config).save_pretrained(folder)
    make_tokenizer(True).save_pretrained(folder)
    return folder


def test_model_max_length_is_held_to_the_models_positions(tmp_path, monkeypatch):
    from transformers import GPT2Config

    from autotrain.data.prepare import prepare_data
    from autotrain.models import model_max_length

    monkeypatch.setenv("AITRAINING_CACHE", str(tmp_path / "cache"))
    assert model_max_length(GPT2Config(n_positions=32)) == 32
    data = str(write_jsonl(tmp_path / "pairs.jsonl", arithmetic_pairs(2)))
    tok = make_tokenizer(False)  # no template: "1+2=" is 5 tokens with BOS, so a 16-token block holds the pairs
    block = lambda **kw: prepare_data(LLMTrainingParams(data_path=data, **kw), tok, 32).limits.block_size  # noqa: E731
    assert block() == 32 and block(model_max_length=2048) == 32  # the default's value, typed: the model's own
    assert block(model_max_length=16) == 16 and block(model_max_length=32, block_size=100) == 32
    for asked in (33, 4096):
        with pytest.raises(ParamsError) as err:
            block(model_max_length=asked)
        assert str(err.value) == (
            f"model_max_length: {asked} is more than the 32 positions the model has (its config's "
            "max_position_embeddings), the longest input it can read; give at most 32, or leave it out to use the "
            "model's own")


def test_a_model_with_32_positions_trains_and_answers_with_the_default_typed(tmp_path, monkeypatch):
    monkeypatch.setenv("AITRAINING_CACHE", str(tmp_path / "cache"))
    model = short_gpt2(tmp_path / "gpt2")
    long = lambda i: {"prompt": f"What is {i} plus {i}? Answer in words.", "chosen": f"It is {2 * i}, twice {i}.",  # noqa: E731
                      "rejected": f"It is {2 * i + 1}, I think."}
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [long(i) for i in range(4)])
    write_jsonl(folder / "validation.jsonl", [long(i) for i in range(10, 12)])
    params = LLMTrainingParams(model=str(model), data_path=str(folder), valid_split="validation",
                               project_name=str(tmp_path / "run"), model_max_length=2048, max_steps=1,
                               gradient_accumulation=1, sample_answers=1, max_prompt_length=24)
    # Prompts of 24 tokens and answers of about 20: more than 32 positions unless the block is held to them.
    result = AutoTrainProject(params).create()
    assert (result.output_dir / "README.md").exists() and len(result.samples) == 1
