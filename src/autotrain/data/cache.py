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
  choice.

An entry appears only by renaming a finished temp folder (autotrain.atomic), so a killed run never leaves a half
entry that looks valid; a bad row raises before anything is renamed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from autotrain import atomic
from autotrain.data.sources import Split
from autotrain.data.tokenize import Limits, TokenCounts, TokenizedSplit, report

logger = logging.getLogger("autotrain")

# Bump when rendering or tokenizing changes the ids produced for the same inputs.
FORMAT = 2
DATA_FILE, META_FILE = "data.arrow", "meta.json"
_TEMP_PREFIX = ".tmp-"
# A temp folder this old belongs to a killed run on some host (tokenizing takes minutes, not hours).
_STALE_TEMP_S = 6 * 3600


def cache_dir() -> Path:
    from autotrain.defaults import cache_root

    return cache_root() / "tokenized"


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
    from autotrain.data import files, json_file, render, sources, split, templates, tokenize

    digest = hashlib.sha256()
    for module in (split, files, json_file, sources, templates, render, tokenize):
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
        succeeds."""
        root = cache_dir()
        if not self.keep:
            return _uncached(build)
        final = root / key
        hit = _open(final, key)
        if hit is not None:
            logger.info("%s: tokenized data from the cache (%s)", split.source, final)
            report(split.source, hit[1])
            return hit[0]
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a read-only home: tokenize into a private temp folder, uncached
            logger.warning("cannot create the cache folder %s (%s); the tokenized data will not be kept", root, exc)
            return _uncached(build)
        atomic.remove_stale_temps(root, _TEMP_PREFIX, _STALE_TEMP_S)
        temp = atomic.new_temp(root, _TEMP_PREFIX, key)
        try:
            _write_meta(temp, key, build(temp / DATA_FILE))
            # An entry there already was unreadable (checked above): replaced. One another run published
            # meanwhile is as good as this one.
            atomic.publish(temp, final, replace_via=temp.with_name(temp.name + "-replaced"))
        finally:
            shutil.rmtree(temp, ignore_errors=True)
        published = _open(final, key)
        if published is None:
            raise OSError(f"{final}: the tokenized data just written cannot be read back")
        return published[0]


def _uncached(build: Callable[[Path], TokenCounts]) -> TokenizedSplit:
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="aitraining-tokens-")) / DATA_FILE
    return TokenizedSplit.open(path, build(path))


def _write_meta(folder: Path, key: str, counts: TokenCounts) -> None:
    meta = {
        "format": FORMAT,
        "key": key,
        "bytes": (folder / DATA_FILE).stat().st_size,
        "counts": {**asdict(counts), "dropped": dict(counts.dropped), "truncated": dict(counts.truncated)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=2))  # flushed to disk by atomic.publish


def _open(folder: Path, key: str) -> tuple[TokenizedSplit, TokenCounts] | None:
    """The entry in `folder`, or None when there is none or it does not check out."""
    try:
        meta = json.loads((folder / META_FILE).read_text())
        data = folder / DATA_FILE
        if meta.get("format") != FORMAT or meta.get("key") != key or data.stat().st_size != meta["bytes"]:
            return None
        fields = meta["counts"]
        counts = TokenCounts(
            **{**fields, "dropped": Counter(fields["dropped"]), "truncated": Counter(fields["truncated"])}
        )
        return TokenizedSplit.open(data, counts), counts
    except (OSError, ValueError, KeyError, TypeError):
        return None
