"""The project folder: one run at a time (a lock held for the whole run), only folders this tool wrote, and a
folder that cannot be written is reported before the data is read."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import arithmetic_pairs, write_jsonl

from autotrain.errors import ParamsError
from autotrain.project import AutoTrainProject
from autotrain.trainers.clm.params import LLMTrainingParams

TINY = dict(max_steps=1, batch_size=2, gradient_accumulation=1)
TINY_FLAGS = ["--max-steps", "1", "--batch-size", "2", "--gradient-accumulation", "1"]


def in_use(project: Path, pid: int) -> str:
    return (f"project_name: {project} is in use by another run (PID {pid}); wait for it to end or choose another "
            "--project-name")


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)


# Holds the project's lock (as a running run would) until told to stop, or kills itself while holding it.
HOLDER = """
import os, signal, sys, time
from pathlib import Path
from autotrain.outputs.project_folder import owned
with owned(Path(sys.argv[1])):
    Path(sys.argv[2]).write_text("held")
    if sys.argv[3] == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    while not Path(sys.argv[3]).exists():
        time.sleep(0.1)
"""


def test_a_run_that_starts_while_another_loads_its_model_is_refused(tmp_path, chat_model):
    """Run A checks the folder, then spends its model load before creating it; run B, started then, used to pass
    the same check, both exited 0 and A's files replaced B's. Now B gets one line naming A's PID."""
    data = write_jsonl(tmp_path / "pairs.jsonl", arithmetic_pairs(8))
    project = tmp_path / "run"
    loading, release = tmp_path / "a-loading", tmp_path / "a-release"
    patch = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from autotrain.model import loading
        _load = loading.load_model
        def load_model(*args, **kwargs):
            Path({str(loading)!r}).write_text("loading")
            while not Path({str(release)!r}).exists():
                time.sleep(0.1)
            return _load(*args, **kwargs)
        loading.load_model = load_model
        """)
    args = ["llm", "--train", "--model", str(chat_model), "--data-path", str(data), "--project-name", str(project),
            *TINY_FLAGS]
    script = patch + f"\nimport sys\nfrom autotrain.cli import main\nsys.exit(main({args!r}))\n"
    run_a = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        wait_for(loading, run_a)
        run_b = subprocess.run([sys.executable, "-m", "autotrain", *args], capture_output=True, text=True,
                               timeout=300)
        release.write_text("go")
        out_a, err_a = run_a.communicate(timeout=300)
    finally:
        release.write_text("go")
        run_a.kill()
    assert run_b.returncode == 2, run_b.stderr[-3000:]
    assert run_b.stderr.splitlines() == [f"error: {in_use(project, run_a.pid)}"]
    assert run_a.returncode == 0, err_a[-3000:]
    assert (project / "README.md").exists()
    assert not (tmp_path / ".run.lock").exists()  # released and removed when A ended


def test_the_lock_is_one_line_from_python_and_a_killed_holder_blocks_nobody(tmp_path, chat_model):
    from autotrain.outputs.project_folder import owned

    project = tmp_path / "run"
    data = write_jsonl(tmp_path / "pairs.jsonl", arithmetic_pairs(4))
    params = LLMTrainingParams(model=str(chat_model), data_path=str(data), project_name=str(project), **TINY)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(project), str(tmp_path / "held"),
                               str(tmp_path / "stop")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(tmp_path / "held", holder)
        with pytest.raises(ParamsError) as caught:
            AutoTrainProject(params=params).create()
        assert str(caught.value) == in_use(project, holder.pid)
        assert not project.exists()
    finally:
        (tmp_path / "stop").write_text("stop")
        holder.communicate(timeout=60)
    # A holder killed while holding leaves its lock file; the kernel dropped the lock with the process.
    killed = subprocess.run([sys.executable, "-c", HOLDER, str(project), str(tmp_path / "held2"), "die"],
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    assert (tmp_path / ".run.lock").exists()
    result = AutoTrainProject(params=params).create()
    assert (result.output_dir / "README.md").exists()
    # In one process too: POSIX locks never exclude their own process, so the tool keeps count itself.
    with owned(tmp_path / "other"), pytest.raises(ParamsError, match="in use by another run in this process"):
        with owned(tmp_path / "other"):
            pass


def test_who_takes_the_lock(monkeypatch):
    from autotrain.run.processes import LAUNCHED_ENV, takes_lock

    for name in ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", LAUNCHED_ENV):
        monkeypatch.delenv(name, raising=False)
    assert takes_lock()
    monkeypatch.setenv("RANK", "0")
    assert takes_lock()  # rank 0 of torchrun / slurm owns the folder for all processes of the run
    monkeypatch.setenv("RANK", "1")
    assert not takes_lock()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv(LAUNCHED_ENV, "1")
    assert not takes_lock()  # started by autotrain.run.launch: the launching process holds it


def test_the_training_module_takes_the_lock_unless_its_launcher_holds_it(tmp_path, chat_model):
    """`python -m autotrain.trainers.clm` (torchrun, slurm) takes the lock in rank 0 and is refused while another
    run holds it; started by autotrain.run.launch it trains under its parent's lock instead of waiting on it."""
    from autotrain.run.processes import LAUNCHED_ENV

    project = tmp_path / "run"
    data = write_jsonl(tmp_path / "pairs.jsonl", arithmetic_pairs(4))
    config = tmp_path / "training_params.json"
    LLMTrainingParams(model=str(chat_model), data_path=str(data), project_name=str(project), **TINY).save_json(config)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", LAUNCHED_ENV)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(project), str(tmp_path / "held"),
                               str(tmp_path / "stop")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    module = [sys.executable, "-m", "autotrain.trainers.clm", "--training_config", str(config)]
    try:
        wait_for(tmp_path / "held", holder)
        refused = subprocess.run(module, capture_output=True, text=True, timeout=300, env=env)
        launched = subprocess.run(module, capture_output=True, text=True, timeout=300, env={**env, LAUNCHED_ENV: "1"})
    finally:
        (tmp_path / "stop").write_text("stop")
        holder.communicate(timeout=60)
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [f"error: {in_use(project, holder.pid)}"]
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert (project / "README.md").exists()


