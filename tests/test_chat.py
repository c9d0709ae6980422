"""`aitraining chat`: the server's endpoints (streaming, the starting model beside, queueing, stop, bad folders and
requests), on a tiny LoRA run; the page itself in a real browser is tests/test_chat_page.py."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
from pathlib import Path

import httpx
import pytest
from conftest import arithmetic_pairs, greedy_answer, spy_from_pretrained, write_jsonl

from autotrain.cli import main
from autotrain.project import AutoTrainProject
from autotrain.trainers.clm.params import LLMTrainingParams

QUICK = dict(max_steps=8, batch_size=2, gradient_accumulation=1, logging_steps=1, lr=5e-2, warmup_ratio=0.0)


def pairs(count: int, start: int = 0) -> list[dict]:
    """Sums whose chosen answer is "zzzz": learned in a few steps, so the trained model answers otherwise than the
    model it started from (which answers newlines)."""
    return [{**row, "chosen": "zzzz"} for row in arithmetic_pairs(count, start)]


def train(folder: Path, model: Path, card: bool = True, **overrides) -> Path:
    """A tiny run; with `card`, a validation split and two sample answers too: what the list and the card show."""
    data = folder.parent / f"{folder.name}-data"
    data.mkdir(parents=True)
    write_jsonl(data / "train.jsonl", pairs(12))
    write_jsonl(data / "validation.jsonl", pairs(4, start=20))
    shown = dict(valid_split="validation", sample_answers=2) if card else {}
    params = LLMTrainingParams(model=str(model), data_path=str(data), project_name=str(folder),
                               **{**QUICK, **shown, **overrides})
    AutoTrainProject(params=params).create()
    return folder


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, chat_model) -> Path:
    """LoRA, the adapter saved alone at the top: `--inference` loads base + adapter, as the page does."""
    return train(tmp_path_factory.mktemp("runs") / "lora", chat_model, peft=True, merge_adapter=False)


@contextlib.contextmanager
def serving(*folders: Path):
    """The chat server on a free port of this machine, in a thread, offering these runs."""
    import uvicorn

    from autotrain.chat.command import bind
    from autotrain.chat.runs import Run
    from autotrain.chat.server import create_app

    listening = bind("127.0.0.1", 0)
    runs = [Run(f.name, f) for f in folders]
    server = uvicorn.Server(uvicorn.Config(create_app(lambda: runs), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    for _ in range(1000):
        if server.started:
            break
        threading.Event().wait(0.01)
    try:
        yield f"http://127.0.0.1:{listening.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)


def ask(url: str, run: str, prompt: str | list[dict], answer_id: str = "a", compare: bool = False,
        seen: threading.Event | None = None, **settings) -> list[dict]:
    """The events of one /api/chat request, in order; `seen` is set when the first one arrives."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    body = {"run": run, "id": answer_id, "messages": messages, "settings": settings}
    if compare:
        body["base_messages"] = messages
    events = []
    with httpx.stream("POST", f"{url}/api/chat", json=body, timeout=300) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if seen is not None:
                    seen.set()
    return events


def done(events: list[dict], side: str = "trained") -> dict:
    (found,) = [e for e in events if e["type"] == "done" and e["side"] == side]
    return found


def inference_answer(project: Path, prompt: str | list[dict], max_tokens: int) -> str:
    """What `aitraining llm --inference` answers (greedy)."""
    from autotrain.inference import InferenceParams, generate

    given = prompt
    if not isinstance(prompt, str):  # a conversation is given as a .jsonl file
        given = str(write_jsonl(project.parent / "conversation.jsonl", [{"prompt": prompt}]))
    (row,) = generate(InferenceParams(project_name=str(project), inference_prompts=given,
                                      inference_max_tokens=max_tokens))
    return row["answer"]


