"""Chunked, checkpointed log-probs against the naive full-logits formula, and the segment reductions against loops."""

from __future__ import annotations

import math

import pytest
import torch

from autotrain.model.logprobs import segment_mean, segment_sum, token_logps

N, H, V = 37, 16, 50


def naive_logps(hidden, head, targets, softcap=None, logit_scale=None):
    """The obvious formula on the full [N, V] logits, written independently of the code under test."""
    logits = head(hidden)
    if logits.dtype != torch.float64:
        logits = logits.float()
    if logit_scale is not None:
        logits = logits * logit_scale
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return torch.log_softmax(logits, -1).gather(-1, targets[:, None]).squeeze(-1)


def make_case(dtype=torch.float32, bias=True, n=N, seed=0, weight_scale=1.0):
    torch.manual_seed(seed)
    head = torch.nn.Linear(H, V, bias=bias).to(dtype)
    with torch.no_grad():
        head.weight.mul_(weight_scale)
    hidden = torch.randn(n, H, dtype=dtype)
    targets = torch.randint(0, V, (n,))
    upstream = torch.randn(n, dtype=torch.float64)  # a non-uniform dL/dlogp so each row's gradient is checked
    return head, hidden, targets, upstream


def grads(fn, head, hidden, targets, upstream, params):
    """Values of fn and the gradients of sum(upstream * fn) w.r.t. hidden and params."""
    hidden = hidden.detach().clone().requires_grad_()
    for p in params:
        p.grad = None
    out = fn(hidden, head, targets)
    (out.double() * upstream).sum().backward()
    return out.detach(), hidden.grad.clone(), [p.grad.clone() for p in params]


def assert_same(chunked, naive, atol, rtol):
    (v1, h1, p1), (v2, h2, p2) = chunked, naive
    torch.testing.assert_close(v1, v2, atol=atol, rtol=rtol)
    torch.testing.assert_close(h1, h2, atol=atol, rtol=rtol)
    assert len(p1) == len(p2) > 0
    for a, b in zip(p1, p2):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


@pytest.mark.parametrize("chunk", [1, 7, N, N + 5])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_values_and_grads_match_naive(chunk, bias, dtype, atol):
    head, hidden, targets, upstream = make_case(dtype, bias)
    params = list(head.parameters())
    chunked = grads(lambda h, m, t: token_logps(h, m, t, chunk_size=chunk), head, hidden, targets, upstream, params)
    naive = grads(naive_logps, head, hidden, targets, upstream, params)
    assert chunked[0].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert chunked[0].shape == (N,)
    assert (chunked[0] <= 0).all()
    assert_same(chunked, naive, atol=atol, rtol=atol)


def test_values_match_a_hand_computed_case():
    # Two classes with logits (0, log 3): softmax (1/4, 3/4), so log p = log(1/4), log(3/4).
    head = torch.nn.Linear(1, 2, bias=True)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[0.0], [math.log(3)]]))
        head.bias.zero_()
    out = token_logps(torch.ones(2, 1), head, torch.tensor([0, 1]), chunk_size=1)
    assert out.tolist() == pytest.approx([math.log(0.25), math.log(0.75)], rel=1e-6)


@pytest.mark.parametrize("softcap,logit_scale", [(2.0, None), (None, 0.25), (3.0, 1.7)])
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_softcap_and_logit_scale_match_the_formula(softcap, logit_scale, dtype, atol):
    head, hidden, targets, upstream = make_case(dtype, weight_scale=8.0)  # logits large enough for the cap to bite
    params = list(head.parameters())
    kw = {"softcap": softcap, "logit_scale": logit_scale}
    chunked = grads(lambda h, m, t: token_logps(h, m, t, chunk_size=5, **kw), head, hidden, targets, upstream, params)
    naive = grads(lambda h, m, t: naive_logps(h, m, t, **kw), head, hidden, targets, upstream, params)
    plain = naive_logps(hidden, head, targets)
    assert (chunked[0] - plain).abs().max() > 1e-2  # the options change the result, so the comparison means something
    assert_same(chunked, naive, atol=atol, rtol=atol)


def test_bf16_head_returns_float32_close_to_naive():
    head, hidden, targets, _ = make_case(torch.bfloat16)
    out = token_logps(hidden, head, targets, chunk_size=8)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, naive_logps(hidden, head, targets), atol=2e-2, rtol=2e-2)


