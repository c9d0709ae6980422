"""`aitraining llm --inference` answers with a trained project (merged or adapter) as JSON lines."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import arithmetic_pairs, write_jsonl

from autotrain.errors import DataError
from autotrain.inference import read_prompts
from autotrain.project import AutoTrainProject
from autotrain.trainers.clm.params import LLMTrainingParams


@pytest.mark.parametrize("merge", [True, False])
def test_inference_prints_one_json_line_per_prompt(tmp_path, chat_model, merge):
    data = write_jsonl(tmp_path / "pairs.jsonl", arithmetic_pairs(4))
    project = tmp_path / "run"
    AutoTrainProject(LLMTrainingParams(model=str(chat_model), data_path=str(data), project_name=str(project),
                                       peft=True, merge_adapter=merge, max_steps=1, gradient_accumulation=1)).create()
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "1+1="}, {"prompt": "2+2="}])
    cmd = [sys.executable, "-m", "autotrain", "llm", "--inference", "--project-name", str(project),
           "--inference-prompts", str(prompts), "--inference-max-tokens", "3"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["prompt"] for r in rows] == ["1+1=", "2+2="]
    assert "Loading weights" not in done.stderr, done.stderr[-2000:]  # quiet: no library loading bar
    # Greedy decoding is deterministic: the same prompt gives the same answer twice.
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert [json.loads(line) for line in again.stdout.splitlines()] == rows


def test_prompts_from_text_and_bad_jsonl(tmp_path):
    text = tmp_path / "p.txt"
    text.write_text("first\n\nsecond\n")
    assert read_prompts(str(text)) == ["first", "second"]
    assert read_prompts("just a prompt") == ["just a prompt"]
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(DataError, match=r"p.jsonl:2, column 'prompt'"):
        read_prompts(str(bad))


def test_answers_are_the_models_greedy_continuation_of_the_chat_template(tmp_path, chat_model, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationMixin

    from autotrain.inference import InferenceParams, generate

    data = write_jsonl(tmp_path / "pairs.jsonl", arithmetic_pairs(4))
    project = tmp_path / "run"
    AutoTrainProject(LLMTrainingParams(model=str(chat_model), data_path=str(data), project_name=str(project),
                                       max_steps=1, gradient_accumulation=1)).create()
    (answer,) = generate(InferenceParams(project_name=str(project), inference_prompts="3+4=", inference_max_tokens=5))
    tokenizer, model = AutoTokenizer.from_pretrained(project), AutoModelForCausalLM.from_pretrained(project).eval()
    ids = tokenizer("<|im_start|>user\n3+4=<|im_end|>\n<|im_start|>assistant\n", return_tensors="pt").input_ids
    with torch.no_grad():
        for _ in range(5):  # greedy by hand: the argmax token, five times (or until the end of the turn)
            nxt = model(input_ids=ids).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
            if nxt.item() == tokenizer.eos_token_id:
                break
    prompt_len = len(tokenizer("<|im_start|>user\n3+4=<|im_end|>\n<|im_start|>assistant\n").input_ids)
    assert answer == {"prompt": "3+4=", "answer": tokenizer.decode(ids[0, prompt_len:], skip_special_tokens=True)}

    seen = {}
    monkeypatch.setattr(GenerationMixin, "generate", lambda self, **kw: seen.update(kw) or kw["input_ids"])
    list(generate(InferenceParams(project_name=str(project), inference_prompts="x", inference_temperature=0.7,
                                  inference_top_p=0.9, inference_max_tokens=9)))
    assert (seen["do_sample"], seen["temperature"], seen["top_p"], seen["max_new_tokens"]) == (True, 0.7, 0.9, 9)


def spy_generate(monkeypatch) -> dict:
    """Records what generate() is asked, and answers with the prompt itself (nothing is generated)."""
    from transformers import GenerationMixin

    seen: dict = {}
    monkeypatch.setattr(GenerationMixin, "generate", lambda self, **kw: seen.update(kw) or kw["input_ids"])
    return seen


@pytest.mark.parametrize(("kind", "choice"), [("chat", "none"), ("base", "chatml")])
def test_inference_renders_a_prompt_as_training_did(tmp_path, chat_model, base_model, monkeypatch, kind, choice):
    """--chat-template none trains on raw text: inference must not use the tokenizer's own template. chatml on a
    tokenizer without <|im_end|>: each turn ends with EOS, and generation stops there."""
    from conftest import EOS, NEWLINE, char_ids
    from transformers import AutoTokenizer, GenerationConfig

    from autotrain.inference import InferenceParams, generate

    model = chat_model if kind == "chat" else base_model
    data = write_jsonl(tmp_path / "pairs.jsonl", arithmetic_pairs(4))
    project = tmp_path / "run"
    AutoTrainProject(LLMTrainingParams(model=str(model), data_path=str(data), project_name=str(project),
                                       chat_template=choice, max_steps=1, gradient_accumulation=1)).create()
    seen = spy_generate(monkeypatch)
    list(generate(InferenceParams(project_name=str(project), inference_prompts="3+4=")))
    if choice == "none":  # the chat tokenizer adds no BOS: the raw prompt, as training tokenized it
        assert AutoTokenizer.from_pretrained(project).chat_template is None
        expected = char_ids("3+4=")
    else:
        expected = [*char_ids("<|im_start|>user\n3+4="), EOS, NEWLINE, *char_ids("<|im_start|>assistant\n")]
        assert EOS in seen["eos_token_id"]
        saved = GenerationConfig.from_pretrained(project).eos_token_id  # other tools stop there too
        assert EOS in (saved if isinstance(saved, list) else [saved])
    assert seen["input_ids"][0].tolist() == expected


def test_inference_trusts_remote_code_as_the_run_did_or_as_told(tmp_path, chat_model, monkeypatch):
    import shutil

    from conftest import spy_from_pretrained

    from autotrain.cli import build_parser, inference_params_from_args
    from autotrain.inference import InferenceParams, generate

    project = tmp_path / "run"
    shutil.copytree(chat_model, project)  # a finished project, as far as loading it goes
    loaded = spy_from_pretrained(monkeypatch, ("AutoTokenizer", "AutoModelForCausalLM"))
    spy_generate(monkeypatch)
    for trained_with, flag, expected in ((False, None, False), (True, None, True), (True, False, False),
                                         (False, True, True)):
        LLMTrainingParams(trust_remote_code=trained_with).save_json(project / "training_params.json")
        loaded.clear()
        given = {} if flag is None else {"trust_remote_code": flag}
        list(generate(InferenceParams(project_name=str(project), inference_prompts="x", **given)))
        assert {n for n, _ in loaded} == {"AutoTokenizer", "AutoModelForCausalLM"}
        assert all(value is expected for _, value in loaded), (trained_with, flag, loaded)
    args = build_parser().parse_args(["llm", "--inference", "--project-name", str(project), "--inference-prompts",
                                      "x", "--trust-remote-code"])
    assert inference_params_from_args(args).trust_remote_code is True
