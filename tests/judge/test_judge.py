"""Judges end to end: a tiny local causal LM and a tiny reward model as judges, a fake OpenAI-compatible server on
localhost (the key from the environment only; a server that goes down part-way keeps the verdicts done), a training
run with --judge (metrics.jsonl, the card, the sweep metric), `aitraining llm --compare`, and the params' refusals."""

from __future__ import annotations

import io
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from conftest import VOCAB_SIZE, make_model_dir, make_tokenizer, write_jsonl

from autotrain.errors import ModelError, ParamsError
from autotrain.judge.session import Answers, JudgingStopped, judge
from autotrain.judge.spec import DEFAULT_TEMPLATE, KEY_VARIABLE, JudgeSpec, fill, parse
from autotrain.outputs.judge_report import SUMMARY_FILE, VERDICTS_FILE
from autotrain.project import AutoTrainProject
from autotrain.trainers.clm.params import LLMTrainingParams

ANSWER = re.compile(r"\[Answer (A|B)\]\n(.*?)\n\[End of answer \1\]", re.S)


class FakeServer:
    """An OpenAI-compatible chat-completions server that prefers, of the default judge prompt's two answers, the one
    `measure` finds larger (the longer one by default; A when equal). `down_after`: requests answered before it
    answers 503 to every one."""

    def __init__(self, down_after: int | None = None, measure=len):
        self.bodies: list[dict] = []
        self.keys: list[str | None] = []
        self.down_after = down_after
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "fake-judge", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.keys.append(self.headers.get("Authorization"))
                if self.path != "/v1/chat/completions" or (
                        server.down_after is not None and len(server.bodies) >= server.down_after):
                    self._send(503, {"error": "down"})
                    return
                server.bodies.append(body)
                found = dict(ANSWER.findall(body["messages"][0]["content"]))
                letter = "A" if measure(found["A"]) >= measure(found["B"]) else "B"
                self._send(200, {"object": "chat.completion", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": f"**{letter}**"}}]})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    running = FakeServer()
    yield running
    running.close()


def test_a_fake_openai_server_judges_with_the_key_from_the_environment(tmp_path, server, monkeypatch):
    from autotrain.judge.chat import ChatJudge

    monkeypatch.setenv(KEY_VARIABLE, "sk-judge-secret")
    after, before = ["a much longer answer", "short", "same"], ["short", "a much longer answer", "same"]
    summary = judge(tmp_path / "j", Answers(["q1", "q2", "q3"], after, before), server.url, None, "again",
                    stream=io.StringIO())
    assert summary["metrics"]["eval_judge_win"] == pytest.approx(1 / 3)
    assert summary["metrics"]["eval_judge_loss"] == pytest.approx(1 / 3)
    assert summary["metrics"]["eval_judge_identical"] == 1
    assert len(server.bodies) == 4 and set(server.keys) == {"Bearer sk-judge-secret"}
    assert {b["model"] for b in server.bodies} == {"fake-judge"}  # the one model /v1/models lists
    assert server.bodies[0]["messages"][0]["content"] == fill(DEFAULT_TEMPLATE, "q1", after[0], before[0])
    assert server.bodies[1]["messages"][0]["content"] == fill(DEFAULT_TEMPLATE, "q1", before[0], after[0])
    assert server.bodies[0]["temperature"] == 0
    # The key is in no file the judging wrote.
    assert not any("sk-judge-secret" in p.read_text() for p in (tmp_path / "j").iterdir())
    assert ChatJudge(server.url + "/chat/completions", "m", DEFAULT_TEMPLATE).url == server.url + "/chat/completions"


def test_a_server_that_goes_down_keeps_the_verdicts_and_the_rerun_asks_only_the_rest(tmp_path, monkeypatch):
    from autotrain.judge import chat

    monkeypatch.setattr(chat.time, "sleep", lambda seconds: None)  # the retries' waits
    down = FakeServer(down_after=6)  # three pairs, both orders
    prompts = [f"q{i}" for i in range(5)]
    after, before = [f"answer number {i} after" for i in range(5)], [f"before {i}" for i in range(5)]
    try:
        with pytest.raises(JudgingStopped) as stopped:
            judge(tmp_path / "j", Answers(prompts, after, before), down.url + "#fake-judge", None,
                  "aitraining llm --judge URL --project-name p", stream=io.StringIO())
    finally:
        down.close()
    message = str(stopped.value)
    assert "stopped after 3 of 5 pairs (HTTP 503" in message and "2 remain" in message
    assert "aitraining llm --judge URL --project-name p" in message and stopped.value.exit_code == 1
    kept = (tmp_path / "j" / VERDICTS_FILE).read_text().splitlines()
    assert len(kept) == 3
    summary = json.loads((tmp_path / "j" / SUMMARY_FILE).read_text())
    assert (summary["complete"], summary["judged"], summary["to_judge"]) == (False, 3, 5)


def test_the_same_judge_resumes_where_it_stopped(tmp_path, monkeypatch):
    from autotrain.judge import chat

    monkeypatch.setattr(chat.time, "sleep", lambda seconds: None)
    running = FakeServer(down_after=4)
    prompts, after, before = ["q0", "q1", "q2"], ["long answer 0", "long answer 1", "x"], ["s0", "s1", "longest one"]
    try:
        with pytest.raises(JudgingStopped, match="stopped after 2 of 3 pairs"):
            judge(tmp_path / "j", Answers(prompts, after, before), running.url, None, "again", stream=io.StringIO())
        running.down_after = None
        summary = judge(tmp_path / "j", Answers(prompts, after, before), running.url, None, "again",
                        stream=io.StringIO())
    finally:
        running.close()
    assert len(running.bodies) == 6  # 4 before the stop, 2 after: the kept pairs were not asked again
    assert (summary["metrics"]["eval_judge_win"], summary["metrics"]["eval_judge_loss"]) == (
        pytest.approx(2 / 3), pytest.approx(1 / 3))
    assert len((tmp_path / "j" / VERDICTS_FILE).read_text().splitlines()) == 3


@pytest.mark.parametrize("url, refused", [
    ("http://user:sk-123@localhost:8000/v1", "holds credentials"),
    ("https://api.example.com/v1?api_key=sk-123", "holds a key"),
])
def test_a_key_in_the_url_is_refused(url, refused):
    with pytest.raises(ParamsError, match=refused):
        LLMTrainingParams(judge=url, valid_split="validation")


def test_a_key_is_not_sent_over_plain_http_to_another_machine(monkeypatch):
    from autotrain.judge.spec import api_key

    monkeypatch.setenv(KEY_VARIABLE, "sk-x")
    with pytest.raises(ParamsError, match="unencrypted"):
        api_key("http://judge.example.com/v1/chat/completions")
    assert api_key("http://127.0.0.1:8000/v1/chat/completions") == "sk-x"
    monkeypatch.delenv(KEY_VARIABLE)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    assert api_key("https://judge.example.com/v1/chat/completions") is None  # OpenAI's key goes to OpenAI only
    assert api_key("https://api.openai.com/v1/chat/completions") == "sk-openai"


def test_spec_parsing():
    spec = parse("http://localhost:8000/v1#Qwen/Qwen2.5-7B-Instruct")
    assert (spec.url, spec.model) == ("http://localhost:8000/v1/chat/completions", "Qwen/Qwen2.5-7B-Instruct")
    assert parse("http://localhost:8000/v1/chat/completions").url == "http://localhost:8000/v1/chat/completions"
    assert parse("./judge-model") == JudgeSpec("./judge-model", None, "./judge-model")
    # An answer that itself holds a placeholder is not filled in again.
    assert fill("{question}|{answer_a}|{answer_b}", "q", "{answer_b}", "b") == "q|{answer_b}|b"


def test_a_chat_reply_is_read_by_its_first_letter():
    from autotrain.judge.chat import read_letter

    said = ["A", "**B**", "[[A]]", "B.", " A\nbecause", "Both are fine", "Answer: A", "", "a"]
    assert [read_letter(text) for text in said] == ["A", "B", "A", "B", "A", None, None, None, None]


def tiny_reward_model(folder: Path) -> Path:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, num_labels=1,
                         pad_token_id=2)
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():
        model.score.weight *= 100  # scores far apart, not within the tie margin of each other
    model.save_pretrained(folder)
    make_tokenizer(chat=True).save_pretrained(folder)
    return folder


def test_a_tiny_local_causal_lm_judges_from_its_next_token_log_probs(tmp_path, chat_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autotrain.judge.base import TIE_MARGIN
    from autotrain.judge.local import LogProbJudge, load

    judge_model = load(str(chat_model), DEFAULT_TEMPLATE)
    assert isinstance(judge_model, LogProbJudge)
    # What stock transformers gives: log P(A) - log P(B) for the next token after the chat-templated judge prompt.
    tokenizer = AutoTokenizer.from_pretrained(chat_model)
    model = AutoModelForCausalLM.from_pretrained(chat_model).eval()
    prompt = fill(DEFAULT_TEMPLATE, "What is 2+2?", "4", "five")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        logps = model(input_ids=ids).logits[0, -1].log_softmax(-1)
    expected = (logps[tokenizer.convert_tokens_to_ids("A")] - logps[tokenizer.convert_tokens_to_ids("B")]).item()
    reply = judge_model.prefer("What is 2+2?", "4", "five")
    assert reply.score == pytest.approx(expected, abs=1e-5)
    assert reply.choice == ("A" if expected >= TIE_MARGIN else "B" if expected <= -TIE_MARGIN else "tie")
    summary = judge(tmp_path / "j", Answers(["What is 2+2?", "Name a colour."], ["4", "red"], ["five", "blue"]),
                    str(chat_model), None, "again", stream=io.StringIO())
    assert summary["complete"] and summary["metrics"]["eval_judge_pairs"] == 2


def test_a_tiny_reward_model_judges_by_its_scores(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from autotrain.judge.local import RewardJudge, load

    folder = tiny_reward_model(tmp_path / "rm")
    judge_model = load(str(folder), DEFAULT_TEMPLATE)
    assert isinstance(judge_model, RewardJudge)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()

    def score(question: str, answer: str) -> float:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question},
                                             {"role": "assistant", "content": answer}], return_tensors="pt",
                                            return_dict=True)["input_ids"]
        with torch.no_grad():
            return model(input_ids=ids).logits[0, 0].item()

    answers = ["4", "four, I think", "It is 4.", "22"]
    scores = {a: score("What is 2+2?", a) for a in answers}
    assert judge_model.score("What is 2+2?", "4") == pytest.approx(scores["4"], abs=1e-5)
    best, worst = max(scores, key=scores.get), min(scores, key=scores.get)
    assert scores[best] - scores[worst] > 1.0  # the test's own premise: a clear preference
    assert judge_model.prefer("What is 2+2?", best, worst).choice == "A"
    assert judge_model.prefer("What is 2+2?", worst, best).choice == "B"
    summary = judge(tmp_path / "j", Answers(["What is 2+2?"] * 2, [best, worst], [worst, best]), str(folder), None,
                    "again", stream=io.StringIO())
    metrics = summary["metrics"]
    assert (metrics["eval_judge_win"], metrics["eval_judge_loss"]) == (0.5, 0.5)
    assert metrics["eval_judge_position_consistency"] == 1.0  # one answer at a time: the order cannot sway it


