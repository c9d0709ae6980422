"""--torch-compile: each decoder layer of the model compiled for training, and eager again after."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from autotrain.errors import ModelError
from autotrain.model.loading import unwrap
from autotrain.private import uncompile


@contextlib.contextmanager
def compiled_layers(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """With `enabled`, each decoder layer runs through torch.compile while the block lasts (training and its
    evaluations; not generation, whose KV-cache shapes would compile again): Inductor fuses a layer's elementwise
    work (norms, rotary, activations, LoRA's scaling) into a few kernels. Dynamic shapes, since a packed row changes
    width every batch. Compiling costs time up front (SmolLM2-135M with LoRA on one CPU thread: about 30 s, for 13%
    off each later micro-batch, BENCHMARKS.md), so it pays only for long runs; the loss agrees with eager to float
    rounding, not bitwise."""
    if not enabled:
        yield
        return
    layers = getattr(unwrap(model).get_decoder(), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        raise ModelError(f"torch_compile: {type(unwrap(model)).__name__} keeps no list of decoder layers to compile")
    for layer in layers:
        layer.compile(dynamic=True)
    try:
        yield
    finally:
        for layer in layers:
            uncompile(layer)
