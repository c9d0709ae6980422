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


# --- Values that only work with another value, or within a range the libraries take -------------------------------

# Each field that means something only with another, given without it, and the one line that refuses it (it names
# both). Written out by hand: the rule's own table must not produce what it is checked against.
ALONE = [
    (dict(trainer="sft", rejected_text_column="rejected"),
     "rejected_text_column applies to --trainer orpo, dpo, simpo or cpo only (trainer is sft)"),
    (dict(trainer="sft", dpo_beta=0.2), "dpo_beta applies to --trainer orpo, dpo, simpo or cpo only (trainer is sft)"),
    (dict(eval_strategy="steps", eval_steps=5),
     "eval_strategy applies to evaluation: add --valid-split (or leave eval_strategy out)"),
    (dict(valid_split="v", eval_steps=5), "eval_steps applies to --eval-strategy steps only (eval_strategy is epoch)"),
    (dict(use_enhanced_eval=True), "use_enhanced_eval applies to evaluation: add --valid-split (or leave "
                                   "use_enhanced_eval out)"),
    (dict(custom_metrics='["perplexity"]'), "custom_metrics applies to evaluation: add --valid-split (or leave "
                                            "custom_metrics out)"),
    (dict(valid_split="v", eval_metrics="perplexity"), "eval_metrics applies to enhanced evaluation: add "
                                                       "--use-enhanced-eval (or leave eval_metrics out)"),
    (dict(deepspeed_stage=3), "deepspeed_stage applies to --distributed-backend deepspeed only (distributed_backend "
                              "is none)"),
    (dict(save_strategy="epoch", save_steps=100), "save_steps applies to --save-strategy steps only (save_strategy "
                                                  "is epoch)"),
    (dict(save_strategy="no", save_total_limit=3), "save_total_limit applies to saved checkpoints only "
                                                   "(save_strategy is no)"),
    (dict(wandb_token="k"), "wandb_token applies to W&B: add --log wandb (or leave wandb_token out)"),
    (dict(log="tensorboard", wandb_run_id="abc"), "wandb_run_id applies to W&B: add --log wandb (or leave "
                                                  "wandb_run_id out)"),
    (dict(repo_id="me/model"), "repo_id applies to the hub upload: add --push-to-hub (or leave repo_id out)"),
    (dict(username="me"), "username applies to the hub upload: add --push-to-hub (or leave username out)"),
    (dict(hub_private=False), "hub_private applies to the hub upload: add --push-to-hub (or leave hub_private out)"),
    (dict(sweep_metric="eval_nll_loss"), "sweep_metric applies to a sweep: add --use-sweep (or leave sweep_metric "
                                         "out)"),
    (dict(sweep_n_trials=3), "sweep_n_trials applies to a sweep: add --use-sweep (or leave sweep_n_trials out)"),
    (dict(sweep_params='{"lr": [1e-5, 1e-4, "log"]}'), "sweep_params applies to a sweep: add --use-sweep (or leave "
                                                        "sweep_params out)"),
    (dict(min_lr_rate=0.1), "min_lr_rate applies to --scheduler cosine_with_min_lr or cosine_warmup_with_min_lr "
                            "only (scheduler is linear)"),
    # Values that cannot work: numpy seeds are 0 .. 2**32 - 1; schedules that need what no value here gives.
    (dict(seed=-1), "seed: must be between 0 and 4294967295 (the seeds numpy takes); got -1"),
    (dict(seed=99999999999), "seed: must be between 0 and 4294967295 (the seeds numpy takes); got 99999999999"),
    (dict(scheduler="reduce_lr_on_plateau"), "scheduler reduce_lr_on_plateau changes the learning rate by the "
                                             "validation loss, and there is no validation split: add --valid-split"),
    (dict(scheduler="cosine_with_min_lr"), "scheduler cosine_with_min_lr decays to a floor: add --min-lr-rate R (the "
                                           "floor as a fraction of --lr, e.g. 0.1)"),
    (dict(scheduler="warmup_stable_decay"), "scheduler warmup_stable_decay needs the length of its decay phase, which "
                                            "no flag here sets; use cosine_with_min_lr with --min-lr-rate, or linear"),
]


@pytest.mark.parametrize(("values", "message"), ALONE, ids=[m.split()[0] for _, m in ALONE])
def test_a_field_without_what_it_needs_is_refused_naming_both(values, message):
    with pytest.raises(ParamsError) as caught:
        LLMTrainingParams(**values)
    assert str(caught.value) == f"invalid parameters: {message}"


