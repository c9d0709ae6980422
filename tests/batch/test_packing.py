"""Shared-prompt packing: the exact layout of a two-pair batch, the attention rule, and a loss and gradients equal
to the padded reference layout's (fp32, tiny models, full fine-tune and LoRA)."""

from __future__ import annotations

import logging

import pytest
import torch

from autotrain.batch.packed import PackedCollator, dense_mask, plan_rows
from autotrain.batch.padded import PaddedCollator
from autotrain.model import kernels
from autotrain.model.head import decoder_and_head
from autotrain.model.kernels import DENSE_TOKEN_BUDGET, EAGER_TOKEN_BUDGET, decoder_inputs, make_collator
from autotrain.model.logprobs import token_logps
from autotrain.train.methods.orpo import orpo_step

T, F = True, False
TWO_PAIRS = [
    {"prompt_ids": [5, 6], "chosen_ids": [8, 2], "rejected_ids": [10, 2]},
    {"prompt_ids": [7], "chosen_ids": [9, 2], "rejected_ids": [11, 12, 2]},
]


def tiny_model(attn: str = "sdpa", vocab: int = 101, lora: bool = False, seed: int = 0) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    with torch.no_grad():  # far from uniform log-probs, and LoRA B != 0 so every adapter weight gets a gradient
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def random_pairs(lengths: list[tuple[int, int, int]], vocab: int = 101, seed: int = 1) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    draw = lambda n: torch.randint(3, vocab, (n,), generator=g).tolist()  # noqa: E731
    return [{"prompt_ids": draw(p), "chosen_ids": draw(c), "rejected_ids": draw(r)} for p, c, r in lengths]


# Odd lengths, a one-token prompt, a one-token completion, and chosen longer and shorter than rejected.
ODD = [(5, 3, 7), (1, 6, 1), (9, 4, 4), (3, 1, 11), (7, 9, 2), (2, 5, 5), (11, 3, 6)]


def loss_and_grads(model: torch.nn.Module, batch: dict, beta: float = 0.5) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    loss, _ = orpo_step(model, batch, beta)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_same(packed: tuple[torch.Tensor, dict], padded: tuple[torch.Tensor, dict]) -> None:
    assert packed[0].item() == pytest.approx(padded[0].item(), rel=1e-5)
    assert padded[1].keys() == packed[1].keys()
    for name, ref in padded[1].items():
        assert ref.norm() > 0, name  # the comparison below must be able to fail
        assert (packed[1][name] - ref).norm() <= 1e-5 * ref.norm(), name


def test_two_pair_example_is_the_documented_layout():
    batch = PackedCollator(pad_id=0, token_budget=16)(TWO_PAIRS)
    assert batch["input_ids"].tolist() == [[5, 6, 8, 2, 10, 2, 7, 9, 2, 11, 12, 2]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 2, 3, 0, 1, 2, 1, 2, 3]]
    assert batch["segment_ids"].tolist() == [[0, 0, 1, 1, 2, 2, 3, 4, 4, 5, 5, 5]]
    assert batch["hidden_index"].tolist() == [1, 2, 1, 4, 6, 7, 6, 9, 10]
    assert batch["target_ids"].tolist() == [8, 2, 10, 2, 9, 2, 11, 12, 2]
    assert batch["target_seq"].tolist() == [0, 0, 2, 2, 1, 1, 3, 3, 3]
    assert batch["in_completion"].tolist() == [T] * 9
    assert batch["in_nll"].tolist() == [T, T, F, F, T, T, F, F, F]
    assert batch["num_pairs"] == 2
    assert "attention_mask" not in batch


def test_two_pair_example_mask():
    expected = [
        "100000000000",
        "110000000000",
        "111000000000",
        "111100000000",
        "110010000000",  # rejected: the prompt and itself, never chosen
        "110011000000",
        "000000100000",  # pair 1 sees nothing of pair 0
        "000000110000",
        "000000111000",
        "000000100100",
        "000000100110",
        "000000100111",
    ]
    mask = dense_mask(PackedCollator(pad_id=0)(TWO_PAIRS)["segment_ids"])
    assert mask.shape == (1, 1, 12, 12) and mask.dtype == torch.bool
    assert ["".join(str(int(v)) for v in row) for row in mask[0, 0].tolist()] == expected


def test_prompt_loss_counts_the_shared_prompt_once():
    batch = PackedCollator(pad_id=0, prompt_loss=True)(TWO_PAIRS)
    assert batch["hidden_index"].tolist() == [0, 1, 2, 1, 4, 6, 7, 6, 9, 10]
    assert batch["target_ids"].tolist() == [6, 8, 2, 10, 2, 9, 2, 11, 12, 2]
    assert batch["target_seq"].tolist() == [0, 0, 0, 2, 2, 1, 1, 3, 3, 3]
    assert batch["in_completion"].tolist() == [F, T, T, T, T, T, T, T, T, T]
    assert batch["in_nll"].tolist() == [T, T, T, F, F, T, T, F, F, F]


