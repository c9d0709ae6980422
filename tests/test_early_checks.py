"""What a run needs besides its params is checked before the data stage, in well under a second: the packages of the
optimizer, the tracker, the attention kernel; a W&B server to log online to; the hub's answer and write access for
--push-to-hub. A finished run is pushed without training again. No test here reaches the network: the hub is a fake
HfApi, and an unreachable server is a closed port on this machine."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading

import pytest
from conftest import arithmetic_pairs, write_jsonl

from autotrain import preflight
from autotrain.cli import main
from autotrain.errors import AutoTrainError, ParamsError
from autotrain.trainers.clm.params import LLMTrainingParams

# What a run needs a package for, by the package's module, and the line that refuses it when it is missing.
MISSING = [
    (dict(optimizer="adamw_bnb_8bit"), ["bitsandbytes"],
     "optimizer: adamw_bnb_8bit needs the bitsandbytes package, which is not installed (pip install bitsandbytes)"),
    (dict(optimizer="galore_adamw"), ["galore_torch"],
     "optimizer: galore_adamw needs the galore_torch package, which is not installed (pip install galore-torch)"),
    (dict(optimizer="schedule_free_adamw"), ["schedulefree"],
     "optimizer: schedule_free_adamw needs the schedulefree package, which is not installed (pip install "
     "schedulefree)"),
    (dict(log="tensorboard"), ["tensorboard", "tensorboardX"],
     "log: tensorboard needs the tensorboard package, which is not installed (pip install tensorboard)"),
    (dict(log="wandb"), ["wandb"], "log: wandb needs the wandb package, which is not installed (pip install wandb)"),
    (dict(attn_implementation="flash_attention_2"), ["flash_attn", "kernels"],
     "attn_implementation: flash_attention_2 needs the flash_attn package, which is not installed (pip install "
     "flash-attn; it also needs a CUDA GPU)"),
    (dict(quantization="int4", peft=True), ["bitsandbytes"],
     "quantization: int4 (bitsandbytes) needs a CUDA GPU and the bitsandbytes package, which is not installed (pip "
     "install bitsandbytes)"),
]


@pytest.fixture
def offline_wandb(monkeypatch):
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(("values", "modules", "message"), MISSING, ids=[m.split(":")[0] + str(i)
                                                                         for i, (_, _, m) in enumerate(MISSING)])
def test_a_missing_package_is_named_before_the_data_stage(values, modules, message, monkeypatch, offline_wandb):
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)  # what `import` and find_spec then see: not installed
    with pytest.raises(ParamsError) as caught:
        preflight.check_setup(LLMTrainingParams(**values))
    assert str(caught.value) == message


def test_every_optimizer_transformers_cannot_build_for_a_missing_package_is_refused_first(tmp_path):
    """The table of optimizer packages is checked against transformers itself: every optimizer name it cannot
    build here because a package is missing must be one that the early check refuses."""
    import torch
    from transformers import Trainer, TrainingArguments
    from transformers.training_args import OptimizerNames

    model = torch.nn.Linear(2, 2)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    not_built = {}
    for name in OptimizerNames:
        args.optim = name
        try:
            Trainer.get_optimizer_cls_and_kwargs(args, model)
        except Exception as exc:  # noqa: BLE001 - each optimizer fails its own way
            not_built[name.value] = str(exc)
    missing_package = {name for name, why in not_built.items() if "install" in why or "import" in why}
    assert missing_package  # torch_xla and torch_npu are not on this machine, at least
    for name in (o.value for o in OptimizerNames):
        if name in missing_package:
            with pytest.raises(ParamsError, match=rf"^optimizer: {name} needs the \S+ package, which is not installed"):
                preflight.check_setup(LLMTrainingParams(optimizer=name))
        else:
            preflight.check_setup(LLMTrainingParams(optimizer=name))  # built here: nothing to refuse


def test_low_rank_optimizers_get_the_modules_they_project(tmp_path):
    """GaLore and APOLLO fail without transformers' optim_target_modules, which no flag sets: every linear layer."""
    from autotrain.project import training_arguments

    for name, modules in (("galore_adamw", "all-linear"), ("apollo_adamw_layerwise", "all-linear"),
                          ("adamw_torch", None)):
        args = training_arguments(LLMTrainingParams(optimizer=name), tmp_path, train_pairs=8, has_valid=False)
        assert args.optim_target_modules == modules


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again on return: a connection there is refused at once


