"""The project folder: the names a run writes there, who owns it (one run at a time), and whether a run may use it.

- **Ownership.** `owned(project)` takes an exclusive `fcntl` lock on `<parent>/.<name>.lock` before the folder is
  checked, and holds it until the run ends; a second run on the same folder gets one line naming the holder's PID.
  The kernel drops the lock when its process dies, so the file a killed run leaves blocks nobody. A run started by
  `autotrain.run.launch` is owned by the launching process (its training processes must not take the lock, or they
  would wait on their own parent); under torchrun or slurm the process of rank 0 takes it.
- **What a run may use** (`resume_point`): a new or empty folder, one holding only what a launch that got no
  further wrote, or one this tool wrote (it writes `training_params.json` first), unfinished, resumed only when
  asked. A finished run is never overwritten, and a
  folder holding files the tool did not write (a code folder, a home folder) is refused, whatever the flags.
- **Writable.** A read-only file system or a folder without write permission is reported by the lock, before the
  data is read or the model loaded.

Standard library only: these checks run before torch and transformers are imported.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from autotrain.errors import ParamsError

if TYPE_CHECKING:
    from autotrain.params import LLMTrainingParams

PARAMS_FILE = "training_params.json"  # written first: its presence marks a folder as this tool's
CARD_FILE = "README.md"  # written last: its presence marks a finished run
METRICS_FILE = "metrics.jsonl"
RESUMES_FILE = "resumes.jsonl"  # one line per resume: its step, its checkpoint, what it changed (autotrain.outputs.resuming)
ADAPTER_DIR = "adapter"
# What a vision-language run's saved processor leaves (the image processor's config, or the processor's own).
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
PROCESSED_DIR = "processed_data"  # the tokenized splits, with save_processed_data local
LAUNCH_CONFIG_FILE = "accelerate_config.yaml"
LAUNCH_LOG_FILE = "train.log"
# What autotrain.run.launch writes before training starts: a folder holding only these is started over.
PREPARED_FILES = frozenset({PARAMS_FILE, LAUNCH_CONFIG_FILE, LAUNCH_LOG_FILE})

# What file managers leave in any folder they show: not a sign that the folder holds someone's files.
_JUNK = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})

# Lock files held by this process: POSIX locks never exclude their own process, so a second run in the same
# process (a thread, a nested call) is refused here.
_held: set[str] = set()



def project_dir(params: LLMTrainingParams) -> Path:
    """The run's folder: its project_name, made absolute."""
    return Path(params.project_name).expanduser().resolve()
def trained_with_images(folder: Path) -> bool:
    """Whether a saved model folder was trained with images (--image-column: it holds a processor)."""
    return any((folder / name).is_file() for name in PROCESSOR_FILES)


def lock_path(project: Path) -> Path:
    return project.parent / f".{project.name}.lock"


@contextlib.contextmanager
def owned(project: Path, take: bool = True) -> Iterator[None]:
    """Hold `project`'s lock for the duration of the block (`take=False`: someone else holds it for this run).

    Parent folders that do not exist yet are created for the lock file; they, and the lock file, are removed again
    when the block ends, if nothing else was written in them.
    """
    if not take:
        yield
        return
    project = project.expanduser().resolve()
    made = _make_parents(project.parent)
    try:
        fd = _acquire(project)
    except BaseException:
        _remove_empty(made)
        raise
    key = str(lock_path(project))
    _held.add(key)
    try:
        _check_writable(project)
        yield
    finally:
        _held.discard(key)
        with contextlib.suppress(OSError):
            os.unlink(key)  # while still locked: a run that opened it meanwhile notices (see _acquire) and retries
        os.close(fd)
        _remove_empty(made)


def _acquire(project: Path) -> int:
    lock = lock_path(project)
    if str(lock) in _held:
        raise ParamsError(f"project_name: {project} is in use by another run in this process (PID {os.getpid()})")
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ParamsError(f"project_name: cannot write in {lock.parent} ({_why_not(lock.parent, exc)}); choose "
                              "a folder you can write to") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise ParamsError(f"project_name: cannot lock {lock} ({exc.strerror})") from None
            raise ParamsError(
                f"project_name: {project} is in use by another run (PID {holder or 'unknown'}); wait for it to end "
                "or choose another --project-name"
            ) from None
        # The previous holder unlinks the file before releasing it: a lock on an unlinked file guards nothing.
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _why_not(folder: Path, exc: OSError) -> str:
    """Why a file cannot be created in `folder`. A virtual file system (/proc, /sys) answers "No such file or
    directory" for a folder that exists: the file system is the reason then."""
    if exc.errno == errno.ENOENT and folder.is_dir():
        kind = _file_system(folder)
        if kind:
            return f"it is a {kind} file system, where no file can be created"
    return exc.strerror or str(exc)


