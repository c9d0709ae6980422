"""`--config FILE`: a YAML mapping of params fields under the typed flags, with one-line errors that point into it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from autotrain.cli import build_parser, inference_params_from_args, main, params_from_args
from autotrain.config_file import load_config
from autotrain.errors import ParamsError
from autotrain.trainers.clm.params import LLMTrainingParams


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Configs are written to the working folder, so messages name them as typed: `run.yml:3:1: ...`."""
    monkeypatch.chdir(tmp_path)


def write(text: str, name: str = "run.yml") -> str:
    with open(name, "w", encoding="utf-8") as f:
        f.write(text)
    return name


def train(*flags: str) -> LLMTrainingParams:
    return params_from_args(build_parser().parse_args(["llm", "--train", *flags]))


def error_of(*flags: str) -> str:
    with pytest.raises(ParamsError) as caught:
        train(*flags)
    return str(caught.value)


RUN = "lr: 2e-4\nlora-r: 8\npeft: true\nvalid_split: null\n"


def test_file_values_keep_their_types_and_are_the_only_fields_set():
    params = train("--config", write(RUN))
    assert params.lr == 2e-4 and isinstance(params.lr, float)  # YAML 1.1 reads 2e-4 as a string
    assert params.lora_r == 8 and params.peft is True and params.valid_split is None
    assert params.model_fields_set == {"lr", "lora_r", "peft", "valid_split"}
    assert params.lora_alpha == 32  # a default, not given


def test_typed_flags_override_the_file():
    params = train("--config", write(RUN), "--lora-r", "4", "--no-packing", "--epochs", "3")
    assert (params.lora_r, params.packing, params.epochs, params.lr) == (4, False, 3, 2e-4)
    assert params.model_fields_set == {"lr", "lora_r", "peft", "valid_split", "epochs", "packing"}


def test_a_flag_replaces_a_bad_file_value_before_it_is_checked():
    assert train("--config", write("peft: true\nlora_r: eight\n"), "--lora-r", "4").lora_r == 4


def test_load_config_reads_snake_and_kebab_keys_and_knows_where_each_value_is():
    config = load_config(write("# a run\nlora-r: 8\nmodel:   ./base\n"))
    assert config.values == {"lora_r": 8, "model": "./base"}
    assert config.places == {"lora_r": "run.yml:2:9", "model": "run.yml:3:10"}


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "\n\n"])
def test_an_empty_file_is_refused_rather_than_training_the_sample_pairs(text):
    assert error_of("--config", write(text)) == ("run.yml: the file sets no parameter (it is empty or only comments); "
                                                 "write one `name: value` per line, e.g. `lr: 1e-4`")


def test_the_merge_key_takes_the_anchored_values_under_the_files_own():
    text = ("x-common: &common\n  lr: 2e-4\n  peft: true\n  lora_r: 8\n"  # x- keys only hold anchors
            "x-more: &more\n  lora_r: 2\n  epochs: 3\n"
            "<<: [*common, *more]\n"  # the first mapping wins where both have a key, as YAML says
            "lora_r: 4\n")  # and the file's own key wins over both
    params = train("--config", write(text))
    assert (params.lr, params.peft, params.lora_r, params.epochs) == (2e-4, True, 4, 3)
    assert params.model_fields_set == {"lr", "peft", "lora_r", "epochs"}
    assert train("--config", write("<<: {lr: 1e-4}\n")).lr == 1e-4
    # A bad merged value is reported where it is written, in the anchored mapping.
    assert error_of("--config", write("x-base: &b\n  lr: fast\n<<: *b\n")).startswith(
        "run.yml:2:7: invalid parameters: lr: ")
    assert error_of("--config", write("<<: 5\n")) == (
        "run.yml:1:5: invalid YAML: expected a mapping or list of mappings for merging, but found scalar (while "
        "constructing a mapping from line 1, column 1)")
    assert error_of("--config", write("<<: {lr: 1e-4}\nlr: 2e-4\nlr: 3e-4\n")) == (
        "run.yml:3:1: duplicate key 'lr' (lr is already set on line 2)")


def test_a_value_refused_because_of_a_typed_flag_names_its_place_in_the_file():
    path = write("lr: 1e-4\nlora_r: 8\n")
    assert error_of("--config", path, "--no-peft") == (
        "run.yml:2:9: invalid parameters: lora_r applies to LoRA: add --peft (or leave lora_r out)")
    assert error_of("--config", write("rejected_text_column: worse\n"), "--trainer", "sft") == (
        "run.yml:1:23: invalid parameters: rejected_text_column applies to --trainer orpo, dpo, simpo or cpo only "
        "(trainer is sft)")
    # The rule's other field in the file, the typed one named first: the file's place is the one to fix.
    assert error_of("--config", write("peft: false\n"), "--lora-r", "8") == (
        "run.yml:1:7: invalid parameters: lora_r applies to LoRA: add --peft (or leave lora_r out)")


