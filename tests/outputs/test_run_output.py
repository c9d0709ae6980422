"""What a run shows and leaves, through the CLI as a user meets it: only our lines, each once; no secret in any file;
strict-JSON metrics; no staging leftovers; a true adapter card; bf16 on CPU trains; broken or unreachable models are
one line. And through the Python API: typed errors, quiet libraries, the caller's logging left as it was."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import arithmetic_pairs, make_tokenizer, write_jsonl
from safetensors.torch import load_file

from autotrain.errors import ModelError
from autotrain.project import AutoTrainProject
from autotrain.trainers.clm.params import LLMTrainingParams

TOKEN = "hf_CLIsecretTOKEN0123456789abcdefXYZ"
SHORT = ["--max-steps", "2", "--batch-size", "2", "--gradient-accumulation", "1", "--logging-steps", "1"]
# Every line a run of ours may print on stdout (the data stage's own lines included); stderr stays empty.
OUR_LINES = [r"(text|prompt_text|rejected_text)_column not given", r"text_column is 'text' \(the default\)",
             r"checked: the chunked LM head gives the model's own log-probs", r"pairs\.jsonl: ", r"data: \d+ train pairs",
             r"step \d+/2 \(\d+%\) \| loss ", r"outputs: ", r"tokeniz", r"mixed_precision bf16 on CPU: ",
             r"method: ORPO with beta 0\.1 \(ORPO's default\)$"]
MISSING = "nobody-aitraining/no-such-model"


def truncated_copy(model: Path, folder: Path) -> Path:
    shutil.copytree(model, folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # an interrupted download: the header is whole, the data is not
    return folder


CASES = {
    "secret": (["--log", "wandb", "--token", TOKEN, "--save-steps", "1"], {"WANDB_MODE": "offline"}),
    "quiet": (["--peft", "--save-steps", "1"], {"WANDB_MODE": "offline"}),  # offline set, --log none
    "verbose": (["--verbose"], {"WANDB_MODE": "offline"}),
    "bf16": (["--mixed-precision", "bf16"], {}),
    "truncated": (["--model", "TRUNCATED"], {}),
    "hub offline": (["--model", MISSING], {"HF_HUB_OFFLINE": "1"}),
    "hub": (["--model", MISSING], {"HF_HUB_OFFLINE": ""}),
    "hub data": (["--data-path", "nobody-aitraining/no-such-data"], {"HF_HUB_OFFLINE": ""}),  # the last flag wins
    # HOME that nothing can be created in (a file: not even root can make folders under it)
    "home unwritable": (["--peft", "--save-steps", "1"], {"HOME": "A FILE"}),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, chat_model) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """All cases started together (each spends seconds importing torch); each in its own folder."""
    started = {}
    for name, (flags, env) in CASES.items():
        folder = tmp_path_factory.mktemp("run")
        write_jsonl(folder / "pairs.jsonl", arithmetic_pairs(8))
        model = truncated_copy(chat_model, folder / "broken") if "TRUNCATED" in flags else chat_model
        flags = [str(model) if f == "TRUNCATED" else f for f in flags]
        if "--model" not in flags:
            flags = ["--model", str(chat_model), *flags]
        cmd = [sys.executable, "-m", "autotrain", "llm", "--train", "--data-path", "pairs.jsonl", "--project-name",
               "p", *SHORT, *flags]
        if env.get("HOME") == "A FILE":
            (folder / "home").write_text("not a folder\n")
            env = {**env, "HOME": str(folder / "home")}
        environment = {**os.environ, "AITRAINING_CACHE": str(folder / "cache"), **env}
        environment.pop("WANDB_API_KEY", None)
        started[name] = (folder, subprocess.Popen(cmd, cwd=folder, env=environment, stdout=subprocess.PIPE,
                                                  stderr=subprocess.PIPE, text=True))
    results = {}
    try:
        for name, (folder, process) in started.items():
            out, err = process.communicate(timeout=600)
            results[name] = (folder, subprocess.CompletedProcess(process.args, process.returncode, out, err))
    finally:
        for _, process in started.values():
            process.kill()
    return results


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def test_a_token_on_the_command_line_reaches_no_file_and_no_output(runs):
    folder, done = runs["secret"]
    assert done.returncode == 0, done.stderr[-3000:]
    files = files_under(folder / "p")
    assert any(p.suffix == ".wandb" for p in files), "wandb wrote no run file: the scan would prove nothing"
    assert any("checkpoint-" in str(p) for p in files)
    leaks = [str(p) for p in files_under(folder) if TOKEN.encode() in p.read_bytes()]
    assert leaks == []
    assert TOKEN not in done.stdout + done.stderr


def test_only_our_lines_each_once_and_nothing_left_behind(runs):
    folder, done = runs["quiet"]
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    strangers = [line for line in lines if not any(re.match(pattern, line) for pattern in OUR_LINES)]
    assert strangers == []
    assert len(lines) == len(set(lines))
    assert lines[-1] == f"outputs: {folder / 'p'}"
    project = folder / "p"
    assert not (project / ".staging").exists()
    assert sorted(p.name for p in folder.iterdir()) == ["cache", "p", "pairs.jsonl"]  # no lock file left
    card = (project / "adapter" / "README.md").read_text()
    assert "More Information Needed" not in card
    assert "LoRA adapter (r=16, alpha=32" in card and "ORPO" in card
    resolved = json.loads((project / "adapter" / "adapter_config.json").read_text())["lora_dropout"]
    assert resolved == 0.0 and f"dropout={resolved}," in card  # the dropout trained with, not the flag's None
    assert not list(project.glob("checkpoint-*/README.md"))


def test_an_unwritable_home_leaves_the_output_quiet(runs):
    """matplotlib, imported for the training curves, logs that it cannot make its cache under HOME and builds a font
    cache: its lines are the libraries' and wait for --verbose."""
    folder, done = runs["home unwritable"]
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == ""
    strangers = [line for line in done.stdout.splitlines() if not any(re.match(p, line) for p in OUR_LINES)]
    assert strangers == []
    assert (folder / "p" / "plots" / "training.png").exists()  # matplotlib ran