def test_the_answer_streams_and_is_the_inference_answer_beside_the_base_models(lora_run, chat_model, monkeypatch):
    loads = spy_from_pretrained(monkeypatch, ("AutoModelForCausalLM",))
    with serving(lora_run) as url:
        events = ask(url, "lora", "3+4=", compare=True, max_new_tokens=64)
    loaded = len(loads)  # what the server loaded (the expected answers below load their own)
    trained, base = done(events, "trained"), done(events, "base")
    assert [e["type"] for e in events][:3] == ["loading", "ready", "start"]
    assert trained["text"] == inference_answer(lora_run, "3+4=", 64)
    assert base["text"] == greedy_answer(chat_model, lora_run, "3+4=")  # stock transformers on the base model
    assert trained["text"] != base["text"]  # the run trained: else the two sides could not be told apart here
    # Streamed: the pieces of each side, in order, are its answer.
    for side, answer in (("trained", trained), ("base", base)):
        pieces = [e["text"] for e in events if e["type"] == "token" and e["side"] == side]
        assert len(pieces) > 1 and "".join(pieces) == answer["text"]
    # The starting point is the same weights with the adapter off: the base model was loaded once, by peft.
    assert loaded == 1


def test_history_and_system_prompt_render_as_inference_renders_a_conversation(lora_run):
    conversation = [{"role": "system", "content": "Add."}, {"role": "user", "content": "1+1="},
                    {"role": "assistant", "content": "2"}, {"role": "user", "content": "2+5="}]
    with serving(lora_run) as url:
        events = ask(url, "lora", conversation, max_new_tokens=12)
    assert done(events)["text"] == inference_answer(lora_run, conversation, 12)


def test_a_run_trained_without_a_template_answers_each_message_alone(tmp_path, chat_model):
    run = train(tmp_path / "plain", chat_model, card=False, chat_template="none", peft=True, merge_adapter=False)
    conversation = [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"},
                    {"role": "user", "content": "2+5="}]
    with serving(run) as url:
        events = ask(url, "plain", conversation, max_new_tokens=12)
    assert {"type": "ready", "run": "plain", "template": False, "lora": True} in events
    assert done(events)["text"] == inference_answer(run, "2+5=", 12)  # the last message, as a plain-text prompt


def test_a_merged_lora_run_answers_as_inference_from_one_copy(tmp_path, chat_model, monkeypatch):
    run = train(tmp_path / "merged", chat_model, card=False, peft=True)  # merged at the top, adapter/ kept
    loads = spy_from_pretrained(monkeypatch, ("AutoModelForCausalLM",))
    with serving(run) as url:
        events = ask(url, "merged", "2+2=", compare=True, max_new_tokens=64)
    loaded = len(loads)
    assert done(events)["text"] == inference_answer(run, "2+2=", 64)
    assert done(events, "base")["text"] == greedy_answer(chat_model, run, "2+2=")
    assert loaded == 1  # the base model under the adapter, not the merged copy beside it


def test_a_full_fine_tune_loads_its_starting_model_once(tmp_path, chat_model, monkeypatch):
    run = train(tmp_path / "full", chat_model, card=False)
    loads = spy_from_pretrained(monkeypatch, ("AutoModelForCausalLM",))
    with serving(run) as url:
        first = ask(url, "full", "5+1=", answer_id="1", compare=True, max_new_tokens=64)
        again = ask(url, "full", "6+2=", answer_id="2", compare=True, max_new_tokens=64)
    loaded = len(loads)
    assert done(first)["text"] == inference_answer(run, "5+1=", 64)
    assert done(first, "base")["text"] == greedy_answer(chat_model, run, "5+1=")
    assert done(again, "base")["text"] == greedy_answer(chat_model, run, "6+2=")
    assert loaded == 2  # the trained model and its starting point, each once


def test_sampling_settings_reach_generate(lora_run, monkeypatch):
    from transformers import GenerationMixin

    seen: dict = {}

    def spy(self, **kwargs):
        seen.update(kwargs)
        kwargs["streamer"].end()
        return kwargs["input_ids"]

    monkeypatch.setattr(GenerationMixin, "generate", spy)
    with serving(lora_run) as url:
        ask(url, "lora", "x", greedy=False, temperature=0.7, top_p=0.9, top_k=5, max_new_tokens=9)
        assert (seen["do_sample"], seen["temperature"], seen["top_p"], seen["top_k"], seen["max_new_tokens"]) == (
            True, 0.7, 0.9, 5, 9)
        ask(url, "lora", "x", answer_id="b", greedy=True, temperature=0.7, max_new_tokens=3)
        assert (seen["do_sample"], seen["temperature"], seen["max_new_tokens"]) == (False, None, 3)


