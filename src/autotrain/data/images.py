"""The images of a vision-language run: read from the image column, checked, and placed in the prompt.

A row's image column holds one image or a list of them (an empty list or null: a pair without images), each:
- a path: relative to the data file's folder (a `datasets` folder: that folder), or absolute; never a URL (the run
  reads local files only, so a data set trains the same tomorrow);
- raw bytes, or a `datasets` Image value (`{"bytes": ..., "path": ...}`, as parquet stores it; a decoded PIL image
  where a `datasets` split decodes the feature).

Every image is decoded when its row is tokenized, before the model loads, so a missing or unreadable one is one line
naming the file, the row, the column and the image. What the tokenized split keeps is each image's bytes (the file as
it is; PNG for an image given decoded), which the collator decodes again for the processor.

Placement: a conversational prompt's `{"type": "image"}` parts say where its images go, in order; a prompt without
such parts (or a plain string) gets them before its first user text, as TRL places them. Every message then goes to
the chat template as a list of parts (`{"type": "text"}`, `{"type": "image"}`), the form vision-language templates
read (SmolVLM's reads nothing else). Between the row and the template the parts travel inside a message's text
(`encode_parts`), so the renderer's checks of text and turns (autotrain.data.render) apply to them unchanged;
`PartsTokenizer` turns them back into parts where the template is applied.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from autotrain.data.split import Split
from autotrain.errors import DataError

__all__ = ["IMAGE_PART", "PartsTokenizer", "decode_image", "encode_parts", "encoded_prompt", "has_image_parts",
           "image_inputs", "image_root", "image_token_id", "place_images", "read_images", "shown_prompt"]

# A part boundary and an image part inside a message's text (ASCII unit and record separators): characters no text a
# template renders holds; a row holding them is refused (`_plain`).
_SEP, IMAGE_PART = "\x1f", "\x1e"
_URL_SCHEMES = ("http://", "https://", "ftp://", "s3://", "gs://")


def image_root(split: Split) -> Path:
    """The folder a relative image path is read from: the data file's folder; a `datasets` folder itself; else the
    current folder (a hub dataset's images are its bytes)."""
    inner = split
    while hasattr(inner, "inner"):  # a sample of another split (max_samples)
        inner = inner.inner
    path = getattr(inner, "path", None)
    if path is not None:
        return Path(path).parent
    folder = Path(str(inner.source).split("[")[0]).expanduser()
    return folder if folder.is_dir() else Path.cwd()


def read_images(value: Any, where: object, column: str, root: Path) -> tuple[list[bytes], list[Any]]:
    """(bytes, decoded RGB images) of a row's image column value; DataError naming the row and the image."""
    items = [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]
    kept, decoded = [], []
    for number, item in enumerate(items, 1):
        data, name = _image_bytes(item, f"{where}, column '{column}', image {number}", root)
        kept.append(data)
        decoded.append(decode_image(data, f"{where}, column '{column}', image {number}{name}"))
    return kept, decoded


def _image_bytes(item: Any, place: str, root: Path) -> tuple[bytes, str]:
    """The bytes of one image value, and how the error line names it (' (path)' or '')."""
    if isinstance(item, dict) and ("bytes" in item or "path" in item):  # a datasets Image value
        if item.get("bytes"):
            return bytes(item["bytes"]), ""
        item = item.get("path")
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item), ""
    if isinstance(item, str):
        if item.strip().lower().startswith(_URL_SCHEMES):
            raise DataError(f"{place} ({item}): a URL; images are read from local files only: download it and give "
                            "its path")
        path = Path(item).expanduser()
        path = path if path.is_absolute() else root / path
        try:
            return path.read_bytes(), f" ({item})"
        except FileNotFoundError:
            raise DataError(f"{place} ({item}): no such file ({path})") from None
        except IsADirectoryError:
            raise DataError(f"{place} ({item}): a folder, not an image file ({path})") from None
        except OSError as exc:
            raise DataError(f"{place} ({item}): cannot be read ({exc.strerror or exc})") from None
    if hasattr(item, "save") and hasattr(item, "mode"):  # a PIL image (a decoded datasets Image)
        buffer = io.BytesIO()
        item.save(buffer, format="PNG")
        return buffer.getvalue(), ""
    raise DataError(f"{place}: expected a path, bytes or an image, got {type(item).__name__}")


