"""Which weights of a vision-language model train (--image-column).

LoRA adapters on the language model's linear layers (`--target-modules all-linear`, the default, resolves to those),
or in a full fine-tune the language model and its head; the vision encoder and its projector stay frozen unless
--train-vision (then all-linear adapts them too, and a full fine-tune updates them). Frozen, the vision tower gives
the features the language model was trained to read; a preference signal on a few thousand answers is a weak one to
move them with.
"""

from __future__ import annotations

import logging
import re

import torch

from autotrain.params import LLMTrainingParams

logger = logging.getLogger("autotrain")

__all__ = ["freeze_vision", "lora_targets"]


def _language_parts(net: torch.nn.Module) -> tuple[str, set[int]]:
    """(the language model's module name, the ids of the parameters that train by default: the language model's and
    the LM head's)."""
    decoder, head = net.get_decoder(), net.get_output_embeddings()
    name = next(n for n, module in net.named_modules() if module is decoder)
    return name, {id(p) for module in (decoder, head) for p in module.parameters()}


def lora_targets(net: torch.nn.Module, params: LLMTrainingParams) -> str | list[str]:
    """peft's target_modules: all-linear, without --train-vision, as a pattern naming only the language model's
    linear layers; all-linear with it, and names given, as given."""
    if params.target_modules != "all-linear":
        return [name.strip() for name in params.target_modules.split(",") if name.strip()]
    if params.train_vision:
        return "all-linear"
    prefix, _ = _language_parts(net)
    leaves = sorted({name.rsplit(".", 1)[-1] for name, module in net.get_decoder().named_modules()
                     if isinstance(module, torch.nn.Linear)})
    logger.info("LoRA on the language model's %s (--train-vision adapts the vision encoder too)", ", ".join(leaves))
    return rf"^{re.escape(prefix)}\..*\.({'|'.join(map(re.escape, leaves))})$"


def freeze_vision(net: torch.nn.Module, params: LLMTrainingParams) -> None:
    """A full fine-tune without --train-vision: everything but the language model and its head stays frozen."""
    if params.peft or params.train_vision:
        return
    _, trained = _language_parts(net)
    frozen = [p for p in net.parameters() if id(p) not in trained and p.requires_grad]
    for parameter in frozen:
        parameter.requires_grad_(False)
    logger.info("vision encoder and projector frozen (%d parameters; --train-vision trains them)",
                sum(p.numel() for p in frozen))
