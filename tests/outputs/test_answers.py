"""Sample answers (answers.py) and --inference (inference.py) say what the model generates, verbatim: the same text
as transformers' own greedy `generate` on the same chat-templated prompt, for absolute-position (gpt2) and rotary
(llama) models alike."""

from __future__ import annotations

import pytest
import torch
from conftest import NEWLINE, VOCAB_SIZE, greedy_answer, make_model_dir, make_tokenizer

from autotrain.outputs.answers import MAX_NEW_TOKENS, answer, one_line

PROMPTS = ["Add 40 and 32.", "hi"]


def gpt2_dir(folder, newline_only: bool = False):
    """A tiny GPT-2 with the test's chat tokenizer. `newline_only`: rigged so that its greedy answer is newlines
    (what a barely trained model often says), the final norm's output pointing at the newline embedding."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB_SIZE, n_embd=32, n_layer=2, n_head=4, n_positions=256,
                                       bos_token_id=1, eos_token_id=4, pad_token_id=2))
    if newline_only:
        with torch.no_grad():
            model.transformer.wte.weight[NEWLINE] *= 10  # tied head: this row's dot with itself is the largest logit
            model.transformer.ln_f.weight.zero_()
            model.transformer.ln_f.bias.copy_(model.transformer.wte.weight[NEWLINE])
    model.save_pretrained(folder)
    make_tokenizer(chat=True).save_pretrained(folder)
    return folder


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         return_dict=True)["input_ids"]


@pytest.mark.parametrize("family", ["gpt2", "gpt2-newlines", "llama"])
def test_sample_answers_are_transformers_greedy_generate(tmp_path, family):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = (make_model_dir(tmp_path, chat=True) if family == "llama"
              else gpt2_dir(tmp_path, newline_only=family == "gpt2-newlines"))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    ours = answer(model, tokenizer, [prompt_ids(tokenizer, p) for p in PROMPTS])
    assert ours == [greedy_answer(folder, folder, p) for p in PROMPTS]
    if family == "gpt2-newlines":  # the answer is what was generated, not an empty string
        assert ours == ["\n" * MAX_NEW_TOKENS] * len(PROMPTS)
        assert one_line(ours[0]) == "⏎" * MAX_NEW_TOKENS


def test_inference_answers_verbatim(tmp_path):
    from autotrain.inference import InferenceParams, generate

    folder = gpt2_dir(tmp_path, newline_only=True)
    (row,) = generate(InferenceParams(project_name=str(folder), inference_prompts="hi", inference_max_tokens=5))
    assert row == {"prompt": "hi", "answer": "\n" * 5}
