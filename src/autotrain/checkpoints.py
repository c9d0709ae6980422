"""Checkpoint folders on disk: publish atomically, replace atomically, rotate, recover after a crash.

- A checkpoint is written into `<project>/.staging/checkpoint-N`, every file is fsynced, and only then is it renamed
  to `<project>/checkpoint-N`: transformers finds checkpoints by that name, so a save killed half way leaves the
  previous checkpoint as the newest one.
- Saving a step that already has a checkpoint (a resumed run saving it again) swaps the two folders in one call
  (Linux `renameat2(RENAME_EXCHANGE)`; autotrain.atomic), so `checkpoint-N` always names a complete copy. Where the
  call is missing (another OS, a file system without it) the old copy is first moved to
  `.staging/replaced-checkpoint-N`; a crash before the new copy takes its name leaves it there, and `clear_staging`
  puts it back.
- A save that fails to write (a full disk) removes its staged copy and stops the run with one line
  (`failed_save`): the previous checkpoint is untouched, and nothing half written keeps the disk full.
- Resuming from a checkpoint while newer ones exist abandons those: `set_aside_newer` moves them to
  `<project>/superseded/` before the first save, so rotation (which keeps the newest steps) can never delete the
  resumed checkpoint or the resumed run's own saves in their favour, and `auto` resumes the resumed branch.

Standard library only (the project-folder checks use it before torch is imported).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from autotrain import atomic, disk
from autotrain.atomic import fsync_path
from autotrain.errors import DiskFull

STAGING = ".staging"
SUPERSEDED = "superseded"
CHECKPOINT_PREFIX = "checkpoint-"
_REPLACED = "replaced-"


def publish(staged: Path, final: Path) -> None:
    """Make a fully written checkpoint visible under its final name; an existing copy is replaced atomically (where
    the OS cannot swap the two, the old copy waits in `.staging/replaced-checkpoint-N` until the new one has its
    name, and `clear_staging` puts it back after a crash in between)."""
    atomic.publish(staged, final, replace_via=final.parent / STAGING / f"{_REPLACED}{final.name}")


def clear_staging(project: Path) -> None:
    """Undo what a killed save left: a replaced checkpoint whose new copy never took its name is put back; the rest
    (half-written saves, copies on their way out) was never complete or is no longer used, and is removed."""
    staging = project / STAGING
    if not staging.is_dir():
        return
    for left in staging.glob(f"{_REPLACED}{CHECKPOINT_PREFIX}*"):
        final = project / left.name.removeprefix(_REPLACED)
        if not final.exists():
            os.rename(left, final)
    fsync_path(project)
    shutil.rmtree(staging, ignore_errors=True)


def drop_staged(project: Path, name: str) -> None:
    """Remove a staged save, and the staging folder with it when nothing else is staged."""
    shutil.rmtree(project / STAGING / name, ignore_errors=True)
    try:
        (project / STAGING).rmdir()
    except OSError:
        pass  # not empty, or gone


def failed_save(project: Path, name: str, exc: BaseException) -> DiskFull | None:
    """After checkpoint `name` failed to save: its staged copy removed; the one-line error when the failure was a
    write that did not reach the disk (a full disk, a quota), else None (the caller re-raises)."""
    drop_staged(project, name)
    reason = disk.write_failure(exc)
    if reason is None:
        return None
    kept = checkpoints(project)
    after = (f"; {kept[-1].name} is intact. Free space, then resume with the same command plus "
             f"--resume-from-checkpoint auto (the steps after {step_of(kept[-1])} run again)" if kept else
             "; no earlier checkpoint exists. Free space, then run the same command plus --resume-from-checkpoint "
             "auto (it starts over)")
    return DiskFull(f"writing {name} into {project} failed ({reason}; {disk.size(disk.free_bytes(project))} free "
                    f"there): its partial copy was removed{after}")


def step_of(path: Path) -> int | None:
    suffix = path.name[len(CHECKPOINT_PREFIX):]
    return int(suffix) if path.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() else None


def checkpoints(project: Path) -> list[Path]:
    """Published checkpoints, oldest step first."""
    found = [p for p in project.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and step_of(p) is not None]
    return sorted(found, key=step_of)


def rotate(project: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints; each leaves the visible set in one rename first."""
    stale = checkpoints(project)[:-keep]
    if stale:
        (project / STAGING).mkdir(exist_ok=True)
    for old in stale:
        trash = project / STAGING / f"deleted-{old.name}"
        os.rename(old, trash)
        shutil.rmtree(trash, ignore_errors=True)


def set_aside_newer(project: Path, resumed: Path | None) -> list[Path]:
    """Move the project's checkpoints of steps after `resumed`'s to `<project>/superseded/`; return where they went.

    Resuming from an older checkpoint abandons the newer ones: left in place they would outrank the resumed run's
    own saves (rotation and `auto` go by step number)."""
    if resumed is None:
        return []
    step = _global_step(resumed)
    newer = [p for p in checkpoints(project) if step_of(p) > step and p.resolve() != resumed.resolve()]
    moved = []
    for path in newer:
        target = project / SUPERSEDED / path.name
        target.parent.mkdir(exist_ok=True)
        suffix = 1
        while target.exists():
            suffix += 1
            target = target.with_name(f"{path.name}-{suffix}")
        os.rename(path, target)
        moved.append(target)
    if moved:
        fsync_path(project)
    return moved


def finish(project: Path) -> None:
    """A finished run keeps no staging folder (empty or not, nothing in it is used again)."""
    shutil.rmtree(project / STAGING, ignore_errors=True)


def _global_step(checkpoint: Path) -> int:
    import json

    try:
        return int(json.loads((checkpoint / "trainer_state.json").read_text())["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        found = step_of(checkpoint)
        return found if found is not None else 0
