"""Durable, atomic publication of folders: written aside, flushed to disk, then given their name by one rename.

A rename is atomic, but without an fsync the renamed name can survive a crash while the data behind it does not.
Everything this tool publishes by rename goes through here: checkpoints (autotrain.checkpoints), tokenized-data
cache entries (autotrain.data.cache) and the converted default model (autotrain.defaults).

- `new_temp(root, prefix, label)` makes the folder to write into: a sibling of the final name (the same file
  system, so the rename is atomic), named `<prefix><label>-<pid>-<host tag><random>`, which says whose it is;
- `publish(staged, final)` flushes it and gives it its final name (see there for an existing `final`);
- `remove_stale_temps(root, prefix, max_age_s)` removes what killed processes left: this host's temps whose process
  is gone, and any host's older than `max_age_s` (a shared file system has other hosts' processes too);
- `discard(folder, prefix)` removes a published folder the same way round: renamed to a temp name, then deleted;
- `replace_entries(staged, folder, old, prefix)` puts a set of files that shares its folder with others in place of
  another set (no single rename can): old ones aside, new ones in, one rename each.

Standard library only: the data stage and the project-folder checks use it before torch is imported.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import shutil
import socket
import time
import uuid
from pathlib import Path


def fsync_path(path: str | os.PathLike) -> None:
    """Flush one file's data, or one folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str | os.PathLike) -> None:
    """Flush every file and folder under `folder`, so a rename publishes complete data."""
    for root, _, files in os.walk(folder):
        for name in files:
            fsync_path(os.path.join(root, name))
        fsync_path(root)


def _host_tag() -> str:
    # A hash, not the name: host names hold '-', which separates the parts of a temp's name.
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _temp_name(root: Path, prefix: str, label: str) -> Path:
    return root / f"{prefix}{label}-{os.getpid()}-{_host_tag()}{uuid.uuid4().hex[:8]}"


def new_temp(root: Path, prefix: str, label: str) -> Path:
    """A new empty folder `<root>/<prefix><label>-<pid>-<host tag><random>` to write a folder into before `publish`."""
    temp = _temp_name(root, prefix, label)
    temp.mkdir()
    return temp


def discard(folder: Path, prefix: str) -> None:
    """Remove a published folder: renamed to a `new_temp`-style name first, so that no reader ever finds half of it
    under its name, and a crash during the removal leaves a temp for `remove_stale_temps`."""
    aside = _temp_name(folder.parent, prefix, "discarded")
    os.rename(folder, aside)
    shutil.rmtree(aside, ignore_errors=True)


def remove_stale_temps(root: Path, prefix: str, max_age_s: float) -> None:
    """Remove the `new_temp` folders of killed processes: this host's whose process is gone, any older than
    `max_age_s`. A live process's temp is never touched (nor one whose owner cannot be told, until it is old)."""
    here = _host_tag()
    for temp in root.glob(prefix + "*"):
        try:
            stale = time.time() - temp.stat().st_mtime > max_age_s
            if not stale:
                _, pid, tail = temp.name[len(prefix) :].rsplit("-", 2)
                stale = tail.startswith(here) and int(pid) != os.getpid() and not _alive(int(pid))
        except (OSError, ValueError):
            continue
        if stale:
            shutil.rmtree(temp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def publish(staged: Path, final: Path, *, replace_via: Path | None = None) -> bool:
    """Flush the fully written folder `staged` and rename it to `final`; return whether it took the name.

    - `final` absent: one rename. If another process published `final` meanwhile (a rename onto a non-empty folder
      fails), theirs is as good as this one: False, and `staged` is left for the caller to remove.
    - `final` present, no `replace_via`: it stands; False.
    - `final` present, with `replace_via`: `final` is replaced, in one atomic swap where the OS can
      (`exchange`), the old copy then removed. Elsewhere the old copy is first renamed to `replace_via`: a crash
      before the new copy takes its name leaves the old one there, for the caller to put back on its next start.
    """
    fsync_tree(staged)
    old: Path | None = None
    if not final.exists():
        try:
            os.rename(staged, final)
        except OSError:
            if not final.is_dir():
                raise
            return False
    elif replace_via is None:
        return False
    elif exchange(staged, final):
        old = staged
    else:
        shutil.rmtree(replace_via, ignore_errors=True)
        os.rename(final, replace_via)  # a crash from here until the next rename leaves the old copy at replace_via
        os.rename(staged, final)
        old = replace_via
    fsync_path(final.parent)  # the new name is on disk before the old copy goes
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return True


def replace_entries(staged: Path, folder: Path, old: set[str], prefix: str) -> None:
    """Flush the fully written folder `staged`, then make its entries `folder`'s in place of the entries named
    `old`: the old ones are moved aside into a temp folder, the new ones moved in, one rename each, and the old ones
    deleted. For a set of files that shares its folder with others (one rename cannot swap them): a crash in
    between leaves part of the new set or part of the old one, never a mix of both; `staged` is emptied."""
    fsync_tree(staged)
    aside = new_temp(folder, prefix, "replaced")
    try:
        for name in sorted(old):
            if os.path.lexists(folder / name):
                os.rename(folder / name, aside / name)
        for path in sorted(staged.iterdir()):
            os.rename(path, folder / path.name)
        fsync_path(folder)
    finally:
        shutil.rmtree(aside, ignore_errors=True)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _load_renameat2():
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2  # glibc 2.28+
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_renameat2 = _load_renameat2()


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`); False where the OS or the
    file system cannot."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))
