"""The tokenized-data cache: a second run on the same data, tokenizer and settings skips tokenization.

Each split is one entry, `<cache root>/tokenized/<key>/` holding `data.arrow` (the ids, memory-mapped when used)
and `meta.json` (the counts of dropped and truncated pairs, so a cache hit reports them like a fresh run). The
cache root is the one the embedded model uses: `$AITRAINING_CACHE`, else `$XDG_CACHE_HOME/aitraining`, else
`~/.cache/aitraining`. Nothing is written into the project folder.

The key hashes everything that decides the ids:
- the code: FORMAT, the versions of this package, transformers and tokenizers, and the source of the data modules;
- the data's content: the bytes of the split's file, or a `datasets` fingerprint; and the split's name;
- the tokenizer: its full serialization (vocabulary, merges, normalizer, added and special tokens, the
  post-processor that adds BOS), and the chat template actually used;
- the settings: columns, max_prompt_length, max_completion_length, the resolved block size, the chat_template
  choice, the rows' shape (pairs, per-turn pairs, ranked answers; the tools and scores columns), --ranked-pairs and
  --reasoning-loss; for kto's labelled examples the label column, whether pairs were unpaired, and whether each
  example carries its KL completion (the loss type's).

The data's part of the key is the hash of its file taken before the rows are read; once they are read, the file is
checked again (its identity, then its hash: autotrain.data.files). A file rewritten or replaced in between is
refused with one line and nothing is kept: an entry holds the ids of exactly the bytes its key names.

An entry appears only by renaming a finished temp folder (autotrain.atomic), so a killed run never leaves a half
entry that looks valid; a bad row raises before anything is renamed. A cache that cannot be written (read-only,
full, over quota, not ours) costs only the caching: one line says so, the split is tokenized into a private temp
folder instead, and no temp or partial entry stays. The size cap, its eviction and `aitraining cache list|clear`:
autotrain.data.cache_store.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from autotrain import atomic
from autotrain.data import cache_store
from autotrain.data.cache_store import DATA_FILE, META_FILE, STALE_TEMP_S, TEMP_PREFIX, cache_dir
from autotrain.data.sources import Split
from autotrain.data.tokenize import Limits, TokenCounts, TokenizedSplit, report
from autotrain.errors import DataError

__all__ = ["DATA_FILE", "FORMAT", "META_FILE", "TokenCache", "cache_dir", "tokenizer_fingerprint"]

logger = logging.getLogger("autotrain")

# Bump when rendering or tokenizing changes the ids produced for the same inputs.
FORMAT = 4  # 4: kto's labelled examples (a label column, KL completions)
# What a cache folder that cannot take an entry raises: read-only, full, over quota, too large, not ours.
_CANNOT_WRITE = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM,
                           errno.ENOTDIR})
# Of those, what the private temp folder raises when it has no room either.
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything in the tokenizer that can change the ids it gives."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:  # a Python tokenizer: its vocabulary and settings
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
        digest.update(json.dumps(tokenizer.init_kwargs, sort_keys=True, default=repr).encode())
    for name in ("bos_token_id", "eos_token_id", "add_bos_token", "add_eos_token", "all_special_tokens"):
        digest.update(f"{name}={getattr(tokenizer, name, None)!r}".encode())
    return digest.hexdigest()


def _code_fingerprint() -> str:
    """The source of the modules that turn rows into ids: an edit to them (in development, or a patched install)
    invalidates the cache even when nobody remembered to bump FORMAT."""
    from autotrain.data import (
        columns,
        expand,
        files,
        json_file,
        messages,
        render,
        sources,
        split,
        templates,
        thinking,
        tokenize,
        turns,
        unpaired,
    )

    digest = hashlib.sha256()
    for module in (split, files, json_file, sources, templates, columns, messages, expand, thinking, turns, render,
                   tokenize, unpaired):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


class TokenCache:
    """Finds or builds the tokenized entry of a split, for one tokenizer, template, columns and limits."""

    def __init__(self, tokenizer: Any, template: str | None, settings: dict[str, Any], limits: Limits,
                 keep: bool = True):
        import tokenizers
        import transformers

        from autotrain import __version__

        self.keep = keep  # False (save_processed_data none): tokenize into a private temp folder, not cached
        self.base = {
            "format": FORMAT,
            "versions": [__version__, transformers.__version__, tokenizers.__version__],
            "code": _code_fingerprint(),
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "template": template,
            "limits": asdict(limits),
            **settings,
        }

    def key(self, split: Split, name: str, extra: dict[str, Any] | None = None) -> str:
        parts = {**self.base, "data": split.fingerprint(), "split": name, **(extra or {})}
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=repr).encode()).hexdigest()[:40]

    def get(self, split: Split, key: str, build: Callable[[Path], TokenCounts]) -> TokenizedSplit:
        """The cached entry for `key`; else `build(path)` writes the ids to `path`, published under `key` when it
        succeeds and `split` did not change while it was read."""
        if not self.keep:
            return _uncached(split, build)
        root = cache_dir()
        final = root / key
        hit = _open(final, key)
        if hit is not None:
            cache_store.mark_used(final)
            logger.info("%s: tokenized data from the cache (%s)", split.source, final)
            report(split.source, hit[1])
            return hit[0]
        limit = cache_store.max_bytes()  # a bad cap is refused before minutes of tokenizing
        try:
            published = _build_entry(split, root, key, build)
        except OSError as exc:
            if exc.errno not in _CANNOT_WRITE:
                raise
            logger.info("%s: the tokenized data is not kept in the cache: cannot write to %s (%s)", split.source,
                        root, os.strerror(exc.errno))
            return _uncached(split, build)
        try:
            cache_store.evict(root, limit, keep=final)
        except OSError:  # the cache stays over its cap until the next run that writes an entry
            pass
        return published


def _build_entry(split: Split, root: Path, key: str, build: Callable[[Path], TokenCounts]) -> TokenizedSplit:
    """Tokenize into a temp folder of the cache and publish it as `root / key`; the temp goes in any case."""
    final = root / key
    root.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_temps(root, TEMP_PREFIX, STALE_TEMP_S)
    temp = atomic.new_temp(root, TEMP_PREFIX, key)
    try:
        counts = build(temp / DATA_FILE)
        _check_unchanged(split)
        _write_meta(temp, key, counts, split.source)
        # An entry there already was unreadable (checked by the caller): replaced. One another run published
        # meanwhile is as good as this one.
        atomic.publish(temp, final, replace_via=temp.with_name(temp.name + "-replaced"))
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    published = _open(final, key)
    if published is None:
        raise OSError(f"{final}: the tokenized data just written cannot be read back")
    return published[0]


def _check_unchanged(split: Split) -> None:
    if split.changed_since_fingerprint():
        raise DataError("the file changed while it was read (rewritten or replaced after this run hashed it), so the "
                        "rows tokenized may be another version's or a mix of two; nothing was kept: run again once "
                        "the file is complete", path=split.source)


def _uncached(split: Split, build: Callable[[Path], TokenCounts]) -> TokenizedSplit:
    """Tokenize into a private temp folder (save_processed_data none, or a cache that cannot be written)."""
    import tempfile

    folder: Path | None = None
    try:
        folder = Path(tempfile.mkdtemp(prefix="aitraining-tokens-"))
        counts = build(folder / DATA_FILE)
        _check_unchanged(split)
    except BaseException as exc:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in _NO_ROOM:
            raise DataError(f"cannot write the tokenized data to {tempfile.gettempdir()} ({os.strerror(exc.errno)}): "
                            "free space there, or set TMPDIR to a folder with room") from None
        raise
    return TokenizedSplit.open(folder / DATA_FILE, counts)


def _write_meta(folder: Path, key: str, counts: TokenCounts, source: str) -> None:
    meta = {
        "format": FORMAT,
        "key": key,
        "bytes": (folder / DATA_FILE).stat().st_size,
        "counts": {**asdict(counts), "dropped": dict(counts.dropped), "truncated": dict(counts.truncated),
                   "made": dict(counts.made)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "source": source,  # what `aitraining cache list` names
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=2))  # flushed to disk by atomic.publish
    cache_store.mark_used(folder)


def _open(folder: Path, key: str) -> tuple[TokenizedSplit, TokenCounts] | None:
    """The entry in `folder`, or None when there is none or it does not check out."""
    try:
        meta = json.loads((folder / META_FILE).read_text())
        data = folder / DATA_FILE
        if meta.get("format") != FORMAT or meta.get("key") != key or data.stat().st_size != meta["bytes"]:
            return None
        fields = meta["counts"]
        counts = TokenCounts(**{**fields, "dropped": Counter(fields["dropped"]),
                                "truncated": Counter(fields["truncated"]), "made": Counter(fields["made"])})
        return TokenizedSplit.open(data, counts), counts
    except (OSError, ValueError, KeyError, TypeError):
        return None
