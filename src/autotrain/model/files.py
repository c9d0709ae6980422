"""The model a run names, checked before anything loads it; each failure is one ModelError line.

- A local folder must hold config.json and safetensors weights (a pickle file can run code when it is loaded, so
  none is loaded); a local-looking path that does not exist, or a file, is refused. Every `*.safetensors` file
  must be whole. Its 8-byte header length, its JSON header and the
  tensor data the header describes must cover the file exactly, as safetensors requires; a file cut short (an
  interrupted download or copy) is reported by name, instead of a SafetensorError traceback after the data stage.
  A sharded model's index must name only shards that exist.
- A hub id: found in the local Hugging Face cache, or, with `HF_HUB_OFFLINE` set, refused at once. Otherwise one
  request with a short timeout asks the hub whether the model exists: transformers' loaders retry an unreachable
  hub for about a minute before raising an OSError.
- `loading(model)`: what still goes wrong while loading (an OSError, a SafetensorError) becomes a ModelError.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from autotrain.errors import ModelError

HUB_TIMEOUT_S = 10.0
_HEADER_LIMIT = 100 << 20  # safetensors refuses headers over 100 MB


def check(model: str) -> None:
    """Check a local model folder and its weight files, or a hub id's availability."""
    if check_local(model):
        check_weights(Path(model).expanduser())
    else:
        check_hub(model)


def check_local(model: str) -> bool:
    """True for a local model folder with a config and safetensors weights; False for what can only be a hub id."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"{model}: the folder has no config.json, so it is not a transformers model folder")
        if not any(path.glob("*.safetensors")):
            raise ModelError(f"{model}: no *.safetensors weights; only safetensors are loaded (no pickle files)")
        return True
    if path.exists():
        raise ModelError(f"{model}: a model must be a folder (or a hub id), not a file")
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelError(f"{model}: no such model folder")
    return False


def check_weights(folder: Path) -> None:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelError(f"{index}: not a readable safetensors index ({exc})") from None
        missing = sorted(name for name in shards if not (folder / name).is_file())
        if missing:
            raise ModelError(f"{index}: names {len(missing)} missing weight file(s), first {missing[0]}; download "
                             "or copy the model again")
    for file in sorted(folder.glob("*.safetensors")):
        check_safetensors(file)


def check_safetensors(file: Path) -> None:
    """The file's header and data must cover it exactly (what safetensors itself checks when it opens it)."""
    size = file.stat().st_size
    again = "download or copy it again"
    with file.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ModelError(f"{file}: cut short ({size} bytes, not even a safetensors header); {again}")
        length = int.from_bytes(head, "little")
        if length > _HEADER_LIMIT or 8 + length > size:
            raise ModelError(f"{file}: cut short or not safetensors ({size} bytes; its header claims {length}); "
                             f"{again}")
        try:
            header = json.loads(handle.read(length))
            ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            raise ModelError(f"{file}: not a safetensors file (its header is not readable); {again}") from None
    expected = 8 + length + max(ends, default=0)
    if expected != size:
        state = "cut short" if size < expected else "longer than its header describes"
        raise ModelError(f"{file}: {state} ({size} bytes, its header describes {expected}); {again}")


def check_hub(model: str) -> None:
    """A hub id must be in the local cache, or exist on a hub that answers now."""
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    try:
        cached = try_to_load_from_cache(model, "config.json")
    except HFValidationError:
        raise ModelError(f"{model}: no such model folder, and not a hub id (namespace/name)") from None
    if isinstance(cached, str):
        return
    if constants.HF_HUB_OFFLINE:
        raise ModelError(f"{model}: not in the local Hugging Face cache, and HF_HUB_OFFLINE is set; download it "
                         f"first (`hf download {model}`) or pass a local model folder")
    try:
        HfApi().model_info(model, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        raise ModelError(f"{model}: a gated model; accept its terms on huggingface.co and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise ModelError(f"{model}: no such model on the Hugging Face hub (a private one needs HF_TOKEN)") from None
    except Exception as exc:  # noqa: BLE001 - connection errors come from httpx, requests or the OS
        reason = _first_line(exc)
        raise ModelError(f"{model}: cannot reach the Hugging Face hub to download it ({reason}); connect, or "
                         "download it beforehand and set HF_HUB_OFFLINE=1, or pass a local model folder") from None


@contextlib.contextmanager
def loading(model: str) -> Iterator[None]:
    """Errors from loading `model` (missing files, broken weights) as one ModelError line."""
    try:
        yield
    except ModelError:
        raise
    except OSError as exc:
        raise ModelError(f"{model}: cannot load the model: {_first_line(exc)}") from None
    except Exception as exc:
        if type(exc).__name__ != "SafetensorError":
            raise
        raise ModelError(f"{model}: broken safetensors weights: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
