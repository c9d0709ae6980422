"""What a model family does between its LM head and its logits, for the chunked head to do the same.

The chunked head (autotrain.model.logprobs.token_logps) runs the LM head's weights itself, at the target positions only,
so whatever the family's forward applies to the head's output (a scale, a soft cap) must be applied there too. The
table below says it per model type; the start-up head check (autotrain.train.head_check) refuses a family for which it
is wrong.
"""

from __future__ import annotations

from typing import Any, Callable

import torch


def decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module, dict[str, float | None]]:
    """The transformer body, the LM head and the head's logit transforms of a transformers causal LM (no PEFT or
    parallel wrapper: autotrain.model.loading.unwrap).

    The transforms are {"logit_scale", "softcap"} as autotrain.model.logprobs.token_logps takes them; see `head_transform`.
    """
    scale, softcap = head_transform(model.config)
    return model.get_decoder(), model.get_output_embeddings(), {"softcap": softcap, "logit_scale": scale}


def _reciprocal(field: str) -> Callable[[Any], float]:
    return lambda config: 1.0 / getattr(config, field)


def _field(field: str) -> Callable[[Any], float | None]:
    return lambda config: getattr(config, field, None)


# What each family's causal-LM forward (the class AutoModelForCausalLM loads for the model type) does between its LM
# head and the logits it returns, read from transformers' modeling_*.py (surveyed on 5.24): logits * scale, then
# tanh(logits / softcap) * softcap, with the values read from the text config. Keyed by the outer config's model
# type, since the class decides: Gemma3ForConditionalGeneration ("gemma3") never applies the final_logit_softcapping
# of its text config, Gemma3ForCausalLM ("gemma3_text") does. A family that is not listed returns the head's output
# unchanged; the start-up self-check that compares the chunked head with the model's own logits refuses any family
# for which that is wrong.
_SCALES: dict[str, Callable[[Any], float | None]] = {
    # Granite's muP: logits / logits_scaling.
    **dict.fromkeys(("granite", "granite_swa", "granitemoe", "granitemoe_swa", "granitemoeshared", "granitemoehybrid"),
                    _reciprocal("logits_scaling")),
    # MiniCPM3 divides the hidden state before its bias-free head instead: the same logits.
    "minicpm3": _reciprocal("logits_scaling"),
    "hyperclovax": _field("logits_scaling"),  # the same field as Granite's, multiplied
    "falcon_h1": _field("lm_head_multiplier"),
    **dict.fromkeys(("cohere", "cohere2", "cohere2_moe"), _field("logit_scale")),
}
_SOFTCAPS: dict[str, Callable[[Any], float | None]] = {
    **dict.fromkeys(("gemma2", "gemma3_text", "gemma3n", "gemma3n_text", "gemma4", "gemma4_text",
                     "vaultgemma", "nanochat", "beam"),
                    _field("final_logit_softcapping")),
    "recurrent_gemma": _field("logits_soft_cap"),
}


def head_transform(config: Any) -> tuple[float | None, float | None]:
    """(scale, softcap) that the model of `config` applies to its LM head's output; None where it applies none."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config

    def read(table: dict[str, Callable[[Any], float | None]]) -> float | None:
        value = table[config.model_type](text) if config.model_type in table else None
        return None if value is None else float(value)

    scale = read(_SCALES)
    return (None if scale == 1.0 else scale), read(_SOFTCAPS)
