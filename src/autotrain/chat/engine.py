"""The models `aitraining chat` answers with, and one answer streamed token by token.

One run is loaded at a time, as `--inference` loads it (`autotrain.model.loading.load_trained`): prompts are rendered with the
chat template saved in the run (the training template) and answers stop at its turn end (`answers.model_stop_ids`),
through `answers.continuation`, the generate call `--inference` and the sample answers use. Its starting point:

- LoRA: the base model with the adapter is loaded once; the starting point is the same weights with the adapter
  disabled (peft's `disable_adapter`), so no second copy is loaded. A run that also saved a merged model is loaded
  from its adapter/ folder (base + adapter), which is the merged model up to float rounding.
- full fine-tune: the trained weights, and the model the run started from (training_params.json's `model`),
  loaded once, when compare first asks for it.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from autotrain.chat.runs import Run, saved_params
from autotrain.outputs.project_folder import ADAPTER_DIR

TRAINED, BASE = "trained", "base"


@dataclass
class Loaded:
    """A run's model and tokenizer, ready to answer; `base` is a full fine-tune's starting model, once loaded."""

    run: Run
    model: Any
    tokenizer: Any
    lora: bool
    trust_remote_code: bool
    base: Any = None
    positions: int | None = field(default=None)

    @property
    def template(self) -> bool:
        return bool(self.tokenizer.chat_template)

    def inputs(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        """The model inputs for a conversation, as `--inference` builds them from a list of messages; without a
        chat template (the run trained on plain-text prompts) only the last message, as text."""
        from autotrain.inference import Prompt, checked_inputs

        value: Any = messages if self.template else messages[-1]["content"]
        return checked_inputs(self.tokenizer, Prompt(value, "message"), self.positions)

    @contextlib.contextmanager
    def side(self, which: str) -> Iterator[Any]:
        """The model that answers for `which` side: the trained one, or its starting point."""
        if which == TRAINED:
            yield self.model
        elif self.lora:
            with self.model.disable_adapter():
                yield self.model
        else:
            if self.base is None:
                self.base = load_base(self)
            yield self.base


def load(run: Run) -> Loaded:
    """The run's trained model, as `--inference` loads it (trust_remote_code as the run was trained)."""
    from autotrain.chat.runs import refuse_images
    from autotrain.inference import trained_with_remote_code
    from autotrain.model.loading import load_trained, model_max_length

    refuse_images(run.folder)  # a run of the list (--projects-dir): refused when chosen, as one line
    trust = trained_with_remote_code(run.folder)
    folder = run.folder
    merged_lora = (folder / ADAPTER_DIR / "adapter_config.json").is_file()
    lora = merged_lora or (folder / "adapter_config.json").is_file()
    model, tokenizer = load_trained(folder / ADAPTER_DIR if merged_lora else folder, trust)
    return Loaded(run, model, tokenizer, lora, trust, positions=model_max_length(model.config))


def load_base(loaded: Loaded) -> Any:
    """A full fine-tune's starting model (the embedded default resolved to its converted folder), or one line."""
    from autotrain.errors import AutoTrainError, ModelError
    from autotrain.model.embedded import resolve_model
    from autotrain.model.loading import load_base as load_model

    name = saved_params(loaded.run).get("model")
    if not isinstance(name, str):
        raise ModelError(f"{loaded.run.name}: its training_params.json does not name the model it started from")
    try:
        return load_model(resolve_model(name), loaded.trust_remote_code)
    except AutoTrainError:
        raise
    except Exception as exc:  # noqa: BLE001 - a missing folder, an uncached hub id (offline), bad weights
        raise ModelError(f"{loaded.run.name}: its starting model {name} does not load: {one_line(exc)}") from exc


def one_line(exc: BaseException) -> str:
    """An exception as one line: its message's first line (a typed error's is the whole message)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class TokenStream:
    """A transformers streamer: the new token ids of one generate() call, in a queue the server reads; None ends it.
    (generate() first puts the prompt, which is skipped.)"""

    def __init__(self) -> None:
        self.ids: queue.SimpleQueue[list[int] | None] = queue.SimpleQueue()
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.ids.put(value.reshape(-1).tolist())

    def end(self) -> None:
        self.ids.put(None)


def stop_when(event: threading.Event) -> Any:
    """A stopping criterion that ends generation at the next token once `event` is set (the page's stop button)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_Stop()])


def answer_events(loaded: Loaded, which: str, messages: list[dict[str, str]], decoding: Any,
                  stop: threading.Event) -> Iterator[dict[str, Any]]:
    """One answer as the page's events: `start`, a `token` per new piece of text (or `text`, the whole text, when
    decoding one more token changed what was shown), and `done` with the answer exactly as decoded at the end (the
    `--inference` text), its token count, the time to the first token and the tokens per second after it.

    Generation runs in its own thread; closing this iterator early (the page went away) stops it and waits for it,
    so that the next answer never runs beside it."""
    from autotrain.outputs.answers import continuation, model_stop_ids

    inputs = loaded.inputs(messages)  # a prompt that cannot be answered is refused before anything starts
    tokenizer, tokens, result = loaded.tokenizer, TokenStream(), {}
    with loaded.side(which) as model:
        stop_ids = model_stop_ids(model, tokenizer, tokenizer.chat_template or None)

        def work() -> None:
            try:
                result["text"] = continuation(model, tokenizer, inputs, decoding, stop_ids, tokens, stop_when(stop))
            except Exception as exc:  # noqa: BLE001 - handed to the reading side, which reports it
                result["error"] = exc
            finally:
                tokens.end()

        yield {"type": "start", "side": which}
        started, first, last = time.perf_counter(), None, None
        thread = threading.Thread(target=work, name="aitraining-chat-generate", daemon=True)
        thread.start()
        finished, ids, shown = False, [], ""
        try:
            while (new := tokens.ids.get()) is not None:
                last = time.perf_counter()
                first = first or last
                ids += new
                text = tokenizer.decode(ids, skip_special_tokens=True)
                if text.endswith("\ufffd"):  # a character whose bytes span tokens: shown once it is whole
                    continue
                if text.startswith(shown):
                    if len(text) > len(shown):
                        yield {"type": "token", "side": which, "text": text[len(shown) :]}
                else:
                    yield {"type": "text", "side": which, "text": text}
                shown = text
            finished = True
        finally:
            if not finished:
                stop.set()
            thread.join()
    if "error" in result:
        raise result["error"]
    rate = (len(ids) - 1) / (last - first) if first is not None and last > first else None
    yield {"type": "done", "side": which, "text": result["text"], "tokens": len(ids), "stopped": stop.is_set(),
           "first_token_s": None if first is None else round(first - started, 4),
           "tokens_per_s": None if rate is None else round(rate, 2)}