def test_empty_input():
    head, hidden, targets, _ = make_case(n=0)
    hidden.requires_grad_()
    out = token_logps(hidden, head, targets)
    assert out.shape == (0,) and out.dtype == torch.float32
    out.sum().backward()  # still part of the graph, so a caller's loss over it can backward
    assert hidden.grad.shape == (0, H)
    with torch.no_grad():
        assert token_logps(hidden, head, targets).shape == (0,)


def test_tied_embedding_head():
    torch.manual_seed(1)
    embed = torch.nn.Embedding(V, H)
    head = torch.nn.Linear(H, V, bias=False)
    head.weight = embed.weight
    _, hidden, targets, upstream = make_case()
    chunked = grads(lambda h, m, t: token_logps(h, m, t, chunk_size=6), head, hidden, targets, upstream, [embed.weight])
    naive = grads(naive_logps, head, hidden, targets, upstream, [embed.weight])
    assert_same(chunked, naive, atol=1e-5, rtol=1e-5)


class TinyLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(H, V, bias=True)

    def forward(self, x):
        return self.head(x)


def lora_head(dropout: float):
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import Linear as LoraLinear

    torch.manual_seed(2)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["head"], init_lora_weights=False)
    model = get_peft_model(TinyLM(), config)
    head = model.base_model.model.head
    assert isinstance(head, LoraLinear)
    lora_params = [p for n, p in head.named_parameters() if "lora_" in n]
    assert len(lora_params) == 2 and all(p.requires_grad for p in lora_params)
    assert not head.base_layer.weight.requires_grad
    return model, head, lora_params


@pytest.mark.parametrize("chunk", [1, 7, N + 5])
def test_peft_lora_head(chunk):
    model, head, lora_params = lora_head(dropout=0.0)
    _, hidden, targets, upstream = make_case()
    chunked_fn = lambda h, m, t: token_logps(h, m, t, chunk_size=chunk)  # noqa: E731
    chunked = grads(chunked_fn, head, hidden, targets, upstream, lora_params)
    naive = grads(naive_logps, head, hidden, targets, upstream, lora_params)
    assert all(g.abs().sum() > 0 for g in chunked[2])
    assert_same(chunked, naive, atol=1e-5, rtol=1e-5)


def test_peft_lora_dropout_mask_is_the_same_in_the_recomputation():
    # Chunks of 10 (recomputed in backward) draw the same dropout masks as the naive formula run on the same chunks
    # in turn from the same seed; if the backward recomputation drew fresh masks, the gradients would disagree.
    model, head, lora_params = lora_head(dropout=0.5)
    model.train()
    _, hidden, targets, upstream = make_case()
    torch.manual_seed(123)
    chunked = grads(lambda h, m, t: token_logps(h, m, t, chunk_size=10), head, hidden, targets, upstream, lora_params)
    torch.manual_seed(123)
    by_chunk = lambda h, m, t: torch.cat([naive_logps(h[i : i + 10], m, t[i : i + 10]) for i in range(0, N, 10)])  # noqa: E731
    naive = grads(by_chunk, head, hidden, targets, upstream, lora_params)
    model.eval()
    no_dropout = naive_logps(hidden, head, targets)
    assert (chunked[0] - no_dropout).abs().max() > 1e-3  # dropout is active
    assert_same(chunked, naive, atol=1e-5, rtol=1e-5)


