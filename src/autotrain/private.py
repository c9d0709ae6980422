"""The private members of other libraries this tool reaches outside its Trainer, each through one function here.

transformers.Trainer's own (the loop overrides a few) are autotrain.train.trainer_api.check_trainer_api's. The rest:

- `config._attn_implementation`: the attention kernel a model runs. transformers sets it through the public
  `set_attn_implementation`, but reads it only from the private attribute, and a layer holding its own copy of the
  config (autotrain.model.dropout) must be set by hand.
- `load_balancing_loss_func`: the router loss a mixture-of-experts family's modeling module defines at module level
  and calls from its forward; the packed layout computes it here with its own mask (autotrain.model.moe).
- `AttentionInterface` is public; its `register` of a wrapper over a kernel already registered (autotrain.model
  .kernel_dtypes) relies on the registry being global and a view of it reading what was registered.
- `nn.Module._compiled_call_impl`: the slot torch's `nn.Module.compile` fills; emptied, the module runs eagerly again
  (torch has no public way back; --torch-compile compiles the decoder layers for training only).
- `LRScheduler._last_lr`: what `get_last_lr()` returns, and so the rate transformers logs for a step. A resume that
  sets new rates on the optimizer (autotrain.train.resume) sets it too, or the first resumed step's record would
  carry the old schedule's rate.
- `argparse.ArgumentParser._actions` and `argparse._SubParsersAction`: every flag the command line knows, for the
  closest-name hint of an unknown flag (argparse offers no public list).

`check()` runs at start-up (the command line, and every run before its model loads): a library upgrade that removed
one of these fails there, naming it, instead of deep inside a run or, worse, changing what a run computes.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable


def attention_of(config: Any) -> str:
    """The attention implementation `config` names ("eager" when none is set, as transformers reads it)."""
    return getattr(config, "_attn_implementation", None) or "eager"


def names_attention(config: Any) -> bool:
    """Whether `config` is one a module reads its attention implementation from."""
    return hasattr(config, "_attn_implementation")


def set_attention(config: Any, name: str) -> None:
    config._attn_implementation = name


def load_balancing_loss(model: Any) -> Callable[..., Any] | None:
    """The family's own router loss function, as its forward calls it, or None where its module defines none."""
    return getattr(sys.modules[type(model).__module__], "load_balancing_loss_func", None)


def set_last_rates(scheduler: Any, rates: list[float]) -> None:
    """What `scheduler.get_last_lr()` gives from now on: `rates`, the ones just set on its optimizer."""
    if not hasattr(scheduler, "_last_lr"):
        raise RuntimeError("torch's LRScheduler keeps no _last_lr: this torch records rates differently; resume with "
                           "the checkpoint's learning rate, or install a torch between 2.4 and 2.13")
    scheduler._last_lr = list(rates)


def uncompile(module: Any) -> None:
    """Undo `module.compile()`: the module's forward runs eagerly again."""
    if not hasattr(module, "_compiled_call_impl"):
        raise RuntimeError("torch.nn.Module has no _compiled_call_impl: this torch undoes compile() differently; "
                           "leave --torch-compile off, or install a torch between 2.4 and 2.13")
    module._compiled_call_impl = None


def parser_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every action of `parser` and of its sub-commands' parsers."""
    actions = list(parser._actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                actions += sub._actions
    return actions


def check_argparse() -> None:
    try:
        parser = argparse.ArgumentParser(add_help=False)
        parser.add_argument("--probe")
        ok = hasattr(argparse, "_SubParsersAction") and [a.dest for a in parser._actions] == ["probe"]
    except Exception:  # noqa: BLE001 - argparse itself without the members it is built on
        ok = False
    if not ok:
        raise RuntimeError("argparse.ArgumentParser._actions is not what this version of aitraining was written for "
                           f"(Python {sys.version.split()[0]}); use Python 3.10 to 3.13")


def check_transformers() -> None:
    """The transformers and torch members above, on objects built in memory (no model, no download)."""
    from transformers import AttentionInterface, PretrainedConfig

    config = PretrainedConfig()
    problems = []
    try:
        config._attn_implementation = "sdpa"
        if attention_of(config) != "sdpa":
            problems.append("PretrainedConfig._attn_implementation no longer holds the kernel set on it")
    except AttributeError as exc:
        problems.append(f"PretrainedConfig._attn_implementation cannot be set ({exc})")
    if not callable(getattr(AttentionInterface, "register", None)) or "sdpa" not in AttentionInterface():
        problems.append("AttentionInterface is no longer a global registry that names sdpa")
    from transformers.models.mixtral import modeling_mixtral

    if not callable(getattr(modeling_mixtral, "load_balancing_loss_func", None)):
        problems.append("the MoE modeling modules no longer define load_balancing_loss_func")
    import torch

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    if not hasattr(torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0), "_last_lr"):
        problems.append("torch's LRScheduler keeps no _last_lr (the rate a resumed step logs)")
    if not hasattr(torch.nn.Module(), "_compiled_call_impl"):
        problems.append("torch's nn.Module keeps no _compiled_call_impl (--torch-compile's undo)")
    if problems:
        raise RuntimeError("transformers or torch is not what this version of aitraining was written for: "
                           + "; ".join(problems) + "; install transformers 5.17 to 5.25 and torch 2.4 to 2.13")
