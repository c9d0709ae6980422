"""Quiet by default: a run shows its own lines; the libraries' logs, warnings and loading bars only with `verbose`.

`libraries(verbose)` is entered by the CLI, by `python -m autotrain.trainers.clm` and by
`AutoTrainProject.create()` (a nested entry changes nothing). Inside it:

- the libraries' loggers (transformers, datasets, peft, accelerate, huggingface_hub, wandb, ...) show errors only;
- FutureWarning, UserWarning and DeprecationWarning are not shown (`warnings.catch_warnings`, undone on exit);
- the libraries' progress bars are off (loading weights, writing shards, downloads); the run's own progress stays;
- wandb prints nothing of its own (WANDB_SILENT), and `import_quietly` swallows what a module prints when it is
  imported (transformers prints `[INFO] Running in WANDB offline mode` whenever WANDB_MODE=offline is set);
- matplotlib's logger is quieted before it is imported: it logs at import (an unwritable HOME, its font cache).

`survive_closed_output()` (the CLI's and a launched process's first step) is apart from the rest: when the reader
of stdout or stderr goes away (`aitraining llm --train ... | head -2`), the run goes on with that output discarded,
instead of dying of BrokenPipeError halfway, and `reader_gone()` tells `--inference` to stop answering.

Nothing here imports a library (torch and transformers take seconds, and a data error must not wait for them):
libraries already imported are quieted on entry, and the run calls `settle()` after it imports more. On exit each
library gets back the state it had before it was quieted, and the environment is put back, so a Python caller's own
logging setup is as it was after a run.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator

LOGGERS = ("datasets", "peft", "accelerate", "huggingface_hub", "wandb", "httpx", "torch", "tensorboard")
# Quieted before they are imported, since they log while being imported (matplotlib: that it cannot make its cache
# under an unwritable HOME, that it built a font cache).
EARLY_LOGGERS = ("matplotlib",)
_ENVIRONMENT = {
    "TRANSFORMERS_VERBOSITY": "error",  # read when transformers configures its logger, at import
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "WANDB_SILENT": "true",
}
# Per library with loading bars: its module, and its functions to ask, enable and disable them.
_BARS = {
    "transformers": ("transformers.utils.logging", "is_progress_bar_enabled", "enable_progress_bar",
                     "disable_progress_bar"),
    "huggingface_hub": ("huggingface_hub.utils", "are_progress_bars_disabled", "enable_progress_bars",
                        "disable_progress_bars"),
    "datasets": ("datasets.utils.logging", "is_progress_bar_enabled", "enable_progress_bar", "disable_progress_bar"),
}


class _Quiet:
    """What was changed, and the value it had, so that exit puts back exactly that."""

    def __init__(self) -> None:
        self.environment = {name: os.environ.get(name) for name in _ENVIRONMENT}
        self.levels: dict[str, int] = {}
        self.bars: dict[str, bool] = {}
        self.transformers_level: int | None = None
        self.transformers_seen = False
        self.transformers_imported_before = "transformers.utils.logging" in sys.modules

    def settle(self) -> None:
        known = logging.Logger.manager.loggerDict
        for name in LOGGERS + EARLY_LOGGERS:
            if (name in known or name in EARLY_LOGGERS) and name not in self.levels:
                logger = logging.getLogger(name)
                self.levels[name] = logger.level
                logger.setLevel(logging.ERROR)
        hf_logging = sys.modules.get("transformers.utils.logging")
        if hf_logging is not None and not self.transformers_seen:
            self.transformers_seen = True
            self.transformers_level = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()
        for name, (module_name, ask, _, disable) in _BARS.items():
            module = sys.modules.get(module_name)
            if module is not None and name not in self.bars:
                on = getattr(module, ask)()
                self.bars[name] = not on if ask.endswith("disabled") else bool(on)
                getattr(module, disable)()

    def restore(self) -> None:
        for name, value in self.environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)
        hf_logging = sys.modules.get("transformers.utils.logging")
        if hf_logging is not None:
            # Imported inside: the level transformers would have chosen (its environment is the caller's again).
            level = self.transformers_level if self.transformers_imported_before else None
            hf_logging.set_verbosity(level if level is not None else hf_logging._get_default_logging_level())
        for name, on in self.bars.items():
            module = sys.modules[_BARS[name][0]]
            getattr(module, _BARS[name][2] if on else _BARS[name][3])()


_active: _Quiet | None = None


def active() -> bool:
    return _active is not None


@contextlib.contextmanager
def libraries(verbose: bool = False) -> Iterator[None]:
    global _active
    if verbose or _active is not None:
        yield
        return
    state = _Quiet()
    os.environ.update(_ENVIRONMENT)
    _active = state
    try:
        with warnings.catch_warnings():
            for category in (FutureWarning, UserWarning, DeprecationWarning):
                warnings.filterwarnings("ignore", category=category)
            state.settle()
            yield
    finally:
        _active = None
        state.restore()


def settle() -> None:
    """Quiet the libraries imported since the last call (when quiet is on)."""
    if _active is not None:
        _active.settle()


def import_quietly(module: str) -> None:
    """Import `module`, swallowing what it prints to stdout at import when quiet, then quiet what it imported."""
    if module in sys.modules or _active is None:
        importlib.import_module(module)
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            importlib.import_module(module)
    settle()


class _Discarding:
    """A text stream whose writes go on, discarded, once its reader has gone (EPIPE). The file descriptor is pointed
    at /dev/null then, so the interpreter's last flush at exit, and processes started later, find it writable."""

    def __init__(self, stream: object) -> None:
        self._stream = stream
        self.gone = False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._discard()
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._discard()

    def _discard(self) -> None:
        self.gone = True
        with contextlib.suppress(OSError, ValueError, AttributeError):
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())
            os.close(null)

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


def survive_closed_output() -> None:
    """Make sys.stdout and sys.stderr outlive their reader (see the module's docstring). Before logging is set up,
    so that its handlers write to these."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _Discarding):
            setattr(sys, name, _Discarding(stream))


def reader_gone() -> bool:
    """Whether stdout's reader has gone (nothing written there is read any more)."""
    return isinstance(sys.stdout, _Discarding) and sys.stdout.gone