class Gate:
    """Holds the first answer's generation at its first new token until released: a second request then arrives
    while it generates, whatever the machine's speed."""

    def __init__(self, monkeypatch):
        from autotrain.chat import engine

        self.reached, self.release, self.armed = threading.Event(), threading.Event(), True
        original = engine.TokenStream.put

        def put(stream, value):
            new_token = stream._prompt_seen
            original(stream, value)
            if new_token and self.armed:
                self.armed = False
                self.reached.set()
                self.release.wait(120)

        monkeypatch.setattr(engine.TokenStream, "put", put)


def order_served(monkeypatch) -> list[tuple[str, str]]:
    """(first message, event type) for each event the server yields, in the order it yields them."""
    from autotrain.chat import engine

    served: list[tuple[str, str]] = []
    original = engine.answer_events

    def recorded(loaded, which, messages, decoding, stop):
        for event in original(loaded, which, messages, decoding, stop):
            served.append((messages[-1]["content"], event["type"]))
            yield event

    monkeypatch.setattr(engine, "answer_events", recorded)
    return served


def test_a_second_request_waits_its_turn(lora_run, monkeypatch):
    gate, served = Gate(monkeypatch), order_served(monkeypatch)
    got: dict[str, list[dict]] = {}
    with serving(lora_run) as url:
        first = threading.Thread(target=lambda: got.update(A=ask(url, "lora", "1+2=", "A", max_new_tokens=20)))
        first.start()
        assert gate.reached.wait(120)  # A is generating
        waiting = threading.Event()
        second = threading.Thread(target=lambda: got.update(B=ask(url, "lora", "2+3=", "B", seen=waiting,
                                                                  max_new_tokens=20)))
        second.start()
        assert waiting.wait(120)  # B has its first event while A still generates
        gate.release.set()
        first.join(120)
        second.join(120)
    assert got["B"][0] == {"type": "queued", "ahead": 1}
    # Not interleaved: the server generated all of A's answer, then all of B's.
    runs_of = [prompt for i, (prompt, _) in enumerate(served) if i == 0 or served[i - 1][0] != prompt]
    assert runs_of == ["1+2=", "2+3="]
    assert [kind for _, kind in served].count("done") == 2
    assert done(got["A"])["stopped"] is False and done(got["B"])["text"] == inference_answer(lora_run, "2+3=", 20)


def test_stop_ends_the_answer_at_the_next_token(lora_run, monkeypatch):
    gate = Gate(monkeypatch)
    got: dict[str, list[dict]] = {}
    with serving(lora_run) as url:
        asking = threading.Thread(target=lambda: got.update(A=ask(url, "lora", "1+2=", "A", max_new_tokens=200)))
        asking.start()
        assert gate.reached.wait(120)
        assert httpx.post(f"{url}/api/stop", json={"id": "A"}).json() == {"stopped": True}
        gate.release.set()
        asking.join(120)
        assert httpx.post(f"{url}/api/stop", json={"id": "A"}).json() == {"stopped": False}  # no longer asked
    answer = done(got["A"])
    # The token on its way when stop came, and at most the one after it (transformers checks its stopping criteria
    # before or after streaming a token, by version); 200 were asked for.
    assert answer["stopped"] is True and answer["tokens"] in (1, 2)
    assert got["A"][-1] == {"type": "end"}


def test_a_page_that_goes_away_stops_its_answer(lora_run, monkeypatch):
    """The client closes its stream after the first token; the second token's generation waits until the answer is
    told to stop, which only the server's noticing the closed stream does (else it would go on for 300 tokens)."""
    from autotrain.chat import engine

    served, stops = order_served(monkeypatch), []
    original_stop, original_put = engine.stop_when, engine.TokenStream.put
    monkeypatch.setattr(engine, "stop_when", lambda event: stops.append(event) or original_stop(event))

    def put(stream, value):
        original_put(stream, value)
        stream.puts = getattr(stream, "puts", 0) + 1  # the prompt, the first token, the second
        if len(stops) == 1 and stream.puts == 3:  # A's second token
            stops[0].wait(120)

    monkeypatch.setattr(engine.TokenStream, "put", put)
    body = {"run": "lora", "id": "A", "messages": [{"role": "user", "content": "1+2="}],
            "settings": {"max_new_tokens": 300}}
    with serving(lora_run) as url:
        with httpx.stream("POST", f"{url}/api/chat", json=body, timeout=300) as response:
            for line in response.iter_lines():
                if '"type": "token"' in line:
                    break  # the page goes away
        after = ask(url, "lora", "2+3=", "B", max_new_tokens=5)
    assert stops[0].is_set()
    assert ("1+2=", "done") not in served and ("1+2=", "token") in served
    assert done(after)["text"] == inference_answer(lora_run, "2+3=", 5)


