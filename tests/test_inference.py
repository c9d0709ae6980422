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
    assert [p.value for p in read_prompts(str(text))] == ["first", "second"]
    assert [p.value for p in read_prompts("just a prompt")] == ["just a prompt"]
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
    (project / "README.md").write_text("card\n")
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


# --- What --inference-prompts names ---------------------------------------------------------------------------------


def finished(tmp_path, model_dir, name: str = "run"):
    """A project folder as a finished run leaves it, as far as inference reads it: model, tokenizer, params, card."""
    import shutil

    project = tmp_path / name
    shutil.copytree(model_dir, project)
    LLMTrainingParams().save_json(project / "training_params.json")
    (project / "README.md").write_text("card\n")
    return project


@pytest.mark.parametrize("spec", ["prompts.txt", "data/prompts.jsonl", "PROMPTS.JSON", "./prompts", "~/nowhere/p"])
def test_a_missing_prompts_file_is_an_error_not_a_prompt(tmp_path, monkeypatch, spec):
    from autotrain.errors import ParamsError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParamsError, match=rf"^inference_prompts: {spec}: no such file \(a value ending in "):
        read_prompts(spec)


def test_what_is_a_prompt_and_not_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for prompt in ("What is 3/4 of 8?", "3/4=", "Summarise notes.txt for me", "x" * 300, "é" * 200, "a/" * 200):
        assert [p.value for p in read_prompts(prompt)] == [prompt]


def test_a_json_array_is_read_as_json(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('[\n  "first",\n  {"prompt": "second"},\n  {"prompt": [{"role": "user", "content": "third"}]}\n]\n')
    prompts = read_prompts(str(path))
    assert [p.value for p in prompts] == ["first", "second", [{"role": "user", "content": "third"}]]
    assert [p.where for p in prompts] == [f"{path}:2", f"{path}:3", f"{path}:4"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("p.txt", b"ok\n\xff\xfe\x00binary\n", "{path}:2: invalid UTF-8 at byte 3; save the file as UTF-8"),
        ("p.jsonl", b'{"prompt": "ok"}\n{"prompt": ["hi"]}\n',
         "{path}:2, column 'prompt': each message needs 'role' and 'content', got 'hi'"),
        ("p.jsonl", b'{"prompt": []}\n', "{path}:1, column 'prompt': empty value; a prompt needs a text or messages"),
        ("p.json", b'["ok",\n 7]\n', "{path}:2: expected a prompt or an object with a 'prompt', got int"),
        ("p.json", b'[{"prompt": null}]', "{path}:1, column 'prompt': null value; a prompt needs a text or messages"),
        ("p.json", b"[]", "{path}: no prompts in the file"),
    ],
)
def test_bad_prompts_files_are_one_line_naming_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        read_prompts(str(path))
    assert str(err.value) == message.format(path=path)


