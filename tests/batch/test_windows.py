"""Packing for models whose layers differ in attention type: sliding windows, hybrid layers, Gemma 2's softcapping.

Each family's tiny model (hidden 64, 2 layers) has a window of 16 tokens and rows over 100 tokens, so the window
binds (checked: the same weights with a window longer than every row give another loss). For each, the packed
layout the model gets by default gives the padded layout's loss and grad_norm, and both give TRL's ORPOTrainer's
first-step loss, NLL and grad_norm. The window mask itself is checked against a hand-written matrix.
"""

from __future__ import annotations

import os

import pytest
import torch
from conftest import EOS, make_tokenizer
from test_families import perturbed_model, tiny_config
from test_trl_equivalence import trl_batch

from autotrain.batch.packed import PackedCollator
from autotrain.batch.padded import PaddedCollator
from autotrain.model.kernels import decoder_inputs, make_collator, packing_kernel
from autotrain.train.methods.orpo import orpo_step

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

WINDOW = 16
# model_type -> config fields that give it a window of WINDOW and, where the family allows, both layer types.
WINDOWED: dict[str, dict] = {
    "mistral": {"sliding_window": WINDOW},  # every layer sliding, no layer_types
    "qwen2": {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1},  # full, sliding
    # sliding, full; an attention softcap small enough to bind on these logits
    "gemma2": {"sliding_window": WINDOW, "attn_logit_softcapping": 1.0},
    "gemma3_text": {"sliding_window": WINDOW, "layer_types": ["sliding_attention", "full_attention"]},
    "cohere2": {"sliding_window": WINDOW, "layer_types": ["sliding_attention", "full_attention"]},
    # a mixture of experts with a window: the router loss is packed too
    "mixtral": {"sliding_window": WINDOW},
}
LONG = [(60, 45, 50), (30, 70, 20), (80, 25, 40)]  # prompt + chosen and prompt + rejected each over 100 tokens


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def long_pairs(seed: int = 1) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    draw = lambda n: torch.randint(5, 100, (n,), generator=generator).tolist()  # noqa: E731
    return [{"prompt_ids": draw(p), "chosen_ids": draw(c), "rejected_ids": draw(r)} for p, c, r in LONG]


def windowed_model(kind: str, window: int = WINDOW, **overrides) -> torch.nn.Module:
    fields = {**WINDOWED[kind], "sliding_window": window, **overrides}
    return perturbed_model(tiny_config(kind, **fields)).train()  # same seed: same weights whatever the window


def loss_and_grad_norm(loss: torch.Tensor, model: torch.nn.Module) -> tuple[float, float]:
    loss.backward()
    norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    return loss.item(), norm.item()


def ours(model: torch.nn.Module, batch: dict) -> tuple[float, float, float]:
    loss, metrics = orpo_step(model, batch, 0.1)
    nll = metrics["nll_loss"].item()
    return (*loss_and_grad_norm(loss, model), nll)


def trl(model: torch.nn.Module, features: list[dict], tmp_path) -> tuple[float, float, float]:
    from datasets import Dataset
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    tokenizer = make_tokenizer(chat=True)
    args = ORPOConfig(output_dir=str(tmp_path), beta=0.1, report_to=[], max_length=256, use_cpu=True)
    rows = Dataset.from_list([{"prompt": "1+1=", "chosen": "2", "rejected": "3"}])
    trainer = ORPOTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
    model.train()
    loss, metrics = trainer.get_batch_loss_metrics(model, trl_batch(features, EOS))
    return (*loss_and_grad_norm(loss, model), metrics["nll_loss"])


@pytest.mark.parametrize("kind", list(WINDOWED))
def test_windowed_model_packs_and_equals_padded_and_trl(kind, tmp_path):
    model = windowed_model(kind)
    kernel, why = packing_kernel(model)
    assert kernel is not None, (kind, why)
    features = long_pairs()
    packed_batch = make_collator(True, EOS, prompt_loss=True, model=model)(features)
    assert "segment_ids" in packed_batch and packed_batch["input_ids"].shape[1] > 100
    packed = ours(model, packed_batch)
    padded = ours(model, PaddedCollator(EOS, prompt_loss=True)(features))
    reference = trl(model, features, tmp_path)
    for name, value, pad, ref in zip(("loss", "grad_norm", "nll"), packed, padded, reference):
        assert value == pytest.approx(pad, rel=1e-5), (kind, name)
        assert value == pytest.approx(ref, rel=1e-4), (kind, name)
    # The window binds: the same weights attending over whole rows give another loss.
    unbounded = ours(windowed_model(kind, window=4096), PaddedCollator(EOS, prompt_loss=True)(features))
    assert abs(unbounded[0] - padded[0]) > 1e-3 * abs(padded[0]), kind


def test_gemma2_attention_softcapping_binds_and_packs():
    """Gemma 2 loads with eager attention (it has no SDPA: SDPA cannot softcap) and packs with the additive masks;
    the softcap changes the loss, so it is applied, in both layouts alike."""
    features = long_pairs(seed=2)
    capped, uncapped = windowed_model("gemma2"), windowed_model("gemma2", attn_logit_softcapping=None)
    assert capped.config._attn_implementation == "eager"
    losses = {}
    for name, model in (("capped", capped), ("uncapped", uncapped)):
        packed = ours(model, make_collator(True, EOS, prompt_loss=False, model=model)(features))
        padded = ours(model, PaddedCollator(EOS)(features))
        assert packed[:2] == pytest.approx(padded[:2], rel=1e-5), name
        losses[name] = packed[0]
    assert abs(losses["capped"] - losses["uncapped"]) > 1e-3 * losses["uncapped"]


