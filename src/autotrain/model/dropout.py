"""Dropout off in the model being trained and in every reference: the objective is then a function of the weights.

With dropout the loss depends on the random masks, and the masks on the layout: packed and padded batches, this
loop and TRL's, the policy and a reference computed in train mode would all see different models. TRL disables the
model's dropout by default (`disable_dropout=True`); so does `LLMTrainingParams.disable_dropout`.

A model's dropout comes in three forms in transformers 5, and all three are zeroed:
- `nn.Dropout` modules (GPT-2's attn_dropout, resid_dropout, embd dropout);
- float probabilities kept on a module and passed to the attention function in train mode
  (`dropout=0.0 if not self.training else self.attention_dropout`, Llama and most models since);
- probabilities read from the layer's config at forward time (`self.config.attention_dropout`: Falcon, GPT-Neo,
  Persimmon; Falcon's `self.config.hidden_dropout`). The model's own config is left as it is (it is saved with the
  model): each layer that holds the config gets a copy of it, as loaded, with every dropout probability at 0.

LoRA's dropout (peft's `lora_dropout` modules) is not the model's and is left alone here: a `--lora-dropout` the user
gives is kept as given. Left unset, it is already 0 while disable_dropout is on (autotrain.model.lora), as TRL's
disable_dropout zeroes it too.

This module imports only torch (and transformers' PreTrainedModel, to leave models' own configs alone).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["disable_dropout", "eval_mode"]

_LORA_DROPOUT = "lora_dropout"


def _is_probability_name(name: str) -> bool:
    return "dropout" in name or "pdrop" in name or name.endswith(("_drop", "drop_prob"))


def disable_dropout(model: torch.nn.Module) -> int:
    """Zero every dropout probability of `model` (see the module docstring), LoRA's excepted; return how many."""
    from transformers import PreTrainedModel

    zeroed = 0
    private: dict[int, object] = {}  # one zero-dropout copy per config object
    for name, module in model.named_modules():
        if _LORA_DROPOUT in name.split("."):
            continue
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            zeroed += module.p != 0
            module.p = 0.0
            continue
        for attribute, value in list(vars(module).items()):
            if _is_probability_name(attribute) and isinstance(value, float) and value != 0.0:
                setattr(module, attribute, 0.0)
                zeroed += 1
        config = getattr(module, "config", None)
        if config is None or isinstance(module, PreTrainedModel):
            continue  # a model's own config is saved with it: left as it is
        fields = [f for f, v in vars(config).items() if _is_probability_name(f) and isinstance(v, float) and v]
        if fields:
            if id(config) not in private:
                private[id(config)] = copy.copy(config)
                for field in fields:
                    setattr(private[id(config)], field, 0.0)
            module.config = private[id(config)]
            zeroed += 1
    return zeroed


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode for one pass that must not depend on dropout (a reference, a check), then back to the mode it had;
    also with disable_dropout off, and for LoRA's dropout."""
    training = model.training
    if training:
        model.eval()
    try:
        yield
    finally:
        if training:
            model.train()