def test_row_end_padding_attends_only_to_padding():
    batch = PackedCollator(pad_id=0, token_budget=6)(TWO_PAIRS + [{"prompt_ids": [4], "chosen_ids": [3],
                                                                    "rejected_ids": [3]}])
    assert batch["input_ids"].tolist() == [[5, 6, 8, 2, 10, 2], [7, 9, 2, 11, 12, 2], [4, 3, 3, 0, 0, 0]]
    assert batch["position_ids"][2].tolist() == [0, 1, 1, 0, 1, 2]
    mask = dense_mask(batch["segment_ids"])[2, 0]
    assert mask[3:].int().tolist() == [[0, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1]]
    assert mask[:3, 3:].sum() == 0


def test_separate_layout_for_varlen_kernels():
    batch = PackedCollator(pad_id=0, token_budget=8, share_prompt=False)(TWO_PAIRS)
    assert batch["input_ids"].tolist() == [[5, 6, 8, 2, 5, 6, 10, 2], [7, 9, 2, 7, 11, 12, 2, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 3], [0, 1, 2, 0, 1, 2, 3, 0]]
    assert batch["hidden_index"].tolist() == [1, 2, 5, 6, 8, 9, 11, 12, 13]
    assert batch["target_seq"].tolist() == [0, 0, 2, 2, 1, 1, 3, 3, 3]
    assert batch["cu_seq_lens"].tolist() == [0, 4, 8, 11, 15, 16] and batch["cu_seq_lens"].dtype == torch.int32
    assert batch["max_seq_len"] == 4


def test_plan_rows_first_fit_decreasing():
    assert plan_rows([5, 3, 4, 2], 7) == [[0, 3], [1, 2]]
    assert plan_rows([9, 2], 7) == [[0], [1]]  # too long for the budget: a row of its own
    assert plan_rows([5, 3, 4], None) == [[0, 1, 2]]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("prompt_loss", [False, True], ids=["completion-nll", "prompt-nll"])
def test_packed_loss_and_gradients_equal_padded(lora, prompt_loss):
    model = tiny_model(lora=lora)
    features = random_pairs(ODD)
    packed = PackedCollator(pad_id=0, prompt_loss=prompt_loss, token_budget=40)(features)
    rows = packed["input_ids"].shape[0]
    assert 1 < rows < len(features)  # several rows, and several pairs in some row
    padded = PaddedCollator(pad_id=0, prompt_loss=prompt_loss)(features)
    assert_same(loss_and_grads(model, packed), loss_and_grads(model, padded))


@pytest.mark.parametrize("attn, share_prompt", [("eager", True), ("sdpa", False)], ids=["eager-additive", "separate"])
def test_other_kernels_and_layouts_equal_padded(attn, share_prompt):
    model = tiny_model(attn=attn)
    features = random_pairs(ODD, seed=2)
    packed = PackedCollator(pad_id=0, prompt_loss=True, token_budget=50, share_prompt=share_prompt)(features)
    assert_same(loss_and_grads(model, packed), loss_and_grads(model, PaddedCollator(0, prompt_loss=True)(features)))


def test_pairs_whose_boundary_merges_in_the_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("+", behavior="isolated")
    corpus = [f"{a}+{b}={a + b}" for a in range(10) for b in range(10)] * 5
    core.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>", "</s>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="</s>")
    joint = tok("2+2=4", add_special_tokens=False)["input_ids"]
    apart = tok("2+2=", add_special_tokens=False)["input_ids"] + tok("4", add_special_tokens=False)["input_ids"]
    assert joint != apart  # "=" and "4" (or more) merge across the boundary: the case this test is about
    # As autotrain.data.tokenize does: prompt and completion apart, EOS closing a completion without a template.
    rows = [("2+2=", "4", "5"), ("7+8=", "15", "16"), ("9+9=", "18", "1"), ("3+0=", "3", "30")]
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    features = [{"prompt_ids": ids(p), "chosen_ids": ids(c) + [tok.eos_token_id],
                 "rejected_ids": ids(r) + [tok.eos_token_id]} for p, c, r in rows]
    model = tiny_model(vocab=len(tok))
    for prompt_loss in (False, True):
        packed = PackedCollator(pad_id=tok.eos_token_id, prompt_loss=prompt_loss, token_budget=16)(features)
        padded = PaddedCollator(pad_id=tok.eos_token_id, prompt_loss=prompt_loss)(features)
        assert_same(loss_and_grads(model, packed), loss_and_grads(model, padded))