def test_a_relative_path_in_the_file_is_read_from_the_current_folder_and_the_error_says_so(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "pairs.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    write("data_path: pairs.jsonl\n", "configs/run.yml")
    assert error_of("--config", "configs/run.yml") == (
        f"configs/run.yml:1:12: data_path 'pairs.jsonl' is read from the current folder ({tmp_path}), which has no "
        f"such file; the config file's folder has one: write configs/pairs.jsonl (a relative path in a config file "
        "is relative to the current folder, as on the command line)")
    assert train("--config", write("data_path: configs/pairs.jsonl\n", "configs/ok.yml")).data_path == (
        "configs/pairs.jsonl")


def test_token_may_be_in_the_file():
    params = train("--config", write("token: hf_secret\n"))
    assert params.token.get_secret_value() == "hf_secret"
    assert "hf_secret" not in str(params.public_dict())


def test_unknown_key_names_file_line_column_and_closest_field():
    path = write("lr: 2e-4\npeft: true\nlora_rank: 8\n")
    assert error_of("--config", path) == "run.yml:3:1: unknown key 'lora_rank'; did you mean lora_r?"


def test_unknown_key_without_a_close_field_and_parent_tool_layout():
    message = error_of("--config", write("task: llm-orpo\nparams:\n  lr: 1e-4\n"))
    assert message.startswith("run.yml:1:1: unknown key 'task'; ")


def test_yaml_syntax_error_names_line_and_column():
    # The colon after lora_r is at column 9 of line 2: a mapping cannot start inside a plain value.
    message = error_of("--config", write("lr: 1e-4\n  lora_r: 8\n"))
    assert message == "run.yml:2:9: invalid YAML: mapping values are not allowed here"


def test_top_level_must_be_a_mapping():
    assert error_of("--config", write("- lr: 1e-4\n")) == (
        "run.yml:1:1: expected a mapping of parameter names to values"
    )


def test_duplicate_key_in_either_spelling():
    assert error_of("--config", write("lora_r: 8\nlr: 1e-4\nlora-r: 4\n")) == (
        "run.yml:3:1: duplicate key 'lora-r' (lora_r is already set on line 1)"
    )


def test_wrong_type_is_reported_by_the_params_at_the_value():
    message = error_of("--config", write("peft: true\nlora_r: eight\n"))
    assert message.startswith("run.yml:2:9: invalid parameters: lora_r: ")
    assert "\n" not in message


def test_invalid_flag_value_is_not_blamed_on_the_file():
    message = error_of("--config", write("lora_r: 8\n"), "--lr", "0")
    assert message.startswith("invalid parameters: lr: ")


def test_missing_file():
    assert error_of("--config", "nope.yml") == "nope.yml: no such config file"


def test_inference_config_reads_inference_fields_only():
    write("project_name: out\ninference-prompts: hello\ninference_max_tokens: 7\n", "infer.yml")
    args = build_parser().parse_args(["llm", "--inference", "--config", "infer.yml", "--inference-max-tokens", "9"])
    params = inference_params_from_args(args)
    assert (params.project_name, params.inference_prompts, params.inference_max_tokens) == ("out", "hello", 9)
    args = build_parser().parse_args(["llm", "--inference", "--config", write("lora_r: 8\n")])
    with pytest.raises(ParamsError, match=r"^run\.yml:1:1: 'lora_r' is a training setting, which --inference does "
                                          "not take"):
        inference_params_from_args(args)


def test_config_errors_exit_2_with_one_line(capsys):
    assert main(["llm", "--train", "--config", write("lora_rank: 8\n")]) == 2
    assert capsys.readouterr().err == "error: run.yml:1:1: unknown key 'lora_rank'; did you mean lora_r?\n"


def test_config_is_in_help(capsys):
    with pytest.raises(SystemExit):
        main(["llm", "--help"])
    assert "--config FILE" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "aitraining --config FILE" in capsys.readouterr().out


def test_config_without_a_command_means_llm_train(tmp_path):
    # A missing data file is found after the params are built: the run got as far as training.
    write("data_path: ./missing.jsonl\nproject_name: out\npeft: true\n")
    # An empty cache: the data is checked before the default model would be converted (~40 s, on a first run).
    env = {**os.environ, "AITRAINING_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "autotrain", "--config", "run.yml", "--lora-r", "4"],
                          capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "missing.jsonl" in lines[0], done.stderr
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_config_without_a_command_reads_the_file_and_flags(tmp_path):
    write("peft: true\nlora_r: 0\n")
    command = [sys.executable, "-m", "autotrain", "--config", "run.yml"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("error: run.yml:2:9: invalid parameters: lora_r: Input should be greater than")
    assert done.stderr.count("\n") == 1
    done = subprocess.run([*command, "--lora-r", "4", "--lr", "0"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("error: invalid parameters: lr: "), done.stderr  # lora_r 4 from the flag passed