def test_a_training_run_judged_by_a_fake_server_that_goes_down_then_finished(tmp_path, chat_model, monkeypatch,
                                                                             caplog):
    """The run's judge server stops answering after the first pair: the trained run is finished and carded, the
    verdict kept, the error names what remains and how to finish; finishing it gives the metrics and the card."""
    from autotrain.cli import main
    from autotrain.judge import chat

    def zs(text: str) -> int:
        return text.count("z")

    monkeypatch.setattr(chat.time, "sleep", lambda seconds: None)
    server = FakeServer(down_after=2, measure=zs)  # prefers the answer with more z: what training teaches here
    monkeypatch.setenv(KEY_VARIABLE, "sk-run")
    rows = [{"prompt": f"{i}?", "completion": "zzzz"} for i in range(8)]
    valid = [{"prompt": f"Say {w}.", "completion": "zzzz"} for w in ("yes", "no", "hi")]
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", rows)
    write_jsonl(data / "validation.jsonl", valid)
    project = tmp_path / "run"
    params = LLMTrainingParams(model=str(chat_model), data_path=str(data), project_name=str(project),
                               trainer="sft", valid_split="validation", peft=True, max_steps=6, batch_size=2,
                               gradient_accumulation=1, lr=5e-2, warmup_ratio=0.0, sample_answers=1,
                               judge=server.url)
    try:
        with caplog.at_level("INFO", logger="autotrain"), pytest.raises(JudgingStopped) as stopped:
            AutoTrainProject(params=params).create()
        assert "judge: after training, 3 prompts are answered before and after training" in caplog.text
        assert "3 to judge in both orders: 6 judge calls" in caplog.text
        finish = f"aitraining llm --judge {server.url} --project-name {project}"
        assert "stopped after 1 of 3 pairs (HTTP 503" in str(stopped.value) and "2 remain" in str(stopped.value)
        assert f"judge them with `{finish}`" in str(stopped.value)
        card = (project / "README.md").read_text()  # the run is finished: its card is written
        assert "stopped after 1 of 3 pairs" in card and "eval_judge" not in (project / "metrics.jsonl").read_text()
        assert len((project / VERDICTS_FILE).read_text().splitlines()) == 1
        server.down_after = None
        assert main(finish.split()[1:]) == 0
    finally:
        server.close()
    assert len(server.bodies) == 6  # the kept pair was not asked again
    answered = [json.loads(line) for line in (project / "judge_answers.jsonl").read_text().splitlines()]
    assert [a["prompt"] for a in answered] == [r["prompt"] for r in valid]
    samples = [json.loads(line) for line in (project / "samples.jsonl").read_text().splitlines()]
    assert samples[0]["after"] == answered[0]["after"] and samples[0]["before"] == answered[0]["before"]
    # The server's verdicts, worked out from the answers: after wins where it has more z, loses where fewer; equal
    # counts make the server pick A in both orders, a flip: a tie.
    expected = [1.0 if zs(a["after"]) > zs(a["before"]) else 0.0 if zs(a["after"]) < zs(a["before"]) else 0.5
                for a in answered]
    assert 1.0 in expected  # the test's premise: training taught z
    records = [json.loads(line) for line in (project / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["eval_judge_win_rate"] == pytest.approx(sum(expected) / 3)
    assert records[-1]["eval_judge_win"] == pytest.approx(expected.count(1.0) / 3)
    assert records[-1]["step"] == 6 and sum("eval_judge_win" in r for r in records) == 1
    result = AutoTrainProject.__module__ and __import__("autotrain.project").project.result_of(params)
    assert result.metrics["eval_judge_win_rate"] == records[-1]["eval_judge_win_rate"]
    assert result.evaluation[1]["step"] == 6 and "eval_loss" in result.evaluation[1]  # still the last evaluation
    card = (project / "README.md").read_text()
    assert "## Judged answers: after vs before training" in card and "length-controlled win rate" in card
    assert "stopped after" not in card and card.count("## Judged answers") == 1
    assert "sk-run" not in card and set(server.keys) == {"Bearer sk-run"}


def test_judge_flags_need_judge_and_prompts(tmp_path):
    with pytest.raises(ParamsError, match=r"judge_prompts applies to the judged comparison: add --judge SPEC"):
        LLMTrainingParams(judge_prompts="p.txt")
    with pytest.raises(ParamsError, match=r"add --valid-split, or give the prompts as --judge-prompts FILE"):
        LLMTrainingParams(judge="some/model")
    LLMTrainingParams(judge="some/model", judge_prompts="p.txt")


def test_judge_metrics_are_sweep_metrics_with_judge(tmp_path, chat_model):
    from autotrain.params.sweep import parse_space
    from autotrain.run.sweep import check_space

    space = '{"lr": [0.001, 0.01]}'
    common = dict(model=str(chat_model), project_name=str(tmp_path / "s"), valid_split="validation", use_sweep=True,
                  sweep_params=space, sweep_metric="eval_judge_lc_win_rate")
    params = LLMTrainingParams(**common, judge="some/model", sweep_direction="maximize")
    check_space(params, parse_space(space), {"judge": "some/model", "valid_split": "validation"})
    with pytest.raises(ParamsError, match="better when higher.*--sweep-direction maximize"):
        check_space(LLMTrainingParams(**common, judge="some/model"), parse_space(space),
                    {"judge": "some/model", "valid_split": "validation"})
    with pytest.raises(ParamsError, match="eval_judge_lc_win_rate is not a metric that the evaluation logs"):
        check_space(LLMTrainingParams(**common, sweep_direction="maximize"), parse_space(space),
                    {"valid_split": "validation"})


def test_compare_two_runs_with_a_local_judge(tmp_path, chat_model, capsys, caplog, monkeypatch):
    from autotrain.cli import main

    run_a = make_model_dir(tmp_path / "a", chat=True, seed=1)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is 2+2?\nName a colour.\n")
    # The default judge prompt is longer than the tiny judge's 512 positions (one token a character): a short one.
    template = tmp_path / "judge.txt"
    template.write_text("Q: {question}\nA: {answer_a}\nB: {answer_b}\nBetter:")
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("INFO", logger="autotrain"):
        assert main(["llm", "--compare", str(run_a), str(chat_model), "--judge", str(chat_model),
                     "--judge-prompts", str(prompts), "--judge-template", str(template)]) == 0
    out = tmp_path / f"compare-a-vs-{chat_model.name}"
    printed = capsys.readouterr().out
    assert "| a vs b | value | 95% interval |" in caplog.text and "length-controlled win rate" in caplog.text
    assert "named neither" not in caplog.text  # every reply read
    assert f"a: {run_a}\nb: {chat_model}" in printed
    assert f"written: {out.relative_to(tmp_path) / SUMMARY_FILE}" in printed
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["runs"] == {"a": str(run_a), "b": str(chat_model)} and summary["complete"]
    assert summary["metrics"]["eval_judge_pairs"] == 2
    answered = [json.loads(line) for line in (out / "judge_answers.jsonl").read_text().splitlines()]
    assert [a["prompt"] for a in answered] == ["What is 2+2?", "Name a colour."]
    from conftest import greedy_answer

    assert [a["a"] for a in answered] == [greedy_answer(run_a, run_a, p) for p in ("What is 2+2?", "Name a colour.")]


def finished_run(folder: Path, data: Path, seed: int) -> Path:
    """A model folder that reads as a finished run of this tool validated on `data`'s validation split."""
    make_model_dir(folder, chat=True, seed=seed)
    LLMTrainingParams(model="base", data_path=str(data), project_name=str(folder), trainer="sft",
                      valid_split="validation").save_json(folder / "training_params.json")
    (folder / "README.md").write_text("# card\n")
    return folder


def test_compare_on_the_runs_validation_prompts(tmp_path, chat_model, caplog, capsys, monkeypatch):
    from autotrain.cli import main

    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", [{"prompt": f"{i}?", "completion": "z"} for i in range(4)])
    write_jsonl(data / "validation.jsonl", [{"prompt": p, "completion": "z"} for p in ("Hi.", "Add 2 and 3.", "Go.")])
    other = tmp_path / "other"
    other.mkdir()
    write_jsonl(other / "train.jsonl", [{"prompt": "1?", "completion": "z"}])
    write_jsonl(other / "validation.jsonl", [{"prompt": "Something else.", "completion": "z"}])
    run_a, run_b = finished_run(tmp_path / "a", data, 1), finished_run(tmp_path / "b", data, 2)
    run_c = finished_run(tmp_path / "c", other, 3)
    template = tmp_path / "judge.txt"
    template.write_text("Q: {question}\nA: {answer_a}\nB: {answer_b}\nBetter:")
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("INFO", logger="autotrain"):
        assert main(["llm", "--compare", str(run_a), str(run_b), "--judge", str(chat_model), "--judge-template",
                     str(template), "--judge-max-prompts", "2", "--compare-output", "out"]) == 0
    assert f"compare: {run_a} answers 2 prompts (greedy)" in caplog.text
    answered = [json.loads(line) for line in (tmp_path / "out" / "judge_answers.jsonl").read_text().splitlines()]
    assert [a["prompt"] for a in answered] == ["Hi.", "Add 2 and 3."]  # the first two validation prompts
    capsys.readouterr()
    assert main(["llm", "--compare", str(run_a), str(run_c), "--judge", str(chat_model)]) == 2
    assert capsys.readouterr().err == (f"error: compare: {run_a} and {run_c} were validated on different prompts; "
                                       "give the prompts to compare on as --judge-prompts FILE\n")
    assert not (tmp_path / "compare-a-vs-c").exists()


def test_compare_refuses_training_flags_and_needs_a_judge(tmp_path, chat_model, capsys):
    from autotrain.cli import main

    assert main(["llm", "--compare", str(chat_model), str(chat_model), "--lr", "0.1", "--judge", "x"]) == 2
    assert main(["llm", "--compare", str(chat_model), str(chat_model)]) == 2
    assert main(["llm", "--judge", "x"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: --lr: --compare takes --judge, --judge-prompts, --judge-template, --judge-max-prompts and "
        "--compare-output",
        "error: --compare needs --judge SPEC (a local model, a reward model or an OpenAI-compatible URL)",
        "error: --judge without --train judges a finished run: add --project-name DIR (or --train)"]


def test_a_judge_model_that_is_not_there_is_named_as_the_judge(tmp_path):
    from autotrain.judge.spec import check

    with pytest.raises(ModelError, match=rf"^judge: {tmp_path / 'nowhere'}: no such model folder"):
        check(str(tmp_path / "nowhere"), None)