def saved_bytes(fn) -> tuple[int, torch.Tensor]:
    """Bytes autograd keeps for backward while fn runs (each saved tensor counted at its own size)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total, out


def test_saved_memory_does_not_grow_with_tokens_times_vocab():
    n, vocab, hid, chunk = 4096, 8192, 16, 256
    torch.manual_seed(0)
    head = torch.nn.Linear(hid, vocab)
    hidden = torch.randn(n, hid, requires_grad=True)
    targets = torch.randint(0, vocab, (n,))
    full_logits = n * vocab * 4

    naive_bytes, _ = saved_bytes(lambda: naive_logps(hidden, head, targets))
    assert naive_bytes >= full_logits  # the naive path keeps at least the [N, V] float32 softmax: the test can tell

    chunked_bytes, out = saved_bytes(lambda: token_logps(hidden, head, targets, chunk_size=chunk))
    # what remains is O(N * H): the chunks' inputs, which the caller's graph holds anyway
    assert chunked_bytes < full_logits / 100
    assert chunked_bytes <= 2 * n * (hid * 4 + 8) + chunk * vocab * 4
    out.sum().backward()
    assert hidden.grad is not None and torch.isfinite(hidden.grad).all()


def test_backward_recomputes_each_chunk_once_and_no_grad_skips_checkpointing():
    head, hidden, targets, _ = make_case()
    calls = []
    handle = head.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        hidden.requires_grad_()
        out = token_logps(hidden, head, targets, chunk_size=10)
        assert calls == [10, 10, 10, 7]
        out.sum().backward()
        assert sorted(calls) == sorted([10, 10, 10, 7] * 2)  # backward ran the head again, chunk by chunk
        calls.clear()
        with torch.no_grad():
            out = token_logps(hidden, head, targets, chunk_size=10)
        assert calls == [10, 10, 10, 7] and not out.requires_grad
    finally:
        handle.remove()


def test_targets_within_one_chunk_run_the_head_once_and_keep_only_its_logits():
    """Targets that fit one chunk keep their logits for backward instead of recomputing them: the recomputation
    would materialise the same [N, V] chunk at the start of backward anyway, so the peak is the same, and the head's
    matmul runs twice (forward, backward) instead of three times."""
    head, hidden, targets, upstream = make_case()
    calls = []
    handle = head.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        hidden.requires_grad_()
        kept, out = saved_bytes(lambda: token_logps(hidden, head, targets, chunk_size=N))
        (out.double() * upstream).sum().backward()
        assert calls == [N]  # backward did not run the head again
    finally:
        handle.remove()
    # What autograd keeps: the head's input and weight (the Linear's own), the [N, V] logits, N log-sum-exps, N targets.
    assert kept <= (N * H + V * H + V) * 4 + N * V * 4 + N * (4 + 8) + 64


def test_rejects_bad_shapes():
    head, hidden, targets, _ = make_case()
    with pytest.raises(ValueError, match=r"\[N, H\]"):
        token_logps(hidden[None], head, targets)
    with pytest.raises(ValueError, match="targets"):
        token_logps(hidden, head, targets[:-1])
    with pytest.raises(ValueError, match="chunk_size"):
        token_logps(hidden, head, targets, chunk_size=0)


# ---- segment reductions ---------------------------------------------------------------------------------------


def loop_reduce(values, ids, num, mean):
    out = []
    for s in range(num):
        members = [v for v, i in zip(values.tolist(), ids.tolist()) if i == s]
        out.append((sum(members) / len(members) if mean else sum(members)) if members else 0.0)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("num", [1, 4, 9])
def test_segment_sum_and_mean_match_a_loop(num):
    gen = torch.Generator().manual_seed(num)
    values = torch.randn(50, generator=gen)
    ids = torch.randint(0, num, (50,), generator=gen)
    if num == 9:
        ids[ids == 3] = 4  # an empty segment in the middle
    ids[0] = num - 1  # unsorted ids
    torch.testing.assert_close(segment_sum(values, ids, num).double(), loop_reduce(values, ids, num, False),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(segment_mean(values, ids, num).double(), loop_reduce(values, ids, num, True),
                               rtol=1e-5, atol=1e-5)


def test_segment_mean_empty_segments_and_gradient():
    values = torch.tensor([1.0, 2.0, 6.0, -4.0], requires_grad=True)
    ids = torch.tensor([2, 0, 2, 2])
    out = segment_mean(values, ids, 4)
    assert out.tolist() == [2.0, 0.0, 1.0, 0.0]  # segments 1 and 3 are empty: 0, not NaN
    out.sum().backward()
    assert values.grad.tolist() == pytest.approx([1 / 3, 1.0, 1 / 3, 1 / 3])  # d mean / d member = 1 / count
    assert segment_sum(torch.zeros(0), torch.zeros(0, dtype=torch.long), 3).tolist() == [0.0, 0.0, 0.0]
    assert segment_mean(torch.zeros(0), torch.zeros(0, dtype=torch.long), 2).tolist() == [0.0, 0.0]
