"""Durable writes: flush files and folders to disk before a rename makes them visible.

A rename is atomic, but without an fsync the renamed name can survive a crash while the data behind it does not.
Every place that publishes by rename (checkpoints, tokenized-data cache entries, the converted default model)
flushes through here first. Imports nothing but the standard library, so the data stage can use it.
"""

from __future__ import annotations

import os
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
