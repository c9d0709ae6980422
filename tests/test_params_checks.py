"""Values that must not pass: non-finite floats, LoRA flags without --peft, a project name that is no folder of its
own; and the params are checked without importing torch or transformers, so a data error comes fast."""

from __future__ import annotations

import json
import subprocess
import sys
import typing

import pytest

from autotrain.errors import ParamsError
from autotrain.inference import InferenceParams
from autotrain.trainers.clm.params import LLMTrainingParams

LORA_FLAGS = {"lora_r": 8, "lora_alpha": 8, "lora_dropout": 0.2, "target_modules": "q_proj", "merge_adapter": False}


def float_fields(schema: type) -> list[str]:
    return [name for name, info in schema.model_fields.items()
            if info.annotation is float or float in typing.get_args(info.annotation)]


def cli(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autotrain", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize(("schema", "name"), [(LLMTrainingParams, n) for n in float_fields(LLMTrainingParams)]
                         + [(InferenceParams, n) for n in float_fields(InferenceParams)])
def test_every_float_field_must_be_finite(schema, name, value):
    required = {"inference_prompts": "hi"} if schema is InferenceParams else {}
    with pytest.raises(ParamsError) as caught:
        schema(**required, **{name: float(value)})
    message = str(caught.value)
    assert message == f"invalid parameters: {name}: Input should be a finite number", message


def test_the_float_fields_are_the_ones_expected():
    # The list above is computed from the schema: make sure it is not empty by accident.
    assert {"lr", "dpo_beta", "warmup_ratio", "weight_decay", "max_grad_norm", "lora_dropout"} <= set(
        float_fields(LLMTrainingParams))


@pytest.mark.parametrize(("name", "value"), list(LORA_FLAGS.items()))
def test_lora_flags_without_peft_are_refused_naming_the_flag(name, value):
    with pytest.raises(ParamsError, match=rf"^invalid parameters: {name} applies to LoRA: add --peft"):
        LLMTrainingParams(**{name: value})
    with pytest.raises(ParamsError, match=rf"{name} applies to LoRA"):
        LLMTrainingParams(peft=False, **{name: value})
    assert getattr(LLMTrainingParams(peft=True, **{name: value}), name) == value


def test_saved_params_load_back_with_what_was_chosen(tmp_path):
    """training_params.json holds every value; loading it back must not turn defaults into choices (a launched
    process would otherwise refuse LoRA defaults without --peft, or stop guessing the data's columns)."""
    from autotrain.worker import load_params

    params = LLMTrainingParams(lr=1e-4, project_name=str(tmp_path / "p"))
    params.save_json(tmp_path / "params.json")
    assert set(json.loads((tmp_path / "params.json").read_text())) >= {"lora_r", "text_column", "lr"}
    for loaded in (LLMTrainingParams.load_json(tmp_path / "params.json"), load_params(str(tmp_path / "params.json"))):
        assert loaded == params
        assert loaded.model_fields_set == {"lr", "project_name"}
    (tmp_path / "bad.json").write_text(json.dumps({"peft": False, "lora_r": 4}))
    with pytest.raises(ParamsError, match="lora_r applies to LoRA"):
        LLMTrainingParams.load_json(tmp_path / "bad.json")


@pytest.mark.parametrize("name", ["", " ", ".", "./", "sub/..", ".."])
def test_project_names_that_are_no_new_folder_are_refused(name):
    with pytest.raises(ParamsError, match=r"^invalid parameters: project_name: "):
        LLMTrainingParams(project_name=name)


def test_help_says_to_prefer_hf_token_and_the_resume_line_leaves_the_token_out():
    from autotrain.cli import _without_resume

    assert "Prefer the HF_TOKEN environment variable" in " ".join(cli("llm", "--help").stdout.split())
    typed = ["llm", "--train", "--token", "hf_x1", "--lr", "1e-4", "--token=hf_x2", "--resume-from-checkpoint", "a"]
    assert _without_resume(typed) == (["llm", "--train", "--lr", "1e-4"], True)
    assert _without_resume(["llm", "--train", "--project-name", "my run"]) == (
        ["llm", "--train", "--project-name", "'my run'"], False)


def test_optimizer_and_scheduler_names_are_transformers_own(monkeypatch):
    """The names are checked without importing transformers (seconds), against a copy of its lists: every name the
    installed transformers knows is accepted, and one it does not know is refused before the model loads."""
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    from autotrain.preflight import check_device
    from autotrain.params import sections as params

    assert set(params.OPTIMIZERS) >= {o.value for o in OptimizerNames}
    assert set(params.SCHEDULERS) >= {s.value for s in SchedulerType}
    with pytest.raises(ParamsError, match="unknown optimizer 'adamw'; did you mean"):
        LLMTrainingParams(optimizer="adamw")
    monkeypatch.setattr(params, "OPTIMIZERS", (*params.OPTIMIZERS, "adamw_of_another_version"))
    with pytest.raises(ParamsError, match="^optimizer: 'adamw_of_another_version' is not an optimizer of the "
                                          "installed transformers$"):
        check_device(LLMTrainingParams(optimizer="adamw_of_another_version"))


def test_cli_refuses_non_finite_values_and_lora_flags_without_peft(tmp_path):
    cases = {
        ("--lr", "inf"): "error: invalid parameters: lr: Input should be a finite number",
        ("--dpo-beta", "nan"): "error: invalid parameters: dpo_beta: Input should be a finite number",
        ("--no-peft", "--lora-r", "8"): "error: invalid parameters: lora_r applies to LoRA: add --peft (or leave "
                                        "lora_r out)",
        ("--project-name", ""): "error: invalid parameters: project_name: must name a folder (got '')",
        ("--project-name", "."): "error: invalid parameters: project_name: '.' is the current folder; name a new "
                                 "folder for the run's outputs",
    }
    started = {flags: subprocess.Popen([sys.executable, "-m", "autotrain", "llm", "--train", *flags], cwd=tmp_path,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for flags in cases}
    try:
        for flags, process in started.items():
            out, err = process.communicate(timeout=120)  # an accepted value would start training: seconds more
            assert (process.returncode, err.splitlines()) == (2, [cases[flags]]), (flags, err[-2000:])
    finally:
        for process in started.values():
            process.kill()
    assert list(tmp_path.iterdir()) == []


# Runs the CLI on a broken data file and reports which heavy libraries were imported by the time it returned.
_IMPORTS_AT_DATA_ERROR = """
import sys
from autotrain.cli import main
code = main(sys.argv[1:])
print(code, [name for name in ("torch", "transformers", "datasets", "peft", "accelerate") if name in sys.modules])
"""


def test_a_data_error_comes_before_torch_and_transformers_are_imported(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"prompt": "a", "chosen": "b"\n')
    done = subprocess.run([sys.executable, "-c", _IMPORTS_AT_DATA_ERROR, "llm", "--train", "--data-path", "d.jsonl",
                           "--project-name", "p", "--lr", "1e-4", "--optimizer", "adamw_torch", "--scheduler",
                           "cosine"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.stderr.splitlines() == ["error: d.jsonl:1: malformed JSON at column 30: Expecting ',' delimiter"]
    assert done.stdout.splitlines()[-1] == "2 []"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]


def test_names_from_transformers_and_trl_get_this_tools_name():
    with pytest.raises(ParamsError, match=r"learning_rate: unknown parameter; this tool calls it lr$"):
        LLMTrainingParams(learning_rate=1e-4)
    with pytest.raises(ParamsError, match=r"per_device_train_batch_size: unknown parameter; this tool calls it batch_size"):
        LLMTrainingParams(per_device_train_batch_size=2)