def test_sliding_mask_counts_each_sequence_in_its_own_positions():
    """One pair, prompt 3 tokens, chosen 3, rejected 3, window 2: a query sees the keys its own sequence holds within
    the last 2 of its positions; rejected's first token (position 3) sees the prompt's last (position 2)."""
    pair = [{"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9, 10], "rejected_ids": [11, 12, 13]}]
    batch = PackedCollator(pad_id=0)(pair)
    model = windowed_model("qwen2", window=2)
    masks = decoder_inputs(model, batch)["attention_mask"]
    assert set(masks) == {"full_attention", "sliding_attention"}
    #            p p p c c c r r r
    expected = [[1, 0, 0, 0, 0, 0, 0, 0, 0],
                [1, 1, 0, 0, 0, 0, 0, 0, 0],
                [0, 1, 1, 0, 0, 0, 0, 0, 0],
                [0, 0, 1, 1, 0, 0, 0, 0, 0],
                [0, 0, 0, 1, 1, 0, 0, 0, 0],
                [0, 0, 0, 0, 1, 1, 0, 0, 0],
                [0, 0, 1, 0, 0, 0, 1, 0, 0],
                [0, 0, 0, 0, 0, 0, 1, 1, 0],
                [0, 0, 0, 0, 0, 0, 0, 1, 1]]
    assert masks["sliding_attention"][0, 0].int().tolist() == expected
    full = [[int(k <= q and not (q >= 6 and 3 <= k < 6)) for k in range(9)] for q in range(9)]
    assert masks["full_attention"][0, 0].int().tolist() == full


def test_flex_block_masks_per_layer_type_equal_padded(monkeypatch):
    """The CUDA kernel's path, forward only on CPU (flex_attention has no CPU backward) and uncompiled: one BlockMask
    per layer type, windows counted per sequence, Gemma 2's softcap applied by transformers' score_mod; the reference
    is the padded layout on eager attention."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    import transformers.integrations.flex_attention as hf_flex
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention",
                        lambda q, k, v, training=False, **kw: flex_attention(q, k, v, **kw))
    features = long_pairs(seed=3)
    flex = windowed_model("gemma2")
    flex.set_attn_implementation("flex_attention")
    packed = make_collator(True, EOS, prompt_loss=False, model=flex)(features)
    masks = decoder_inputs(flex, packed)["attention_mask"]
    assert set(masks) == {"full_attention", "sliding_attention"}
    assert all(isinstance(mask, BlockMask) for mask in masks.values())
    reference = windowed_model("gemma2")
    with torch.no_grad():
        loss = orpo_step(flex, packed, 0.1)[0].item()
        expected = orpo_step(reference, PaddedCollator(EOS)(features), 0.1)[0].item()
    assert loss == pytest.approx(expected, rel=1e-5)


def _varlen_reference(module, query, key, value, attention_mask, scaling=None, sliding_window=None, softcap=None,
                      cu_seq_lens_q=None, **kwargs):
    """What flash-attn's varlen kernel computes, in plain torch, as transformers calls it: causal within each
    cu_seq_lens segment, and window_size=(sliding_window - 1, ...) to the left, i.e. q - k < sliding_window."""
    assert attention_mask is None and cu_seq_lens_q is not None
    width = query.shape[2]
    segment = torch.zeros(width, dtype=torch.long).index_add_(
        0, cu_seq_lens_q[1:-1].long(), torch.ones(len(cu_seq_lens_q) - 2, dtype=torch.long)).cumsum(0)
    index = torch.arange(width)
    allowed = (segment[:, None] == segment[None, :]) & (index[None, :] <= index[:, None])
    if sliding_window is not None:
        allowed &= index[:, None] - index[None, :] < sliding_window
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = query @ key.transpose(-1, -2) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    return (weights @ value).transpose(1, 2).contiguous(), None


@pytest.mark.parametrize("kind", ["gemma2", "qwen2"])
def test_varlen_layout_gets_each_layers_window(kind, monkeypatch):
    """The flash (varlen) path passes no mask: each layer hands its own sliding_window (and Gemma 2 its softcap) to
    the kernel. With a plain-torch stand-in for flash-attn's varlen kernel (no flash-attn on CPU), the per-sequence
    packed layout gives the padded layout's loss."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    features = long_pairs(seed=4)
    model = windowed_model(kind)
    expected = ours(model, PaddedCollator(EOS)(features))
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "flash_attention_2", _varlen_reference)
    model.config._attn_implementation = "flash_attention_2"
    assert packing_kernel(model) == ("varlen", "flash_attention_2")
    batch = make_collator(True, EOS, prompt_loss=False, model=model)(features)
    assert "cu_seq_lens" in batch and "attention_mask" not in decoder_inputs(model, batch)
    assert ours(model, batch)[:2] == pytest.approx(expected[:2], rel=1e-5)