class _Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(401)  # any answer says the server is there
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def local_server():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_wandb_online_needs_its_server_now_and_offline_needs_nothing(monkeypatch, offline_wandb, local_server):
    url = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("WANDB_BASE_URL", url)
    with pytest.raises(ParamsError) as caught:  # a key: wandb would log online, and wait 90 s for the server
        preflight.check_setup(LLMTrainingParams(log="wandb", wandb_token="k"))
    assert str(caught.value).startswith(f"log: wandb cannot reach {url} (")
    assert str(caught.value).endswith("); connect, or log offline with WANDB_MODE=offline and upload the run later "
                                      "with `wandb sync`")
    monkeypatch.setenv("WANDB_API_KEY", "k")
    with pytest.raises(ParamsError, match="log: wandb cannot reach"):
        preflight.check_setup(LLMTrainingParams(log="wandb"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    preflight.check_setup(LLMTrainingParams(log="wandb"))  # offline: no server needed
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_BASE_URL", local_server)
    preflight.check_setup(LLMTrainingParams(log="wandb"))  # it answers (401 here): reachable


class FakeHub:
    """huggingface_hub.HfApi as far as a push uses it; `whoami` answers as the class is told."""

    calls: list = []
    answer: object = {"name": "me", "auth": {"accessToken": {"role": "write"}}}

    def __init__(self, token=None):
        self.token = token
        FakeHub.calls.append(("token", token))

    def whoami(self):
        FakeHub.calls.append(("whoami",))
        if isinstance(FakeHub.answer, Exception):
            raise FakeHub.answer
        return FakeHub.answer

    def create_repo(self, repo_id, private, exist_ok):
        FakeHub.calls.append(("create", repo_id, private))

    def upload_folder(self, folder_path, repo_id, ignore_patterns):
        FakeHub.calls.append(("upload", folder_path, repo_id))


class _Refused(Exception):
    def __init__(self, status: int):
        super().__init__(f"{status} Client Error: Invalid user token.")
        self.response = type("Response", (), {"status_code": status})()


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    FakeHub.calls, FakeHub.answer = [], {"name": "me", "auth": {"accessToken": {"role": "write"}}}
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    # HF_TOKEN only: a login stored on this machine must not count
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: os.environ.get("HF_TOKEN"))
    return FakeHub


LATER = "train without --push-to-hub and upload the finished run with `aitraining llm --push-to-hub --project-name p`"


def test_push_to_hub_is_checked_before_training(hub, monkeypatch):
    from huggingface_hub import constants

    params = LLMTrainingParams(push_to_hub=True, username="me", token="hf_abc", project_name="p")
    preflight.check_setup(params)
    assert hub.calls == [("token", "hf_abc"), ("whoami",)]
    cases = [
        (ConnectionError("[Errno 101] Network is unreachable"),
         f"push_to_hub: cannot reach the Hugging Face hub ([Errno 101] Network is unreachable); connect, or {LATER}"),
        (_Refused(401), "push_to_hub: the hub refuses the token (401 Client Error: Invalid user token.); set HF_TOKEN "
                        "to a valid token with write access"),
        ({"name": "me", "auth": {"accessToken": {"role": "read"}}},
         "push_to_hub: the token is read-only; set HF_TOKEN to a token with write access"),
    ]
    for answer, message in cases:
        hub.answer = answer
        with pytest.raises(ParamsError) as caught:
            preflight.check_setup(params)
        assert str(caught.value) == message
    with pytest.raises(ParamsError) as caught:
        preflight.check_setup(params.model_copy(update={"token": None}))
    assert str(caught.value) == "push_to_hub: no hub token; set HF_TOKEN to a token with write access (or run `hf " \
                                "auth login`)"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.calls.clear()
    with pytest.raises(ParamsError) as caught:
        preflight.check_setup(params)
    assert str(caught.value) == f"push_to_hub: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it, or {LATER}"
    assert hub.calls == []  # refused at once, without asking the hub


def finished_project(folder, **saved):
    folder.mkdir()
    (folder / "training_params.json").write_text(json.dumps(saved))
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "README.md").write_text("# card\n")  # written last: the run finished
    return folder