def test_a_folder_of_files_this_tool_did_not_write_is_refused_whatever_the_flags(tmp_path, chat_model):
    """A code folder: the advice to pass --resume-from-checkpoint auto used to write a model next to src/."""
    code = tmp_path / "myrepo"
    (code / "src").mkdir(parents=True)
    (code / "setup.py").write_text("")
    data = write_jsonl(tmp_path / "pairs.jsonl", arithmetic_pairs(4))
    expected = f"project_name: {code} holds files this tool did not write (setup.py, src); name a new folder for the run"
    for resume in (None, "auto"):
        params = LLMTrainingParams(model=str(chat_model), data_path=str(data), project_name=str(code),
                                   resume_from_checkpoint=resume, **TINY)
        with pytest.raises(ParamsError) as caught:
            AutoTrainProject(params=params).create()
        assert str(caught.value) == expected
    assert sorted(p.name for p in code.iterdir()) == ["setup.py", "src"]
    done = subprocess.run([sys.executable, "-m", "autotrain", "llm", "--train", "--model", str(chat_model),
                           "--data-path", str(data), "--project-name", str(code), *TINY_FLAGS], cwd=code,
                          capture_output=True, text=True, timeout=300)
    assert (done.returncode, done.stderr.splitlines()) == (2, [f"error: {expected}"])
    assert sorted(p.name for p in code.iterdir()) == ["setup.py", "src"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["myrepo", "pairs.jsonl"]  # no lock file left beside
    from autotrain.outputs.project_folder import resume_point

    (tmp_path / "shown").mkdir()
    (tmp_path / "shown" / ".DS_Store").write_bytes(b"\0")  # a file manager's, in a folder made for the run
    assert resume_point(tmp_path / "shown", None) is None


def _read_only_run(parent: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run the CLI with `parent` read-only: a read-only mount in a user namespace where one can be made (a real
    EROFS, as on a read-only volume), else, for a user other than root, a folder without write permission."""
    command = [sys.executable, "-m", "autotrain", *args]
    if shutil.which("unshare") and subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0:
        script = 'mount -t tmpfs -o ro tmpfs "$0" && exec "$@"'
        return subprocess.run(["unshare", "-rm", "sh", "-c", script, str(parent), *command], cwd=cwd,
                              capture_output=True, text=True, timeout=300)
    if os.geteuid() == 0:
        pytest.skip("no user namespaces here, and root writes through folder permissions")
    parent.chmod(0o555)
    try:
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    finally:
        parent.chmod(0o755)


def test_a_read_only_place_is_one_line_before_the_data_is_read(tmp_path, chat_model):
    parent = tmp_path / "ro"
    parent.mkdir()
    (tmp_path / "bad.jsonl").write_text("{not json\n")  # a data error would be reported if the data were read
    done = _read_only_run(parent, ["llm", "--train", "--model", str(chat_model), "--data-path", "bad.jsonl",
                                   "--project-name", "ro/p", *TINY_FLAGS], cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"error: project_name: cannot write in {parent} (") and line.endswith(
        "); choose a folder you can write to"), line
    assert list(parent.iterdir()) == []


def test_a_file_system_that_holds_no_files_is_named_not_no_such_file(tmp_path):
    """Creating a file in /proc fails with ENOENT although /proc exists: the reason said is the file system."""
    from autotrain.errors import ParamsError
    from autotrain.outputs.project_folder import owned

    if not Path("/proc/self").is_dir():
        pytest.skip("no /proc on this system")
    with pytest.raises(ParamsError) as caught:
        with owned(Path("/proc/run1")):
            pass
    assert str(caught.value) == ("project_name: cannot write in /proc (it is a proc file system, where no file can "
                                 "be created); choose a folder you can write to")
