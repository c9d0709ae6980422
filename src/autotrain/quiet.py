"""Quiet by default: a run shows its own lines; the libraries' logs, warnings and loading bars only with `verbose`.

`libraries(verbose)` is entered by the CLI and by `AutoTrainProject.create()`. Inside it:

- the loggers of transformers, datasets, peft, accelerate, huggingface_hub, torch and wandb show errors only;
- FutureWarning, UserWarning and DeprecationWarning are not shown (`warnings.catch_warnings`, undone on exit);
- the libraries' progress bars are off (loading weights, writing shards); the run's own progress stays;
- wandb prints nothing of its own (WANDB_SILENT), and transformers' import-time `[INFO] Running in WANDB offline
  mode` print is swallowed (`import_quietly`).

Nothing here imports a library: one that is already imported is quieted through its own API, one imported later
reads the environment variables set here (TRANSFORMERS_VERBOSITY, HF_HUB_DISABLE_PROGRESS_BARS, ...). On exit the
environment, the loggers' levels and the progress-bar switches are put back as the caller had them, so a Python
caller's own logging setup is untouched after a run.
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

LIBRARIES = ("transformers", "datasets", "peft", "accelerate", "huggingface_hub", "torch", "wandb", "httpx")
_ENVIRONMENT = {
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "WANDB_SILENT": "true",
}
_depth = 0  # > 0 while some caller asked for quiet


def active() -> bool:
    return _depth > 0


@contextlib.contextmanager
def libraries(verbose: bool = False) -> Iterator[None]:
    global _depth
    if verbose:
        yield
        return
    saved_env = {name: os.environ.get(name) for name in _ENVIRONMENT}
    saved_levels = {name: logging.getLogger(name).level for name in LIBRARIES}
    bars = _progress_bars()
    os.environ.update(_ENVIRONMENT)
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)
    _set_progress_bars(dict.fromkeys(bars, False))
    transformers_level = _transformers_level()
    _depth += 1
    try:
        with warnings.catch_warnings():
            for category in (FutureWarning, UserWarning, DeprecationWarning):
                warnings.filterwarnings("ignore", category=category)
            yield
    finally:
        _depth -= 1
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)
        if _depth == 0 and transformers_level is None and "transformers.utils.logging" in sys.modules:
            # transformers was imported inside: its logger gets the level it would have had (its own default).
            hf_logging = sys.modules["transformers.utils.logging"]
            hf_logging.set_verbosity(hf_logging._get_default_logging_level())
        # A library imported inside gets its bars back as its environment (now restored) says.
        _set_progress_bars({name: bars.get(name, _env_bars_on(name)) for name in _BARS})


def import_quietly(module: str) -> None:
    """Import `module`, swallowing what it prints at import when quiet (transformers' wandb integration prints an
    `[INFO]` line to stdout whenever WANDB_MODE=offline is set, whether or not wandb is used)."""
    if module in sys.modules or not active():
        importlib.import_module(module)
        return
    with contextlib.redirect_stdout(io.StringIO()):
        importlib.import_module(module)


def _transformers_level() -> int | None:
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is None:
        return None
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    return level


# Per library: (its module, the function that says whether bars are on, enable, disable).
_BARS = {
    "transformers": ("transformers.utils.logging", "is_progress_bar_enabled", "enable_progress_bar",
                     "disable_progress_bar"),
    "huggingface_hub": ("huggingface_hub.utils", None, "enable_progress_bars", "disable_progress_bars"),
    "datasets": ("datasets.utils.logging", "is_progress_bar_enabled", "enable_progress_bar",
                 "disable_progress_bar"),
}
_BAR_ENV = {"transformers": "HF_HUB_DISABLE_PROGRESS_BARS", "huggingface_hub": "HF_HUB_DISABLE_PROGRESS_BARS",
            "datasets": "HF_DATASETS_DISABLE_PROGRESS_BARS"}


def _progress_bars() -> dict[str, bool]:
    """Whether each already imported library shows its bars now."""
    state = {}
    for name, (module_name, is_on, _, _) in _BARS.items():
        module = sys.modules.get(module_name)
        if module is None:
            continue
        if is_on is None:
            state[name] = not module.are_progress_bars_disabled()
        else:
            state[name] = bool(getattr(module, is_on)())
    return state


def _set_progress_bars(wanted: dict[str, bool]) -> None:
    for name, on in wanted.items():
        module = sys.modules.get(_BARS[name][0])
        if module is not None:
            getattr(module, _BARS[name][2] if on else _BARS[name][3])()


def _env_bars_on(name: str) -> bool:
    return os.environ.get(_BAR_ENV[name], "").upper() not in ("1", "ON", "YES", "TRUE")