def test_a_finished_run_is_pushed_without_training_again(tmp_path, hub, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    finished_project(tmp_path / "run")
    assert main(["llm", "--push-to-hub", "--project-name", "run", "--username", "me", "--no-hub-private"]) == 0
    assert hub.calls == [("token", "hf_env"), ("whoami",), ("token", None), ("create", "me/run", False),
                         ("upload", str(tmp_path / "run"), "me/run")]
    assert capsys.readouterr().out.splitlines()[-1] == "pushed: me/run"
    # Where to: as the run was told, when it was trained with --push-to-hub and the upload failed.
    finished_project(tmp_path / "told", push_to_hub=True, repo_id="org/model", hub_private=False)
    hub.calls.clear()
    assert main(["llm", "--push-to-hub", "--project-name", "told"]) == 0
    assert ("create", "org/model", False) in hub.calls
    refusals = {
        ("--project-name", "run", "--username", "me", "--lr", "1e-4"):
            "error: --lr is a training flag; --push-to-hub without --train uploads a finished project and takes "
            "--project-name, --repo-id, --username, --hub-private and --token",
        ("--username", "me"): "error: --push-to-hub without --train uploads a finished project: add --project-name DIR",
        ("--project-name", "run"): "error: invalid parameters: push_to_hub needs --username or --repo-id",
    }
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "training_params.json").write_text("{}")
    refusals[("--project-name", "unfinished", "--username", "me")] = (
        f"error: project_name: nothing to push: {tmp_path / 'unfinished'} holds an unfinished run (it stopped before "
        "its final save, which ends with README.md); it saved no checkpoint; train it again")
    refusals[("--project-name", "run", "--username", "me", "HF_HUB_OFFLINE")] = (
        "error: push_to_hub: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it")
    for flags, line in refusals.items():
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", flags[-1] == "HF_HUB_OFFLINE")
        flags = tuple(f for f in flags if f != "HF_HUB_OFFLINE")
        hub.calls.clear()
        assert main(["llm", "--push-to-hub", *flags]) == 2
        assert capsys.readouterr().err.splitlines() == [line]
        assert ("upload",) not in [call[:1] for call in hub.calls]


def test_an_upload_that_fails_after_training_says_how_to_push_the_finished_run(tmp_path, hub, monkeypatch):
    import huggingface_hub

    from autotrain import hub as hub_module

    class Failing(FakeHub):
        def upload_folder(self, folder_path, repo_id, ignore_patterns):
            raise ConnectionError("[Errno 104] Connection reset by peer")

    monkeypatch.setattr(huggingface_hub, "HfApi", Failing)
    project = finished_project(tmp_path / "run")
    params = LLMTrainingParams(push_to_hub=True, username="me", token="t", project_name=str(project))
    with pytest.raises(AutoTrainError) as caught:
        hub_module.push_to_hub(project, params)
    assert str(caught.value) == (
        f"push_to_hub: the upload to me/run failed ([Errno 104] Connection reset by peer); the finished run is in "
        f"{project}: upload it with `aitraining llm --push-to-hub --project-name {project}`")
    assert caught.value.exit_code == 1  # the training succeeded; the upload did not