def target_logps(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    decoder, head, _ = decoder_and_head(model)
    with torch.no_grad():
        hidden = decoder(**decoder_inputs(model, batch), use_cache=False).last_hidden_state
        return token_logps(hidden.reshape(-1, hidden.shape[-1])[batch["hidden_index"]], head, batch["target_ids"])


def test_chosen_tokens_reach_neither_their_rejected_nor_another_pair():
    model = tiny_model()
    pair_a, pair_b = random_pairs([(4, 5, 6), (3, 4, 5)], seed=3)
    changed = dict(pair_a, chosen_ids=[(t + 7) % 90 + 5 for t in pair_a["chosen_ids"]])
    collate = PackedCollator(pad_id=0)  # one row: A's chosen sits right before A's rejected and B
    before, after = collate([pair_a, pair_b]), collate([changed, pair_b])
    assert before["input_ids"].shape[0] == 1
    old, new = target_logps(model, before), target_logps(model, after)
    seq = before["target_seq"]
    untouched = seq != 0  # A's rejected (sequence 2) and all of B (sequences 1 and 3)
    torch.testing.assert_close(new[untouched], old[untouched], rtol=0, atol=1e-6)
    # The change does reach A's own chosen tokens after the first (the first is read from the prompt).
    assert (new[seq == 0][1:] - old[seq == 0][1:]).abs().min() > 1e-4


@pytest.mark.parametrize("packing", [True, False])
def test_the_lm_head_computes_the_targets_rows_only(packing):
    """The model's own forward runs its head on no position (logits_to_keep an empty index): on one position per row
    (logits_to_keep=1) it multiplied a non-contiguous [rows, 1, H] slice, which torch's matmul does as a batched
    product with the [V, H] weight expanded per row, reading the whole weight once per row (8 rows padded)."""
    model = tiny_model()
    features = random_pairs(ODD)
    batch = make_collator(packing, 0, prompt_loss=True, model=model)(features)
    rows = []
    handle = model.get_output_embeddings().register_forward_hook(
        lambda module, args, output: rows.append(args[0].reshape(-1, args[0].shape[-1]).shape[0]))
    try:
        loss, _ = orpo_step(model, batch, 0.5)
    finally:
        handle.remove()
    assert sum(rows) == len(batch["target_ids"])


def test_packing_runs_no_host_sync_in_forward_and_backward():
    model = tiny_model()
    batch = PackedCollator(pad_id=0, token_budget=40)(random_pairs(ODD))
    syncing = {"aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::masked_select", "aten::unique"}
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        loss, metrics = orpo_step(model, batch, 0.5)
        loss.backward()
    ops = {event.key for event in prof.key_averages()}
    assert "aten::scaled_dot_product_attention" in ops  # the profile saw the step
    assert not ops & syncing


def test_flex_block_mask_through_the_model_equals_padded(monkeypatch):
    """The CUDA kernel's mask path, run forward-only on CPU (flex_attention has no CPU backward) and uncompiled."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    import transformers.integrations.flex_attention as hf_flex
    from torch.nn.attention.flex_attention import flex_attention

    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention",
                        lambda q, k, v, training=False, **kw: flex_attention(q, k, v, **kw))
    features = random_pairs(ODD[:4], seed=4)
    flex_model = tiny_model(attn="flex_attention")
    packed = make_collator(True, 0, prompt_loss=False, model=flex_model)(features)
    assert packed["input_ids"].shape == (1, 128)  # one row, padded to a whole flex block
    padded = PaddedCollator(0)(features)
    with torch.no_grad():
        ours, _ = orpo_step(flex_model, packed, 0.5)
        ref, _ = orpo_step(tiny_model(attn="sdpa"), padded, 0.5)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)


def test_make_collator_chooses_by_attention_and_falls_back_once(caplog):
    from transformers import AutoConfig, AutoModelForCausalLM

    assert isinstance(make_collator(False, 0, False, tiny_model()), PaddedCollator)
    packed = make_collator(True, 0, True, tiny_model(attn="sdpa"))
    assert isinstance(packed, PackedCollator) and packed.token_budget == DENSE_TOKEN_BUDGET and packed.prompt_loss
    assert make_collator(True, 0, True, tiny_model(attn="eager")).token_budget == EAGER_TOKEN_BUDGET
    kernels._logged.clear()  # "once" is per process: an earlier test may have logged it already
    # LFM2's convolution layers would carry one pair's state into the next pair of a packed row.
    hybrid = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "lfm2", vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, layer_types=["conv", "full_attention"]))
    with caplog.at_level(logging.WARNING, logger="autotrain"):
        first = make_collator(True, 0, False, hybrid)
        second = make_collator(True, 0, False, hybrid)
        assert not caplog.records  # the cost is measured on the first batch
        for collator in (first, second, first):
            collator(TWO_PAIRS)
    assert isinstance(first, PaddedCollator) and isinstance(second, PaddedCollator)
    # TWO_PAIRS padded: 4 rows of 4 tokens, 15 real (pair 1's chosen 7 9 2 is one short): 1/16 = 6% padding.
    assert [r.getMessage() for r in caplog.records] == [
        "packing is off for this model (layer types ['conv', 'full_attention']: conv layers take no packed mask); "
        "padded layout: 6% of computed tokens are padding (first batch)"]