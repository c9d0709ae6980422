"""What the attention kernels receive on the CUDA paths, checked on CPU (issue 16).

- The flex_attention BlockMask of a packed batch: the same block lists as torch's own `create_block_mask`, built
  without the dense [R, T, T] mask (peak memory linear in the row's tokens).
- Under bf16 autocast with fp32 weights, every attention kernel transformers calls (sdpa, flex_attention) receives
  q, k and v in one dtype, bf16 (RoPE hands it fp32 q/k and a bf16 v; torch 2.11 refuses that in flex).
"""

from __future__ import annotations

import ctypes
import random

import pytest
import torch

from autotrain.batch.packed import PAD_SEGMENT, segment_mask_mod
from autotrain.model import kernels


def packed_segments(width: int, seed: int) -> list[int]:
    """A packed row's segment ids (pair k: prompt 3k, chosen 3k + 1, rejected 3k + 2), padding at the end."""
    rng, out, k = random.Random(seed), [], 0
    while len(out) < width - 40:
        for part in range(3):
            out += [3 * k + part] * rng.randint(1, 300)
        k += 1
    out = out[: width - 17]
    return out + [PAD_SEGMENT] * (width - len(out))


def tiny_llama(attn: str) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         pad_token_id=0, eos_token_id=1)
    config._attn_implementation = attn
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("width", [384, 1000])
def test_block_mask_has_create_block_masks_block_lists(width):
    from torch.nn.attention.flex_attention import create_block_mask

    segment_ids = torch.tensor([packed_segments(width, 1), packed_segments(width, 2)])
    expected = create_block_mask(segment_mask_mod(segment_ids), 2, None, width, width, device="cpu")
    found = kernels.decoder_inputs(tiny_llama("flex_attention"),
                                   {"input_ids": torch.zeros_like(segment_ids), "segment_ids": segment_ids,
                                    "position_ids": torch.zeros_like(segment_ids)})["attention_mask"]
    assert found.seq_lengths == (width, width) and found.BLOCK_SIZE == expected.BLOCK_SIZE
    for counts, indices in (("kv_num_blocks", "kv_indices"), ("full_kv_num_blocks", "full_kv_indices"),
                            ("q_num_blocks", "q_indices"), ("full_q_num_blocks", "full_q_indices")):
        n = getattr(expected, counts)
        assert torch.equal(getattr(found, counts), n), counts
        for r, h, i in torch.cartesian_prod(*(torch.arange(s) for s in n.shape)).tolist():
            count = n[r, h, i]
            assert torch.equal(getattr(found, indices)[r, h, i, :count], getattr(expected, indices)[r, h, i, :count])
    # The partial blocks are decided by the same rule, element by element.
    q, kv = torch.tensor([5, 700 % width, width - 1]), torch.tensor([0, 3, width - 20])
    b = torch.tensor([1])
    assert torch.equal(found.mask_mod(b, None, q, kv), segment_mask_mod(segment_ids)(b, None, q, kv))


def _peak_growth(build) -> int:
    """Bytes the resident set's high-water mark grows by while `build()` runs (Linux)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 131072)  # M_MMAP_THRESHOLD fixed: freed large buffers leave the resident set
    build()  # first-call code pages and pools are not the build's memory

    def status(field: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field)) * 1024

    before = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM
    build()
    return status("VmHWM") - before


def test_block_mask_memory_is_linear_in_the_rows_tokens():
    """8,192 tokens in one row: the dense [1, T, T] boolean mask alone would be 64 MiB (torch's uncompiled
    create_block_mask builds it, and temporaries of it; 1.7 GiB at 13k tokens, BENCHMARKS.md)."""
    width = 8192
    segment_ids = torch.tensor([packed_segments(width, 3)])
    model = tiny_llama("flex_attention")
    batch = {"input_ids": torch.zeros_like(segment_ids), "segment_ids": segment_ids,
             "position_ids": torch.zeros_like(segment_ids)}
    grown = _peak_growth(lambda: kernels.decoder_inputs(model, batch))
    assert grown < width * width // 2, f"peak grew by {grown / 2**20:.1f} MiB"  # half the dense mask alone


@pytest.mark.parametrize("attn", ["sdpa", "flex_attention"])
def test_kernels_get_one_dtype_under_bf16_autocast(attn, monkeypatch):
    import transformers.integrations.flex_attention as hf_flex
    from torch.nn.attention.flex_attention import flex_attention

    from autotrain.train.methods.orpo import orpo_step

    seen: list[tuple[torch.dtype, ...]] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy_sdpa(query, key, value, *args, **kwargs):
        seen.append((query.dtype, key.dtype, value.dtype))
        return sdpa(query, key, value, *args, **kwargs)

    def spy_flex(query, key, value, training=False, **kwargs):  # eager: CPU compiles would take minutes
        seen.append((query.dtype, key.dtype, value.dtype))
        return flex_attention(query, key, value, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy_sdpa)
    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention", spy_flex)
    model = tiny_llama(attn)
    assert model.model.embed_tokens.weight.dtype == torch.float32
    pairs = [{"prompt_ids": [5, 6, 7, 8], "chosen_ids": [9, 10, 1], "rejected_ids": [11, 1]},
             {"prompt_ids": [12, 13], "chosen_ids": [14, 15, 16, 1], "rejected_ids": [17, 18, 1]}]
    batch = kernels.make_collator(True, 0, False, model=model)(pairs)
    assert ("segment_ids" in batch) and (attn == "sdpa" or "attention_mask" not in batch)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = orpo_step(model, batch, 0.1)
    assert torch.isfinite(loss)
    assert len(seen) == 2  # one call per layer
    assert set(seen) == {(torch.bfloat16,) * 3}, seen


def test_bucket_widths_by_hand():
    from autotrain.batch.packed import bucket_width

    # (width, multiple) -> the smallest of 4, 5, 6, 7 x 2^k x multiple holding it (below 4 x multiple: the multiples).
    cases = {(1, 128): 128, (384, 128): 384, (512, 128): 512, (513, 128): 640, (1024, 128): 1024,
             (1025, 128): 1280, (1281, 128): 1536, (1793, 128): 2048, (2049, 128): 2560, (9000, 128): 10240,
             (13000, 128): 14336, (7, 1): 7, (9, 1): 10}
    assert {case: bucket_width(*case) for case in cases} == cases


def test_flex_rows_take_few_widths_over_a_run():
    """The GPU bench's batches (8 pairs: prompts 32-256, completions 32-512, one packed row for flex): a compiled
    kernel sees a handful of row widths, not one per step (multiples of 128 alone gave one per ~1-3 steps)."""
    rng = random.Random(0)
    collate = kernels.make_collator(True, 0, False, model=tiny_llama("flex_attention"))
    widths, waste = set(), []
    for _ in range(60):
        pairs = [{"prompt_ids": [5] * rng.randint(32, 256), "chosen_ids": [6] * rng.randint(32, 512),
                  "rejected_ids": [7] * rng.randint(32, 512)} for _ in range(8)]
        batch = collate(pairs)
        # Shared-prompt packing: each pair's prompt once, then its two completions.
        real = sum(len(p["prompt_ids"]) + len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in pairs)
        rows, width = batch["input_ids"].shape
        assert rows == 1 and width % 128 == 0 and width >= real
        widths.add(width)
        waste.append(width / real - 1)
    assert len(widths) <= 8, sorted(widths)
    assert max(waste) <= 0.25 + 128 / 2000 and sum(waste) / len(waste) <= 0.15