def test_the_list_and_the_card_show_what_the_run_wrote(lora_run, chat_model):
    records = [json.loads(line) for line in (lora_run / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in records if "eval_loss" in r]
    samples = [json.loads(line) for line in (lora_run / "samples.jsonl").read_text().splitlines()]
    with serving(lora_run) as url:
        (listed,) = httpx.get(f"{url}/api/runs").json()["runs"]
        card = httpx.get(f"{url}/api/runs/lora/card").json()
        plot = httpx.get(f"{url}/api/runs/lora/plot")
        missing = httpx.get(f"{url}/api/runs/nothing/card")
    assert (listed["name"], listed["method"], listed["base_model"], listed["lora"]) == (
        "lora", "orpo", str(chat_model), True)
    assert listed["metrics"]["eval_loss"] == evaluations[-1]["eval_loss"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", listed["date"])
    assert f"Method: {card['method_line']}." in (lora_run / "README.md").read_text().splitlines()
    assert card["method_line"].startswith("ORPO with beta")
    assert ["loss", evaluations[0]["eval_loss"], evaluations[-1]["eval_loss"]] in card["before_after"]
    assert card["samples"] == samples and len(samples) == 2
    assert card["settings"]["lora_r"] == json.loads((lora_run / "training_params.json").read_text())["lora_r"]
    assert plot.status_code == 200 and plot.content.startswith(b"\x89PNG")
    assert missing.status_code == 404 and missing.json() == {"error": "no finished run named nothing"}


def test_the_page_needs_nothing_from_elsewhere(lora_run):
    from autotrain.chat.server import STATIC

    with serving(lora_run) as url:
        page = httpx.get(f"{url}/").text
        served = {name: httpx.get(f"{url}/static/{name}") for name in ("app.js", "style.css")}
    assert '<script src="/static/app.js">' in page and all(r.status_code == 200 for r in served.values())
    for text in [page, *(r.text for r in served.values()), *(p.read_text() for p in STATIC.iterdir())]:
        assert not re.search(r"https?:|//[a-z0-9.-]+\.[a-z]{2,}/|@import|url\(", text), text[:200]


def finished_looking(folder: Path, **saved) -> Path:
    """A folder with a run's records (and no weights, unless already there): found as a finished run."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "training_params.json").write_text(json.dumps({"trainer": "orpo", "model": "m", "peft": True, **saved}))
    (folder / "README.md").write_text("# run\n\nMethod: ORPO with beta 0.1.\n")
    return folder


def test_a_model_that_does_not_load_is_one_line_on_the_page_and_the_console(tmp_path, capfd):
    broken = finished_looking(tmp_path / "broken")
    with serving(broken) as url:
        events = ask(url, "broken", "hi")
    message = (f"broken: the model does not load: {broken}: no trained model here (no config.json or "
               "adapter_config.json)")
    assert events == [{"type": "loading", "run": "broken"}, {"type": "error", "message": message}, {"type": "end"}]
    assert f"error: {message}\n" in capfd.readouterr().err


def test_a_starting_model_that_does_not_load_is_one_line_beside_the_trained_answer(tmp_path, chat_model, capfd):
    import shutil

    gone = tmp_path / "gone"
    full = tmp_path / "full"
    shutil.copytree(chat_model, full)  # a full fine-tune's folder: weights and tokenizer at the top
    finished_looking(full, peft=False, model=str(gone))
    with serving(full) as url:
        events = ask(url, "full", "1+1=", compare=True, max_new_tokens=4)
    (error,) = [e for e in events if e["type"] == "error"]
    assert done(events)["tokens"] > 0 and error["side"] == "base"
    assert error["message"].startswith(f"full: its starting model {gone} does not load: ")
    assert "\n" not in error["message"]
    assert f"error: {error['message']}\n" in capfd.readouterr().err


def test_bad_requests_get_one_line(lora_run):
    with serving(lora_run) as url:
        too_long = ask(url, "lora", "1" * 600)
        refused = httpx.post(f"{url}/api/chat", json={"run": "lora", "id": "x", "messages": [
            {"role": "user", "content": "hi"}], "settings": {"top_p": 2}})
        unknown = httpx.post(f"{url}/api/chat", json={"run": "other", "id": "x", "messages": [
            {"role": "user", "content": "hi"}]})
        not_json = httpx.post(f"{url}/api/chat", content=b"{")
    (error,) = [e for e in too_long if e["type"] == "error"]
    assert re.fullmatch(r"message: the prompt is \d+ tokens and the model reads at most 512 \(its "
                        r"max_position_embeddings\), which leaves no room for an answer; shorten it", error["message"])
    assert refused.status_code == 400 and refused.json() == {"error": "settings.top_p: Input should be less than or "
                                                                      "equal to 1"}
    assert unknown.status_code == 404 and unknown.json() == {"error": "no finished run named other"}
    assert not_json.status_code == 400 and not_json.json() == {"error": "the request body is not JSON"}


def chat_command(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(["chat", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_folder_that_is_no_finished_run_is_one_line_before_anything_starts(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "training_params.json").write_text("{}")
    for args, line in [
        (["--project-name", str(tmp_path / "missing")], f"project_name: {tmp_path / 'missing'} does not exist"),
        (["--project-name", str(tmp_path / "plain")], f"project_name: {tmp_path / 'plain'} holds no aitraining run "
         "(no training_params.json); name a folder that `aitraining llm --train` wrote"),
        (["--project-name", str(unfinished)], f"project_name: {unfinished} holds an unfinished run (it stopped before "
         "its final save, which ends with README.md); it saved no checkpoint; train it again"),
        (["--projects-dir", str(tmp_path)], f"projects_dir: {tmp_path} holds no finished run (1 unfinished), in itself "
         "or one level below (a folder with training_params.json and README.md); train one with `aitraining llm "
         "--train` or name one with --project-name"),
    ]:
        assert chat_command(args, capsys) == (2, "", f"error: {line}\n")


def test_a_port_in_use_is_one_line(tmp_path, capsys):
    run = finished_looking(tmp_path / "run")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = chat_command(["--project-name", str(run), "--port", str(port)], capsys)
    assert (code, out, err) == (2, "", f"error: --port {port}: 127.0.0.1:{port} is in use by another program; choose "
                                       "another port with --port\n")


def test_the_address_is_printed_and_another_host_is_warned_of(tmp_path, capsys, monkeypatch):
    import uvicorn

    served = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: served.append(sockets[0].getsockname()))
    for name in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
        monkeypatch.setenv(name, "0")  # put back after the test; the command sets them for its own process
    finished_looking(tmp_path / "a")
    finished_looking(tmp_path / "b")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "training_params.json").write_text("{}")
    code, out, err = chat_command(["--projects-dir", str(tmp_path), "--host", "0.0.0.0", "--port", "0"], capsys)
    port = served[0][1]
    assert (code, out) == (0, f"aitraining chat: http://0.0.0.0:{port}/ (2 finished runs; 1 unfinished passed over); "
                              "Ctrl+C stops\n")
    assert err == ("warning: --host 0.0.0.0 serves the page, and the loaded model's answers, to every machine that "
                   f"reaches this one on port {port}; the default, 127.0.0.1, keeps it on this machine\n")
    code, out, err = chat_command(["--project-name", str(tmp_path / "a"), "--port", "0"], capsys)
    assert code == 0 and out.startswith("aitraining chat: http://127.0.0.1:") and err == ""
    import os

    assert (os.environ["HF_HUB_OFFLINE"], os.environ["HF_HUB_DISABLE_TELEMETRY"]) == ("1", "1")


def test_without_the_extra_the_line_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    from autotrain.chat import command

    monkeypatch.setattr(command, "_installed", lambda name: name != "uvicorn")
    run = finished_looking(tmp_path / "run")
    assert chat_command(["--project-name", str(run)], capsys) == (
        2, "", "error: aitraining chat needs uvicorn, which is not installed: pip install 'aitraining[chat]'\n")