def test_a_reader_that_goes_away_neither_stops_the_run_nor_prints_a_traceback(tmp_path, chat_model):
    """`aitraining llm --train ... | head -2`: once the reader has gone, the run goes on with its output discarded
    and finishes (README.md) with exit 0; `--inference ... | head -1` stops answering and exits 0. Nothing on stderr:
    no "--- Logging error ---", no BrokenPipeError."""
    write_jsonl(tmp_path / "pairs.jsonl", arithmetic_pairs(8))
    (tmp_path / "prompts.txt").write_text("1+1=\n2+2=\n3+3=\n")
    env = {**os.environ, "AITRAINING_CACHE": str(tmp_path / "cache")}
    train = [sys.executable, "-m", "autotrain", "llm", "--train", "--model", str(chat_model), "--data-path",
             "pairs.jsonl", "--project-name", "p", *SHORT, "--max-steps", "4"]
    infer = [sys.executable, "-m", "autotrain", "llm", "--inference", "--project-name", "p", "--inference-prompts",
             "prompts.txt", "--inference-max-tokens", "2"]
    for command, lines in ((train, 2), (infer, 1)):
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        try:
            read = [process.stdout.readline() for _ in range(lines)]
            process.stdout.close()  # what head does once it has its lines
            err = process.stderr.read()
            process.wait(timeout=600)
        finally:
            process.kill()
        assert all(read), read
        assert (process.returncode, err) == (0, ""), err[-3000:]
        assert (tmp_path / "p" / "README.md").exists()  # finished: the plain rerun is not blocked by a half folder


def test_verbose_brings_the_libraries_output_back(runs):
    _, done = runs["verbose"]
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[INFO] Running in WANDB offline mode" in done.stdout  # transformers' own line
    assert "Loading weights" in done.stderr  # transformers' loading bar


def strict_records(path: Path) -> list[dict]:
    """Parse as strict JSON readers do: NaN and Infinity are not JSON."""
    def refuse(token: str):
        raise ValueError(f"not JSON: {token}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def test_metrics_are_strict_json_with_null_for_non_finite_values(tmp_path, runs):
    from autotrain.outputs.final import METRICS_FILE, MetricsFile, final_metrics, keep_metrics_until

    folder, _ = runs["quiet"]
    assert [r["step"] for r in strict_records(folder / "p" / METRICS_FILE) if "loss" in r] == [1, 2]

    class State:
        is_world_process_zero, global_step = True, 3

    callback = MetricsFile(tmp_path / METRICS_FILE)
    callback.on_log(None, State(), None, logs={"loss": float("nan"), "learning_rate": float("inf"),
                                               "grad_norm": -float("inf"), "epoch": 0.5})
    assert strict_records(tmp_path / METRICS_FILE) == [
        {"loss": None, "learning_rate": None, "grad_norm": None, "epoch": 0.5, "step": 3}]
    keep_metrics_until(tmp_path, 3)  # the rewrite on resume keeps it strict
    assert strict_records(tmp_path / METRICS_FILE)[0]["loss"] is None
    assert final_metrics(strict_records(tmp_path / METRICS_FILE)) == {"epoch": 0.5, "step": 3}


def test_bf16_on_cpu_trains_under_cpu_autocast_with_one_warning(runs):
    folder, done = runs["bf16"]
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("mixed_precision bf16 on CPU") == 1
    assert (folder / "p" / "model.safetensors").exists()


def test_a_truncated_safetensors_file_is_one_line_before_anything_is_written(runs):
    folder, done = runs["truncated"]
    weights = folder / "broken" / "model.safetensors"
    size = weights.stat().st_size
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.splitlines() == [
        f"error: {weights}: cut short ({size} bytes, its header describes {2 * size}); download or copy it again"]
    assert not (folder / "p").exists()


def test_a_hub_model_that_cannot_be_had_is_one_line_at_once(runs):
    folder, done = runs["hub offline"]
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.splitlines() == [
        f"error: {MISSING}: not in the local Hugging Face cache, and HF_HUB_OFFLINE is set; download it first "
        f"(`hf download {MISSING}`) or pass a local model folder"]
    folder, done = runs["hub"]  # online: unreachable here (no network), or not found where there is one
    assert done.returncode == 2, done.stderr[-3000:]
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"error: {MISSING}: ") and "Traceback" not in done.stderr
    assert ("cannot reach the Hugging Face hub" in line) or ("no such model on the Hugging Face hub" in line)
    assert "Retrying" not in done.stdout + done.stderr
    assert not (folder / "p").exists()


