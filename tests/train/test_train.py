"""End-to-end runs on tiny models: the two user snippets, the outputs, and each parameter reaching training."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import arithmetic_pairs, write_jsonl
from safetensors.torch import load_file

from autotrain.errors import DataError, ModelError, ParamsError
from autotrain.project import AutoTrainProject, training_arguments
from autotrain.trainers.clm.params import LLMTrainingParams

SNIPPET_COLUMNS = dict(
    trainer="orpo", prompt_text_column="prompt", text_column="chosen", rejected_text_column="rejected"
)


def train(tmp_path: Path, model: Path, rows=None, name="run", **overrides) -> tuple[Path, list[dict]]:
    data = write_jsonl(tmp_path / f"{name}.jsonl", rows or arithmetic_pairs(8))
    settings = dict(batch_size=2, gradient_accumulation=1, logging_steps=1, max_steps=2, lr=1e-3, warmup_ratio=0.0)
    settings.update(overrides)
    params = LLMTrainingParams(model=str(model), data_path=str(data), project_name=str(tmp_path / name), **settings)
    result = AutoTrainProject(params=params, backend="local", process=True).create()
    records = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    return result.output_dir, records


def steps(records: list[dict]) -> list[dict]:
    return [r for r in records if "nll_loss" in r]


def generate(model_dir: Path, tokenizer_dir: Path | None = None, adapter: bool = False) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or model_dir)
    if adapter:
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(model_dir)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "1+2="}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4 or out[0, -1].item() == tokenizer.eos_token_id
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :])


# --- The two snippets, as users type them ------------------------------------------------------------------------


def test_cli_snippet_runs_and_the_result_loads(tmp_path, chat_model):
    data = write_jsonl(tmp_path / "preferences.jsonl", arithmetic_pairs(12))
    cmd = [sys.executable, "-m", "autotrain", "llm", "--train", "--model", str(chat_model), "--data-path", str(data),
           "--project-name", "gemma-orpo", "--trainer", "orpo", "--prompt-text-column", "prompt",
           "--text-column", "chosen", "--rejected-text-column", "rejected", "--peft"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    project = tmp_path / "gemma-orpo"
    for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "model.safetensors",
                 "config.json", "tokenizer.json", "training_params.json", "README.md", "metrics.jsonl"):
        assert (project / name).exists(), name
    assert not (project / "adapter_config.json").exists()  # it would make transformers load base + adapter
    assert list(project.glob("checkpoint-*"))
    records = [json.loads(line) for line in (project / "metrics.jsonl").read_text().splitlines()]
    trl_names = {"loss", "nll_loss", "log_odds_ratio", "log_odds_chosen", "rewards/chosen", "rewards/rejected",
                 "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected", "learning_rate",
                 "grad_norm", "epoch", "step"}
    assert trl_names <= set(records[0])
    # 12 pairs / batch 2 / accumulation 4 = 2 optimizer steps in the default single epoch.
    assert records[-1]["step"] == 2
    assert isinstance(generate(project), str)
    assert isinstance(generate(project / "adapter", adapter=True), str)


def test_python_snippet_runs_with_wandb_offline(tmp_path, chat_model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    write_jsonl(tmp_path / "preferences.jsonl", arithmetic_pairs(8))
    params = LLMTrainingParams(
        model=str(chat_model), data_path="./preferences.jsonl", project_name="gemma-orpo",
        trainer="orpo", prompt_text_column="prompt", text_column="chosen", rejected_text_column="rejected",
        dpo_beta=0.1, max_prompt_length=128, max_completion_length=None,
        epochs=3, batch_size=2, lr=5e-5, peft=True, lora_r=16, lora_alpha=64,
        gradient_accumulation=4, log="wandb",
    )
    project = AutoTrainProject(params=params, backend="local", process=True)
    result = project.create()
    assert result.output_dir == tmp_path / "gemma-orpo"
    assert result.metrics["step"] == 3  # 8 pairs / 2 / 4 = 1 step per epoch, 3 epochs
    assert list((result.output_dir / "wandb").glob("offline-run-*"))
    config = json.loads((result.output_dir / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (16, 64)


# --- Outputs ------------------------------------------------------------------------------------------------------


def test_full_finetune_output_loads_and_token_is_never_written(tmp_path, chat_model):
    secret = "hf_SECRET_token_do_not_write_1234567890"
    project, _ = train(tmp_path, chat_model, token=secret)
    assert (project / "model.safetensors").exists() and not (project / "adapter").exists()
    saved = json.loads((project / "training_params.json").read_text())
    assert "token" not in saved and saved["lr"] == 1e-3
    for path in project.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert isinstance(generate(project), str)


def test_unmerged_adapter_sits_at_the_top(tmp_path, chat_model):
    project, _ = train(tmp_path, chat_model, peft=True, merge_adapter=False, lora_r=4, lora_alpha=8,
                       lora_dropout=0.0, target_modules="q_proj,v_proj")
    config = json.loads((project / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (4, 8, 0.0)
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    assert not (project / "model.safetensors").exists()
    weights = load_file(project / "adapter_model.safetensors")
    assert weights and all(("q_proj" in k or "v_proj" in k) for k in weights)
    assert isinstance(generate(project, adapter=True), str)


def test_card_reports_data_and_metrics(tmp_path, chat_model):
    project, records = train(tmp_path, chat_model)
    card = (project / "README.md").read_text()
    assert f"base_model: {chat_model}" in card
    assert "8 pairs" in card and "no validation split" in card
    assert f"{records[-1]['train_loss']:.6g}" in card


# --- Parameters reach training ------------------------------------------------------------------------------------


def test_training_arguments_carry_every_loop_parameter(tmp_path):
    params = LLMTrainingParams(
        epochs=3, max_steps=7, batch_size=5, lr=1.5e-4, gradient_accumulation=6, warmup_ratio=0.25,
        optimizer="sgd", scheduler="cosine", weight_decay=0.01, max_grad_norm=0.5, seed=1234,
        disable_gradient_checkpointing=True, logging_steps=3, save_total_limit=2, log="tensorboard",
    )
    args = training_arguments(params, tmp_path, train_pairs=100, has_valid=False)
    assert (args.num_train_epochs, args.max_steps) == (3, 7)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (5, 6)
    assert (args.learning_rate, args.warmup_steps, args.weight_decay, args.max_grad_norm) == (1.5e-4, 0.25, 0.01, 0.5)
    assert (args.optim, args.lr_scheduler_type) == ("sgd", "cosine")
    assert (args.seed, args.data_seed) == (1234, 1234)
    assert getattr(args, "activation_checkpointing", getattr(args, "gradient_checkpointing", None)) is False
    assert (args.logging_steps, args.save_total_limit, args.report_to) == (3, 2, ["tensorboard"])
    assert not args.bf16 and not args.fp16
    auto = training_arguments(LLMTrainingParams(), tmp_path, train_pairs=400, has_valid=True)
    # 400 pairs / 2 / 4 = 50 steps: the automatic interval logs about 20 times, within [1, 25].
    assert auto.logging_steps == 2 and auto.eval_strategy == "epoch" and auto.eval_on_start


def test_dpo_beta_weights_the_odds_ratio_term(tmp_path, chat_model):
    for beta in (0.0, 2.5):
        _, records = train(tmp_path, chat_model, name=f"beta{beta}", dpo_beta=beta, max_steps=1)
        first = steps(records)[0]
        # ORPO: loss = nll - beta * mean(log sigmoid(log odds ratio)), TRL's sign convention for log_odds_ratio.
        assert first["loss"] == pytest.approx(first["nll_loss"] - beta * first["log_odds_ratio"], rel=1e-4)


def test_seed_decides_the_run(tmp_path, chat_model):
    def weights(name, seed):
        project, _ = train(tmp_path, chat_model, name=name, seed=seed, peft=True, merge_adapter=False, max_steps=1)
        return load_file(project / "adapter_model.safetensors")

    first, same, other = weights("a", 7), weights("b", 7), weights("c", 8)
    assert all(torch.equal(first[k], same[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_lr_schedule_and_step_count(tmp_path, chat_model):
    _, records = train(tmp_path, chat_model, rows=arithmetic_pairs(12), max_steps=-1, epochs=2, batch_size=3,
                       gradient_accumulation=2, lr=4e-4, scheduler="constant")
    logged = steps(records)
    # 12 pairs / 3 / 2 = 2 steps per epoch, 2 epochs.
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    assert all(r["learning_rate"] == pytest.approx(4e-4) for r in logged)


def test_orpo_prompt_loss_moves_prompt_tokens_under_the_nll(tmp_path, chat_model):
    rows = [{"prompt": "a much longer prompt than the answer " * 2 + str(i), "chosen": "ok", "rejected": "no"}
            for i in range(4)]
    nll = {}
    for flag in (False, True):
        _, records = train(tmp_path, chat_model, rows=rows, name=f"p{flag}", orpo_prompt_loss=flag, max_steps=1,
                           batch_size=4)
        nll[flag] = steps(records)[0]["nll_loss"]
        logps = steps(records)[0]["logps/chosen"]
        # Without prompt loss, the NLL is exactly the chosen completion's mean NLL.
        if not flag:
            assert nll[flag] == pytest.approx(-logps, rel=1e-4)
    assert nll[True] != pytest.approx(nll[False], rel=1e-3)


def test_max_prompt_length_reaches_the_model_input(tmp_path, chat_model, monkeypatch):
    from autotrain.batch import packed, padded

    seen = []
    for cls in (padded.PaddedCollator, packed.PackedCollator):  # whichever layout the model gets
        original = cls.__call__
        monkeypatch.setattr(cls, "__call__", lambda self, f, _o=original: seen.extend(f) or _o(self, f))
    rows = [{"prompt": "x" * 60 + str(i), "chosen": "yes", "rejected": "no"} for i in range(4)]
    train(tmp_path, chat_model, rows=rows, max_prompt_length=9, max_completion_length=2, max_steps=1)
    assert seen and all(len(f["prompt_ids"]) == 9 and len(f["chosen_ids"]) == 2 for f in seen)


def test_validation_is_evaluated_before_and_after(tmp_path, chat_model):
    folder = tmp_path / "splits"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", arithmetic_pairs(8))
    write_jsonl(folder / "validation.jsonl", arithmetic_pairs(4, start=50))
    params = LLMTrainingParams(model=str(chat_model), data_path=str(folder), valid_split="validation",
                               project_name=str(tmp_path / "v"), gradient_accumulation=1, lr=1e-3, logging_steps=1)
    result = AutoTrainProject(params=params).create()
    lines = (result.output_dir / "metrics.jsonl").read_text().splitlines()
    evals = [r for r in map(json.loads, lines) if "eval_loss" in r]
    assert [e["step"] for e in evals] == [0, 4]
    assert {"eval_rewards/accuracies", "eval_nll_loss", "eval_rewards/margins"} <= set(evals[0])
    card = (result.output_dir / "README.md").read_text()
    assert "before -> after" in card and "![training curves](plots/training.png)" in card
    from PIL import Image

    with Image.open(result.output_dir / "plots" / "training.png") as image:
        assert image.size[0] > 4 * image.size[1]  # four panels side by side


def test_tensorboard_writes_event_files(tmp_path, chat_model, monkeypatch):
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    project, _ = train(tmp_path, chat_model, log="tensorboard", max_steps=1)
    assert list(project.rglob("events.out.tfevents.*"))


def test_push_to_hub_uploads_with_the_token_but_not_checkpoints(tmp_path, chat_model, monkeypatch):
    import huggingface_hub

    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def whoami(self):  # asked before training: the hub answers and the token may write
            return {"name": "me", "auth": {"accessToken": {"role": "write"}}}

        def create_repo(self, repo_id, **kwargs):
            calls["repo"] = repo_id

        def upload_folder(self, folder_path, repo_id, ignore_patterns):
            calls["ignore"] = ignore_patterns

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    train(tmp_path, chat_model, name="hubbed", push_to_hub=True, username="me", token="hf_abc", max_steps=1)
    assert calls["token"] == "hf_abc" and calls["repo"] == "me/hubbed"
    assert "checkpoint-*" in calls["ignore"]


# --- Failures are loud ------------------------------------------------------------------------------------------


def test_cli_user_error_is_one_line_exit_2_and_writes_nothing(tmp_path, chat_model):
    cmd = [sys.executable, "-m", "autotrain", "llm", "--train", "--model", str(chat_model), "--data-path",
           "./missing.jsonl", "--project-name", "p"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "error: ./missing.jsonl: no such file or folder"
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (dict(trainer="ppo"), ParamsError, "unknown trainer 'ppo'; did you mean dpo?"),
        (dict(quantization="int4", peft=True), ParamsError, r"quantization: int4 \(bitsandbytes\) needs a CUDA GPU"),
        (dict(mixed_precision="fp16"), ParamsError, "fp16 needs a CUDA GPU"),
        (dict(model="./no-such-model"), ModelError, "no such model folder"),
        (dict(text_column="answer"), DataError, "column 'answer': missing"),
    ],
)
def test_api_errors_are_typed(tmp_path, chat_model, overrides, error, message):
    if error is ParamsError and "trainer" in overrides:
        with pytest.raises(error, match=message):
            LLMTrainingParams(**overrides)
        return
    with pytest.raises(error, match=message):
        train(tmp_path, overrides.pop("model", chat_model), **overrides)
    assert not (tmp_path / "run").exists()


def test_a_finished_project_is_not_overwritten(tmp_path, chat_model):
    project, _ = train(tmp_path, chat_model, max_steps=1)
    before = (project / "model.safetensors").read_bytes()
    with pytest.raises(ParamsError, match="already holds a finished run"):
        train(tmp_path, chat_model, max_steps=1)
    assert (project / "model.safetensors").read_bytes() == before


def test_base_tokenizer_without_template_trains(tmp_path, base_model):
    project, records = train(tmp_path, base_model, max_steps=1)
    assert math.isfinite(steps(records)[0]["loss"])
    assert "chat_template" not in json.loads((project / "tokenizer_config.json").read_text())


def test_process_false_is_refused_in_one_line_not_ignored(tmp_path):
    params = LLMTrainingParams(project_name=str(tmp_path / "run"))
    assert AutoTrainProject(params=params, backend="local", process=True).process is True
    with pytest.raises(ParamsError, match=r"^process=False: the data is always checked and tokenized before "
                                          r"training, so there is no processing to skip; leave process out$"):
        AutoTrainProject(params=params, process=False)
    assert not (tmp_path / "run").exists()


def test_the_default_optimizer_is_adamw_in_one_fused_pass(tmp_path):
    """transformers' own default since torch 2.8 (and TRL's): the same AdamW update, one kernel over all weights
    instead of about ten per parameter tensor; on the 2-core CPU the full fine-tune's optimizer step of SmolLM2-135M
    took 0.57 s that way and 0.15 s fused. `--optimizer adamw_torch` still gives the per-tensor loop."""
    from transformers import Trainer

    args = training_arguments(LLMTrainingParams(project_name=str(tmp_path / "p")), tmp_path / "p", 8, False)
    optimizer, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    assert optimizer is torch.optim.AdamW and kwargs.get("fused") is True
    args = training_arguments(LLMTrainingParams(project_name=str(tmp_path / "p"), optimizer="adamw_torch"),
                              tmp_path / "p", 8, False)
    assert not Trainer.get_optimizer_cls_and_kwargs(args)[1].get("fused")


def test_torch_compile_compiles_the_decoder_layers_for_training_only():
    """--torch-compile: each decoder layer runs through torch.compile while training lasts and eagerly again after
    (generate's KV-cache shapes would compile anew). Not run compiled here: compiling even a 2-layer model costs
    about a minute of CPU, and that the compiled layers compute what the eager ones do is torch's promise; what it
    bought on SmolLM2 is in BENCHMARKS.md."""
    from test_packing import tiny_model

    from autotrain.model.compiled import compiled_layers

    model = tiny_model(lora=True)
    layers = model.get_base_model().get_decoder().layers
    with compiled_layers(model, True):
        assert all(layer._compiled_call_impl is not None for layer in layers)
    assert all(layer._compiled_call_impl is None for layer in layers)
    with compiled_layers(model, False):
        assert all(layer._compiled_call_impl is None for layer in layers)
    model.get_base_model().get_decoder().layers = torch.nn.ModuleList()
    with pytest.raises(ModelError, match="^torch_compile: LlamaForCausalLM keeps no list of decoder layers"):
        with compiled_layers(model, True):
            pass