def decode_image(data: bytes, place: str = "image") -> Any:
    """The image in `data`, fully decoded, in RGB (what every processor of this tool's families takes)."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # a truncated file fails here, not later in the collator
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        reason = "not an image file" if isinstance(exc, UnidentifiedImageError) else str(exc) or type(exc).__name__
        raise DataError(f"{place}: cannot be read as an image ({reason})") from None
    if image.width < 1 or image.height < 1:
        raise DataError(f"{place}: an empty image ({image.width}x{image.height})")
    return image.convert("RGB")


def image_token_id(processor: Any) -> int:
    """The token id the model's forward fills with image features (Qwen2-VL's <|image_pad|>, Idefics3's and LLaVA's
    <image>, Gemma 3's <image_soft_token>). The tokenizer's name for it comes first: Gemma 3's processor calls the
    token that opens an image (<start_of_image>) its image token."""
    for owner in (processor.tokenizer, processor):
        found = getattr(owner, "image_token_id", None)
        if isinstance(found, int):
            return found
    return processor.tokenizer.convert_tokens_to_ids(processor.image_token)


def image_inputs(processor: Any, images: list[list[Any]]) -> dict[str, Any]:
    """The model inputs of these images (a list per prompt), as the processor makes them alongside a text: its image
    processor with the processor's own image settings (Gemma 3's turn pan-and-scan off). The processor is not asked
    itself: without a text some (Gemma 3's) make one up, and tokenize it. (transformers' `_merge_kwargs` resolves
    those settings; it is the one private call of this path.)"""
    settings = processor._merge_kwargs(tokenizer_init_kwargs=processor.tokenizer.init_kwargs)["images_kwargs"]
    settings = {key: value for key, value in settings.items() if key != "return_tensors"}
    out = processor.image_processor(images, return_tensors="pt", **settings)
    return {key: value for key, value in out.items() if hasattr(value, "shape")}


def place_images(prompt: Any, count: int, where: object, column: str, image_column: str) -> list[dict[str, str]]:
    """The prompt as messages whose text carries its `count` images as parts (`encode_parts`): where its image
    parts say, or before its first user text."""
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list):
        return prompt  # not a prompt the renderer takes: it names the problem itself
    given = sum(_image_parts(_parts(m["content"], where, column)) for m in prompt if isinstance(m, dict) and
                isinstance(m.get("content"), (str, list)))
    if given and given != count:
        raise DataError(f"{where}, column '{column}': the prompt has {given} image part(s) and column "
                        f"'{image_column}' holds {count} image(s); give one image per part")
    messages, placed = [], bool(given) or count == 0
    for message in prompt:
        if not isinstance(message, dict) or "content" not in message:
            messages.append(message)
            continue
        parts = _parts(message["content"], where, column)
        if not placed and message.get("role") == "user":
            parts, placed = [{"type": "image"}] * count + parts, True
        messages.append({**message, "content": encode_parts(parts)})
    if not placed:
        raise DataError(f"{where}, column '{column}': the prompt has no user message to place the "
                        f"{count} image(s) of column '{image_column}' in")
    return messages


def _image_parts(content: Any) -> int:
    return sum(1 for part in content if isinstance(part, dict) and part.get("type") == "image") \
        if isinstance(content, list) else 0


def encoded_prompt(prompt: Any, where: object, column: str) -> Any:
    """A prompt whose messages may hold lists of parts, with those lists checked and carried as text
    (`encode_parts`): what the renderer's checks take (an --inference prompt, before its images are known)."""
    if not isinstance(prompt, list):
        return prompt
    return [{**m, "content": encode_parts(_parts(m["content"], where, column))}
            if isinstance(m, dict) and isinstance(m.get("content"), list) else m for m in prompt]


def shown_prompt(prompt: Any) -> Any:
    """A prompt as `encoded_prompt` gave it, with its parts back as lists (to show it as it was given)."""
    if not isinstance(prompt, list):
        return prompt
    return [{**m, "content": decode_parts(m["content"])} if isinstance(m, dict) and isinstance(m.get("content"), str)
            and m["content"].startswith(_SEP) else m for m in prompt]


def has_image_parts(prompt: Any) -> bool:
    """Whether a prompt (as `encoded_prompt` gives it) holds an image part."""
    return isinstance(prompt, list) and any(
        isinstance(m, dict) and isinstance(m.get("content"), str) and IMAGE_PART in m["content"] for m in prompt)


def _parts(content: Any, where: object, column: str) -> list[dict[str, str]]:
    """A message's content as parts: a text is one text part (an encoded one, its parts); a list of parts is
    checked."""
    if isinstance(content, str) and content.startswith(_SEP):
        return decode_parts(content)
    if isinstance(content, str):
        return [{"type": "text", "text": _plain(content, where, column)}]
    if not isinstance(content, list):
        return content  # not text nor parts: the renderer reports it
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image":
            parts.append({"type": "image"})
        elif kind == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": _plain(part["text"], where, column)})
        else:
            raise DataError(f"{where}, column '{column}': a content part must be {{\"type\": \"text\", \"text\": ...}} "
                            f"or {{\"type\": \"image\"}}, got {str(part)[:60]}")
    return parts


def _plain(text: str, where: object, column: str) -> str:
    if _SEP in text or IMAGE_PART in text:
        raise DataError(f"{where}, column '{column}': the text holds the control characters \\x1e or \\x1f, which "
                        "mark image parts here; remove them")
    return text


def encode_parts(parts: list[dict[str, str]]) -> str:
    """Parts as one text (what the renderer checks and carries); `decode_parts` gives them back."""
    return _SEP + _SEP.join(IMAGE_PART if part["type"] == "image" else part["text"] for part in parts)


def decode_parts(content: Any) -> Any:
    """A message's content as parts: an encoded text back into its parts, any other text as one text part."""
    if not isinstance(content, str):
        return content
    if not content.startswith(_SEP):
        return [{"type": "text", "text": content}]
    return [{"type": "image"} if piece == IMAGE_PART else {"type": "text", "text": piece}
            for piece in content[1:].split(_SEP)]


class PartsTokenizer:
    """The run's tokenizer, whose chat template gets every message's content as parts (`decode_parts`). Everything
    else is the tokenizer's own."""

    def __init__(self, tokenizer: Any):
        self._tokenizer = tokenizer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._tokenizer(*args, **kwargs)

    def apply_chat_template(self, messages: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        messages = [{**m, "content": decode_parts(m["content"])} if isinstance(m, dict) and "content" in m else m
                    for m in messages]
        return self._tokenizer.apply_chat_template(messages, *args, **kwargs)