def test_with_what_they_need_the_same_values_are_accepted_and_defaults_never_trip_a_rule():
    accepted = [
        dict(trainer="dpo", rejected_text_column="rejected", dpo_beta=0.2),
        dict(valid_split="v", eval_strategy="steps", eval_steps=5, use_enhanced_eval=True, eval_metrics="perplexity",
             custom_metrics='["perplexity"]'),
        dict(distributed_backend="deepspeed", deepspeed_stage=3),
        dict(save_steps=100), dict(save_strategy="steps", save_steps=100, save_total_limit=3),
        dict(log="wandb", wandb_token="k", wandb_run_id="abc"),
        dict(push_to_hub=True, repo_id="me/model", username="me", hub_private=False),
        dict(use_sweep=True, valid_split="v", sweep_metric="eval_nll_loss", sweep_n_trials=3),
        dict(scheduler="cosine_with_min_lr", min_lr_rate=0.1), dict(valid_split="v", scheduler="reduce_lr_on_plateau"),
        dict(seed=0), dict(seed=2**32 - 1),
        dict(username=None, repo_id=None, sweep_params=None),  # None spells "not set"
        dict(eval_steps=-1), dict(save_strategy="epoch", save_steps=-1),  # -1: not set / each epoch
    ]
    for values in accepted:
        assert LLMTrainingParams(**values).model_fields_set == set(values)
    every_default = LLMTrainingParams()
    assert every_default.model_fields_set == set()


def test_a_copy_is_validated_like_the_original():
    """model_copy(update=...) is pydantic's way to change a frozen model; it must not be a way around the checks."""
    params = LLMTrainingParams(lr=1e-4, peft=True)
    for update, message in [({"lr": "abc"}, "lr: Input should be a valid number"),
                            ({"lr": float("nan")}, "lr: Input should be a finite number"),
                            ({"lora_r": 0}, "lora_r: Input should be greater than or equal to 1"),
                            ({"eval_steps": 5}, "eval_steps applies to --eval-strategy steps only")]:
        with pytest.raises(ParamsError, match=message):
            params.model_copy(update=update)
    assert params.model_copy(update={"peft": False}).peft is False  # no LoRA field was chosen: nothing to refuse
    copied = params.model_copy(update={"epochs": 2, "orpo_prompt_loss": True})  # an earlier name works too
    assert (copied.lr, copied.peft, copied.epochs, copied.prompt_loss) == (1e-4, True, 2, True)
    assert copied.model_fields_set == {"lr", "peft", "epochs", "prompt_loss"}
    assert params.model_copy() == params and params.model_copy(update={}) == params
    with pytest.raises(ParamsError, match="lora_r applies to LoRA"):
        LLMTrainingParams(peft=True, lora_r=8).model_copy(update={"peft": False})


def test_training_params_json_loads_back_through_the_constructor(tmp_path):
    """What a run leaves in training_params.json is the params: LLMTrainingParams(**json.load(...)) gives them back,
    with the same chosen fields (no secret is in the file)."""
    params = LLMTrainingParams(
        trainer="dpo", dpo_beta=0.2, lr=1e-4, epochs=2, valid_split="validation", eval_strategy="steps", eval_steps=5,
        save_steps=10, sample_answers=2, log="wandb", wandb_token="wandb-secret", push_to_hub=True, username="me",
        token="hf_secret", scheduler="cosine_with_min_lr", min_lr_rate=0.1, seed=7, project_name=str(tmp_path / "p"),
        prompt_loss=True, packing=False, text_column="chosen", model_max_length=2048,
    )
    path = tmp_path / "training_params.json"
    params.save_json(path)
    text = path.read_text()
    assert "wandb-secret" not in text and "hf_secret" not in text
    loaded = LLMTrainingParams(**json.loads(text))
    secrets = {"token", "wandb_token"}
    assert loaded.model_dump(exclude=secrets) == params.model_dump(exclude=secrets)
    assert loaded.model_fields_set == params.model_fields_set - secrets
    assert LLMTrainingParams.load_json(path) == loaded
    # A value edited in the file since is taken, and counts as chosen.
    assert LLMTrainingParams(**{**json.loads(text), "lora_r": 4, "peft": True}).lora_r == 4
    with pytest.raises(ParamsError, match="lora_r applies to LoRA"):
        LLMTrainingParams(**{**json.loads(text), "lora_r": 4})


def test_min_lr_rate_is_the_floor_the_cosine_schedule_reaches(tmp_path):
    """--scheduler cosine_with_min_lr needs transformers' min_lr_rate, which --min-lr-rate gives; the schedule built
    from the run's arguments, as Trainer builds it, ends at lr x rate."""
    import torch
    from transformers import get_scheduler

    from autotrain.project import training_arguments

    params = LLMTrainingParams(scheduler="cosine_with_min_lr", min_lr_rate=0.1, lr=1e-3, warmup_ratio=0.0)
    args = training_arguments(params, tmp_path, train_pairs=8, has_valid=False)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    schedule = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=0, num_training_steps=10,
                             scheduler_specific_kwargs=args.lr_scheduler_kwargs)
    for _ in range(10):
        optimizer.step()
        schedule.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