def test_a_hub_dataset_that_cannot_be_had_is_one_line_without_the_librarys_http_noise(runs):
    folder, done = runs["hub data"]
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(done.stderr.splitlines()) == 1, done.stderr[-3000:]
    line = done.stderr.strip()
    assert line.startswith("error: nobody-aitraining/no-such-data: ") and "Traceback" not in done.stderr
    assert "thrown while requesting" not in done.stdout + done.stderr, done.stdout[-3000:]
    assert "Retrying" not in done.stdout + done.stderr, done.stdout[-3000:]
    assert not (folder / "p").exists()


def test_model_errors_from_python_are_model_errors(tmp_path, chat_model, monkeypatch):
    import huggingface_hub.constants

    data = write_jsonl(tmp_path / "pairs.jsonl", arithmetic_pairs(4))
    broken = truncated_copy(chat_model, tmp_path / "broken")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for model, expected in ((broken, "cut short"), (MISSING, "HF_HUB_OFFLINE is set")):
        params = LLMTrainingParams(model=str(model), data_path=str(data), project_name=str(tmp_path / "p"))
        with pytest.raises(ModelError, match=expected):
            AutoTrainProject(params=params).create()
        assert not (tmp_path / "p").exists()


# A caller with its own logging setup trains through the API, then logs again.
_API_CALLER = """
import logging, sys, warnings
logging.basicConfig(level=logging.INFO, format="caller %(name)s %(message)s", stream=sys.stdout)
caller = logging.getLogger("caller.app")
import transformers
transformers.logging.set_verbosity_info()  # the caller wants transformers' info logs
filters = list(warnings.filters)
from autotrain.project import AutoTrainProject
from autotrain.trainers.clm.params import LLMTrainingParams
params = LLMTrainingParams(model=sys.argv[1], data_path=sys.argv[2], project_name=sys.argv[3], max_steps=2,
                           batch_size=2, gradient_accumulation=1, peft=True, save_steps=1)
AutoTrainProject(params=params).create()
print("AFTER", transformers.logging.get_verbosity(), transformers.utils.logging.is_progress_bar_enabled(),
      warnings.filters == filters, logging.getLogger().level, len(logging.getLogger().handlers))
caller.info("still logging")
"""


def test_the_python_api_is_quiet_and_leaves_the_callers_logging_as_it_was(tmp_path, chat_model):
    data = write_jsonl(tmp_path / "pairs.jsonl", arithmetic_pairs(8))
    done = subprocess.run([sys.executable, "-c", _API_CALLER, str(chat_model), str(data), str(tmp_path / "p")],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "AITRAINING_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr[-3000:]
    for noise in ("Loading weights", "Writing model shards", "Warning", "More Information Needed", "%|"):
        assert noise not in done.stderr + done.stdout, noise
    assert f"AFTER {20} True True {20} 1" in done.stdout  # INFO (20) as the caller set it, bars on, filters kept
    assert done.stdout.splitlines()[-1] == "caller caller.app still logging"


def test_resuming_a_tied_model_warns_of_no_missing_key_and_restores_it(tmp_path):
    """The checkpoint of a model with tied embeddings holds the tied weight once; resuming must neither warn that
    lm_head.weight is missing (even with the libraries' logs on) nor lose it: the resumed run ends as the whole."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=4, pad_token_id=2)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "tied")
    make_tokenizer(True).save_pretrained(tmp_path / "tied")
    data = write_jsonl(tmp_path / "pairs.jsonl", arithmetic_pairs(8))
    script = textwrap.dedent("""
        import sys
        from autotrain.project import AutoTrainProject
        from autotrain.trainers.clm.params import LLMTrainingParams
        extra = {"resume_from_checkpoint": sys.argv[4]} if len(sys.argv) > 4 else {}
        params = LLMTrainingParams(model=sys.argv[1], data_path=sys.argv[2], project_name=sys.argv[3], max_steps=2,
                                   batch_size=2, gradient_accumulation=1, save_steps=1, save_total_limit=2,
                                   lr=1e-2, **extra)
        AutoTrainProject(params=params, verbose=True).create()
        """)
    base = [sys.executable, "-c", script, str(tmp_path / "tied"), str(data)]
    whole = subprocess.run([*base, str(tmp_path / "whole")], capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
    resumed = subprocess.run([*base, str(tmp_path / "resumed"), str(tmp_path / "whole" / "checkpoint-1")],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "missing keys" not in resumed.stderr + resumed.stdout
    ours, theirs = load_file(tmp_path / "resumed" / "model.safetensors"), load_file(tmp_path / "whole" / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-6)
