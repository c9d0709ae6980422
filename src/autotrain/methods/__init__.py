"""The training methods: the one list of their names and the facts about each that are needed before torch loads.

A method is a module of this package that defines `METHOD` (an autotrain.methods.base.Method: its per-pair loss
terms, built on autotrain.forward.sequence_logps and a pure loss of autotrain.losses). This table names that module
and says, without importing it (so without torch), what the rest of the tool needs to know early:

- `paired`: its rows need a rejected completion (the data stage opens preference columns);
- `needs_reference`: it compares against a frozen reference model (the run loads one, and --model-ref and
  --precompute-ref-logps apply to it only);
- `accuracy`: what its logged `rewards/accuracies` counts, as the run summary and the model card say it (None: the
  method logs no accuracy);
- `help`: its part of the --trainer help.

The params' list of --trainer choices is `NAMES`; the trainer and the project look a method up here, by the name the
user gave, and never name one themselves. Adding a method: write methods/<name>.py (its terms and `METHOD`), its pure
loss in autotrain/losses.py if it has a new one, and one `MethodSpec` line below.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

__all__ = ["ALIASES", "NAMES", "SPECS", "MethodSpec", "canonical", "load", "spec"]


@dataclass(frozen=True)
class MethodSpec:
    """What is known about a method before torch is imported (see the module docstring)."""

    name: str
    paired: bool
    needs_reference: bool
    accuracy: str | None
    help: str

    @property
    def module(self) -> str:
        return f"{__name__}.{self.name}"


SPECS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("orpo", paired=True, needs_reference=False,
                   accuracy="chosen log-odds > rejected", help="SFT + odds-ratio term, no reference model"),
        MethodSpec("dpo", paired=True, needs_reference=True,
                   accuracy="chosen gained more log-probability over the reference than rejected",
                   help="sigmoid DPO against a frozen reference"),
        MethodSpec("sft", paired=False, needs_reference=False, accuracy=None,
                   help="NLL on the completion or text"),
    )
}
# Other accepted names: `default` is the parent tool's name for sft.
ALIASES: dict[str, str] = {"default": "sft"}
NAMES: tuple[str, ...] = (*SPECS, *ALIASES)


def canonical(name: str) -> str:
    """The method a --trainer value names (an alias resolved); KeyError for an unknown name."""
    name = ALIASES.get(name, name)
    if name not in SPECS:
        raise KeyError(f"unknown training method {name!r}; known: {', '.join(NAMES)}")
    return name


def spec(name: str) -> MethodSpec:
    return SPECS[canonical(name)]


def load(name: str) -> Any:
    """The method's `METHOD` (an autotrain.methods.base.Method); imports its module, and so torch."""
    return importlib.import_module(spec(name).module).METHOD