def test_a_long_prompt_reaches_the_model_through_the_cli(tmp_path, chat_model):
    project = finished(tmp_path, chat_model)
    prompt = "Please explain, step by step, " + "why the sky looks blue at noon and red at dusk; " * 6
    assert len(prompt.encode()) > 255
    done = subprocess.run([sys.executable, "-m", "autotrain", "llm", "--inference", "--project-name", str(project),
                           "--inference-prompts", prompt, "--inference-max-tokens", "2"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["prompt"] == prompt


def test_a_training_key_in_an_inference_config_file_says_so(tmp_path, capsys):
    from autotrain.cli import main

    config = tmp_path / "infer.yml"
    config.write_text("inference_prompts: hi\nlr: 1.0e-4\n")
    assert main(["llm", "--inference", "--config", str(config), "--project-name", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"error: {config}:2:1: 'lr' is a training setting, which --inference does not take; it takes project_name, "
        "trust_remote_code and the inference_* settings\n")


# --- Which project, which prompt --------------------------------------------------------------------------------------


def test_an_unfinished_project_is_named_with_its_newest_checkpoint(tmp_path, chat_model, capsys):
    from autotrain.cli import main

    project = finished(tmp_path, chat_model)
    (project / "README.md").unlink()  # killed during the final save: the card, written last, is missing
    weights = project / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # and the weights half written
    argv = ["llm", "--inference", "--project-name", str(project), "--inference-prompts", "hi"]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"error: project_name: {project} holds an unfinished run (it stopped before its final save, which ends with "
        "README.md); it saved no checkpoint; train it again\n")
    for step in (2, 10):
        (project / f"checkpoint-{step}").mkdir()
    assert main(argv) == 2
    assert capsys.readouterr().err.endswith("; its newest checkpoint is checkpoint-10: finish the run with its "
                                            "training command and --resume-from-checkpoint auto\n")
    # A checkpoint named instead of its run: said so, not "train it again" (it is a part of a run, not a run).
    for name in ("training_params.json", "config.json"):  # what a checkpoint holds of its run
        (project / "checkpoint-10" / name).write_bytes((project / name).read_bytes())
    argv[3] = str(project / "checkpoint-10")
    assert main(argv) == 2
    assert capsys.readouterr().err == (f"error: project_name: {project / 'checkpoint-10'} is a checkpoint of the run "
                                       f"in {project}, not a finished run; give the run's folder ({project}), once "
                                       "it has finished\n")


def test_a_conversation_prompt_without_a_template_is_refused_as_training_refuses_it(tmp_path, base_model,
                                                                                     monkeypatch):
    from autotrain.data.prepare import prepare_data
    from autotrain.inference import InferenceParams, generate
    from autotrain.model.loading import load_tokenizer

    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "3+4="}]
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": conversation, "chosen": "7", "rejected": "8"}])
    with pytest.raises(DataError, match="conversational rows need a chat template"):  # what training does
        prepare_data(LLMTrainingParams(data_path=str(data)), load_tokenizer(str(base_model), False), 512)
    project = finished(tmp_path, base_model)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "plain"}, {"prompt": conversation}])
    seen = spy_generate(monkeypatch)
    with pytest.raises(DataError) as err:
        list(generate(InferenceParams(project_name=str(project), inference_prompts=str(prompts))))
    assert str(err.value) == (f"{prompts}:2: a conversation needs a chat template, and this project was trained "
                              "without one (on plain-text prompts); give the prompt as text")
    assert seen == {}  # every prompt is checked before the first answer


def test_a_template_that_raises_names_the_prompt(tmp_path, chat_model, monkeypatch):
    from test_preference_turns import ALTERNATING
    from transformers import AutoTokenizer

    from autotrain.inference import InferenceParams, generate

    project = finished(tmp_path, chat_model)
    tokenizer = AutoTokenizer.from_pretrained(project)
    tokenizer.chat_template = ALTERNATING
    tokenizer.save_pretrained(project)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": [{"role": "assistant", "content": "Hi"}]}])
    spy_generate(monkeypatch)
    with pytest.raises(DataError) as err:
        list(generate(InferenceParams(project_name=str(project), inference_prompts=str(prompts))))
    assert str(err.value) == (f"{prompts}:1: the chat template refuses this prompt: Conversation roles must "
                              "alternate user/assistant/user/assistant/...")


# --- The model's positions --------------------------------------------------------------------------------------------


def test_inference_stays_within_the_models_positions(tmp_path, monkeypatch):
    from conftest import IM_END, IM_START, NEWLINE, char_ids
    from test_model_checks import short_gpt2

    from autotrain.inference import InferenceParams, generate

    project = finished(tmp_path, short_gpt2(tmp_path / "gpt2"))
    rendered = lambda text: [IM_START, *char_ids("user\n" + text), IM_END, NEWLINE,  # noqa: E731
                             IM_START, *char_ids("assistant\n")]
    short = "1+1="  # 23 tokens rendered: 9 positions left for the answer
    (answer,) = generate(InferenceParams(project_name=str(project), inference_prompts=short, inference_max_tokens=100))
    assert answer["prompt"] == short
    seen = spy_generate(monkeypatch)
    list(generate(InferenceParams(project_name=str(project), inference_prompts=short, inference_max_tokens=100)))
    assert seen["input_ids"][0].tolist() == rendered(short) and seen["max_new_tokens"] == 32 - len(rendered(short))
    with pytest.raises(DataError) as err:
        list(generate(InferenceParams(project_name=str(project), inference_prompts="x" * 20)))
    assert str(err.value) == (f"--inference-prompts: the prompt is {len(rendered('x' * 20))} tokens and the model "
                              "reads at most 32 (its max_position_embeddings), which leaves no room for an answer; "
                              "shorten it")
