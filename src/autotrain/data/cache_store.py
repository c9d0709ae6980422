"""The tokenized-data cache as a whole: where it is, its size cap, least-recently-used eviction, and what
`aitraining cache list` and `aitraining cache clear` show and do. The entries themselves: autotrain.data.cache.

- Where: `<cache root>/tokenized/`, the cache root being the one the embedded model uses (`$AITRAINING_CACHE`, else
  `$XDG_CACHE_HOME/aitraining`, else `~/.cache/aitraining`).
- The cap: `$AITRAINING_CACHE_MAX_GB` gigabytes (10^9 bytes; default 20, decimals allowed, 0 keeps only the entry
  just written). After an entry is written, the least recently used others are removed until the entries fit; the
  one just written always stays, even alone over the cap, since the run is about to read it.
- "Used": written, or read by a run (a cache hit); the time is the modification time of the entry's `meta.json`.
- An entry is removed by renaming it to a temp name first (autotrain.atomic.discard): another run never sees half
  of one. A run that is reading an entry when it is removed keeps reading it (its memory map holds the file).

Standard library only.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotrain import atomic
from autotrain.errors import ParamsError

DATA_FILE, META_FILE = "data.arrow", "meta.json"
TEMP_PREFIX = ".tmp-"
# A temp folder this old belongs to a killed run on some host (tokenizing takes minutes, not hours).
STALE_TEMP_S = 6 * 3600
CAP_VARIABLE = "AITRAINING_CACHE_MAX_GB"
DEFAULT_CAP_GB = 20.0


def cache_dir() -> Path:
    from autotrain.defaults import cache_root

    return cache_root() / "tokenized"


def max_bytes() -> int:
    """The cap, from $AITRAINING_CACHE_MAX_GB (default 20 GB); a bad value is one line."""
    text = os.environ.get(CAP_VARIABLE, "").strip()
    if not text:
        return int(DEFAULT_CAP_GB * 1e9)
    try:
        gigabytes = float(text)
    except ValueError:
        gigabytes = math.nan
    if not math.isfinite(gigabytes) or gigabytes < 0:
        raise ParamsError(f"{CAP_VARIABLE}: {text!r} is not a number of gigabytes (the tokenized-data cache's "
                          f"size cap; default {DEFAULT_CAP_GB:g}; 0 keeps only the latest entry)")
    return int(gigabytes * 1e9)


@dataclass(frozen=True)
class Entry:
    """One entry of the cache, as listed."""

    path: Path
    size: int  # bytes on disk
    used: float  # when it was last written or read, in seconds since the epoch
    source: str  # the data it holds ("" when its meta.json cannot be read)


def read_meta(folder: Path) -> dict[str, Any]:
    return json.loads((folder / META_FILE).read_text())


def mark_used(folder: Path) -> None:
    """Record that the entry was used now (for the least-recently-used order); a read-only cache keeps its
    earlier time."""
    now = time.time_ns()
    try:
        os.utime(folder / META_FILE, ns=(now, now))
    except OSError:
        pass


def entries(root: Path | None = None) -> list[Entry]:
    """The cache's entries (temp folders of runs writing one are not entries), least recently used first."""
    root = cache_dir() if root is None else root
    found = []
    try:
        folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:  # no cache yet
        return []
    for folder in folders:
        try:
            size = sum(f.stat().st_size for f in folder.iterdir())
            meta_path = folder / META_FILE
            used = (meta_path if meta_path.exists() else folder).stat().st_mtime
        except OSError:  # removed meanwhile by another run
            continue
        try:
            source = str(read_meta(folder).get("source", ""))
        except (OSError, ValueError, AttributeError):
            source = ""
        found.append(Entry(folder, size, used, source))
    return sorted(found, key=lambda e: e.used)


def evict(root: Path, limit: int, keep: Path) -> list[Entry]:
    """Remove the least recently used entries until the cache holds at most `limit` bytes, never `keep`; return
    what was removed. A removal that fails (another run removed it first, a permission) is skipped."""
    listed = entries(root)
    total = sum(e.size for e in listed)
    removed = []
    for entry in listed:
        if total <= limit:
            break
        if entry.path == keep:
            continue
        try:
            atomic.discard(entry.path, TEMP_PREFIX)
        except OSError:
            continue
        total -= entry.size
        removed.append(entry)
    return removed


def clear(root: Path | None = None) -> list[Entry]:
    """Remove every entry, and the temp folders that killed runs left; return the entries removed."""
    root = cache_dir() if root is None else root
    removed = evict(root, -1, keep=root)
    if root.is_dir():
        atomic.remove_stale_temps(root, TEMP_PREFIX, STALE_TEMP_S)
    return removed


def size_text(size: int) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def command(action: str) -> list[str]:
    """What `aitraining cache list|clear` prints: one line per entry (list), then a total line."""
    root = cache_dir()
    if action == "clear":
        removed = clear(root)
        return [f"removed {len(removed)} entries ({size_text(sum(e.size for e in removed))}) from {root}"]
    listed = entries(root)
    lines = []
    for entry in reversed(listed):  # most recently used first
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.used))
        what = entry.source or "(written before sources were recorded, or damaged)"
        lines.append(f"{entry.path.name[:12]}  {size_text(entry.size):>9}  used {used}  {what}")
    cap = max_bytes()
    lines.append(f"{len(listed)} entries, {size_text(sum(e.size for e in listed))} of {size_text(cap)} "
                 f"(${CAP_VARIABLE}), in {root}")
    return lines