def test_a_fifo_as_data_path_is_named_as_what_it_is(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    os.mkfifo(tmp_path / "pairs.jsonl")
    assert main(["llm", "--train", "--data-path", "pairs.jsonl", "--project-name", "p"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: pairs.jsonl: a named pipe (FIFO), not a file: the data is read more than once (checked, then "
        "tokenized), which a pipe cannot give; write it to a file and pass that"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl"]


# Runs the CLI with some packages made unimportable; reports its exit code and the heavy libraries it had imported.
_CLI_WITHOUT = """
import sys
for module in sys.argv[1].split(","):
    sys.modules[module] = None
from autotrain.cli import main
code = main(sys.argv[2:])
print(code, [name for name in ("torch", "transformers", "datasets", "peft", "accelerate") if name in sys.modules])
"""


def test_the_cli_refuses_each_before_the_data_is_read_and_writes_nothing(tmp_path):
    """Each of these failed 5-8 s in (after the data stage, some leaving training_params.json behind): now each is
    one line, exit 2, before torch is imported, with the folder as it was. The data file is broken, so a check that
    came after the data stage would show the data's error instead."""
    url = f"http://127.0.0.1:{closed_port()}"
    cases = {
        ("", "--seed", "-1"): "error: invalid parameters: seed: must be between 0 and 4294967295 (the seeds numpy "
                              "takes); got -1",
        ("", "--seed", "99999999999"): "error: invalid parameters: seed: must be between 0 and 4294967295 (the seeds "
                                       "numpy takes); got 99999999999",
        ("", "--scheduler", "reduce_lr_on_plateau"):
            "error: invalid parameters: scheduler reduce_lr_on_plateau changes the learning rate by the validation "
            "loss, and there is no validation split: add --valid-split",
        ("", "--scheduler", "cosine_with_min_lr"):
            "error: invalid parameters: scheduler cosine_with_min_lr decays to a floor: add --min-lr-rate R (the "
            "floor as a fraction of --lr, e.g. 0.1)",
        ("bitsandbytes", "--optimizer", "adamw_bnb_8bit"):
            "error: optimizer: adamw_bnb_8bit needs the bitsandbytes package, which is not installed (pip install "
            "bitsandbytes)",
        ("galore_torch", "--optimizer", "galore_adamw"):
            "error: optimizer: galore_adamw needs the galore_torch package, which is not installed (pip install "
            "galore-torch)",
        ("schedulefree", "--optimizer", "schedule_free_adamw"):
            "error: optimizer: schedule_free_adamw needs the schedulefree package, which is not installed (pip "
            "install schedulefree)",
        ("tensorboard,tensorboardX", "--log", "tensorboard"):
            "error: log: tensorboard needs the tensorboard package, which is not installed (pip install tensorboard)",
        ("", "--log", "wandb", "--wandb-token", "k"):
            None,  # the reason names the OS error: checked by its start and end below
        ("", "--push-to-hub", "--username", "me"): f"error: push_to_hub: HF_HUB_OFFLINE is set, so nothing can be "
                                                   f"uploaded; unset it, or {LATER}",
        ("", "--eval-steps", "5"): "error: invalid parameters: eval_steps applies to --eval-strategy steps only "
                                   "(eval_strategy is epoch)",
        ("", "--trainer", "sft", "--rejected-text-column", "worse"):
            "error: invalid parameters: rejected_text_column applies to --trainer orpo, dpo, simpo or cpo only "
            "(trainer is sft)",
    }
    write_jsonl(tmp_path / "d.jsonl", arithmetic_pairs(2))
    with (tmp_path / "d.jsonl").open("a") as broken:
        broken.write('{"prompt": "a", "chosen": "b"\n')
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_BASE_URL": url, "AITRAINING_CACHE": str(tmp_path / "cache")}
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        env.pop(name, None)
    started = {case: subprocess.Popen([sys.executable, "-c", _CLI_WITHOUT, case[0], "llm", "--train", "--data-path",
                                       "d.jsonl", "--project-name", "p" if "--push-to-hub" in case else f"p{i}",
                                       *case[1:]], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
               for i, case in enumerate(cases)}
    try:
        for case, process in started.items():
            out, err = process.communicate(timeout=120)
            assert out.splitlines()[-1:] == ["2 []"], (case, out[-2000:], err[-2000:])
            line = cases[case]
            if line is None:
                assert len(err.splitlines()) == 1, err
                assert err.startswith(f"error: log: wandb cannot reach {url} ("), err
                assert err.endswith("); connect, or log offline with WANDB_MODE=offline and upload the run later with "
                                    "`wandb sync`\n"), err
            else:
                assert err.splitlines() == [line], (case, err)
    finally:
        for process in started.values():
            process.kill()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]