def _file_system(folder: Path) -> str | None:
    """The type of the file system `folder` is on (Linux: the longest mount point above it in /proc/mounts)."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines() if line.strip()]
    except OSError:
        return None
    above = [(point, kind) for point, kind in mounts if folder == Path(point) or Path(point) in folder.parents]
    return max(above, key=lambda mount: len(mount[0]))[1] if above else None


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""


def _check_writable(project: Path) -> None:
    """An existing project folder on a read-only mount, or without write permission, fails now, not after the run."""
    if not project.is_dir():
        return
    read_only = bool(os.statvfs(project).f_flag & os.ST_RDONLY)
    if read_only or not os.access(project, os.W_OK | os.X_OK):
        why = "read-only file system" if read_only else "permission denied"
        raise ParamsError(f"project_name: cannot write in {project} ({why}); choose a folder you can write to")


def _make_parents(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; return those created, deepest first."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing.append(path)
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            pass
        except OSError as exc:
            _remove_empty(missing)
            raise ParamsError(f"project_name: cannot create {path} ({exc.strerror}); choose a folder you can write "
                              "to") from None
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for path in folders:  # deepest first
        try:
            path.rmdir()
        except OSError:
            return  # not empty (or gone): what is above it is not ours to remove either


def resume_point(project: Path, resume: str | None) -> Path | None:
    """Check the project folder against `resume_from_checkpoint`; return the checkpoint to resume from, if any.

    A finished run is never overwritten, nor a folder the tool did not write. An unfinished run (one that was killed
    or stopped) is resumed only when asked, so an accidental reuse of a project name cannot destroy its checkpoints.
    """
    from autotrain.outputs.checkpoints import checkpoints

    if project.exists() and not project.is_dir():
        raise ParamsError(f"project_name: {project} exists and is a file")
    names = sorted(p.name for p in project.iterdir() if p.name not in _JUNK) if project.is_dir() else []
    if resume is None and names and set(names) <= PREPARED_FILES:
        return None  # a launch that failed before training: nothing to lose
    if names and PARAMS_FILE not in names:
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise ParamsError(
            f"project_name: {project} holds files this tool did not write ({shown}); name a new folder for the run"
        )
    if CARD_FILE in names:
        raise ParamsError(
            f"project_name: {project} already holds a finished run; choose another --project-name or delete the folder"
        )
    if resume not in (None, "auto", "latest"):
        path = Path(resume).expanduser()
        if not (path / "trainer_state.json").exists():
            raise ParamsError(f"resume_from_checkpoint: {resume} is not a checkpoint folder (no trainer_state.json)")
        return path
    found = checkpoints(project) if names else []
    if resume is None:
        if found:
            raise ParamsError(
                f"project_name: {project} holds checkpoints of an unfinished run (newest: {found[-1].name}); "
                "resume it with --resume-from-checkpoint auto, or delete the folder"
            )
        if names:
            raise ParamsError(
                f"project_name: {project} holds files of an earlier run that saved no checkpoint; delete the folder "
                "or pass --resume-from-checkpoint auto to start it over"
            )
        return None
    if resume == "latest" and not found:
        raise ParamsError(f"resume_from_checkpoint: latest, but {project} holds no checkpoint")
    return found[-1] if found else None


def unfinished(project: Path) -> str | None:
    """Why `project` holds no finished run, or None when it does: the model card is written last, after the weights
    and the tokenizer, so without it the model may be half written or missing."""
    if (project / CARD_FILE).is_file():
        return None
    from autotrain.outputs.checkpoints import checkpoints, step_of

    if step_of(project) is not None and (project.parent / PARAMS_FILE).is_file():
        return (f"{project} is a checkpoint of the run in {project.parent}, not a finished run; give the run's folder "
                f"({project.parent}){'' if (project.parent / CARD_FILE).is_file() else ', once it has finished'}")

    found = checkpoints(project) if project.is_dir() else []
    then = (f"its newest checkpoint is {found[-1].name}: finish the run with its training command and "
            "--resume-from-checkpoint auto" if found else "it saved no checkpoint; train it again")
    return f"{project} holds an unfinished run (it stopped before its final save, which ends with {CARD_FILE}); {then}"
