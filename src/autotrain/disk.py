"""Free space, and telling a failed write apart from a bug.

A full disk reaches Python in several shapes: an OSError with ENOSPC or EDQUOT from Python's own writes, a
RuntimeError "basic_ios::clear: iostream error" or "file write failed" from torch.save's C++ stream writer, a
SafetensorError naming "StorageFull" from safetensors' Rust writer. `write_failure` recognises them, so that the
caller can remove what was half written and say in one line what was kept, instead of a traceback.

Standard library only.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

# Errors of a write that did not reach the disk (no space, no quota, a file over the size limit, an I/O error).
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO}
# How torch's and safetensors' writers word the same failures.
_WRITE_MARKERS = ("no space left", "storagefull", "disk quota", "iostream error", "file write failed",
                  "quotaexceeded", "filetoolarge")


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds `path`, or would hold it (its nearest existing folder above)."""
    for place in (path, *path.parents):
        if place.exists():
            return shutil.disk_usage(place).free
    return shutil.disk_usage(Path.cwd()).free


def write_failure(exc: BaseException) -> str | None:
    """What went wrong, in a few words, when `exc` is a failed write; None for any other error."""
    if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
        return exc.strerror or str(exc)
    text = str(exc)
    if any(marker in text.lower() for marker in _WRITE_MARKERS):
        return text.strip().splitlines()[-1][:120] if text.strip() else type(exc).__name__
    return None


def size(count: int) -> str:
    """A byte count for a message: '812 KB', '1.4 GB'."""
    value = float(count)
    for unit in ("bytes", "KB", "MB"):
        if value < 1000:
            return f"{value:.1f} MB" if unit == "MB" else f"{value:.0f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"
