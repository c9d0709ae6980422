"""Attention kernels that only a CUDA machine trains with: refused before anything is written when the machine cannot
run them, and probed on the first training pair when it may (autotrain.trainers.clm.kernel_probe).

The CPU cannot train through flex_attention (torch has no CPU backward for it) or flash-attn, so the probe is
exercised here with kernels made to fail on purpose (raise, wrong values, a non-finite gradient), registered through
transformers' public AttentionInterface, and with the real flex_attention forward, whose CPU backward raises. A run on
CUDA takes flex_attention by default: `autotrain.models.default_attention` is the seam the tests replace to make the
same decision here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import EOS, arithmetic_pairs, write_jsonl
from test_packing import random_pairs, tiny_model
from test_windows import _varlen_reference, long_pairs, windowed_model

from autotrain import outputs
from autotrain.errors import ModelError
from autotrain.project import AutoTrainProject
from autotrain.trainers.clm.kernel_probe import settle_kernel
from autotrain.trainers.clm.params import LLMTrainingParams


def cli(folder: Path, model: Path, *flags: str) -> subprocess.CompletedProcess:
    data = write_jsonl(folder / "d.jsonl", arithmetic_pairs(4))
    env = {**os.environ, "AITRAINING_CACHE": str(folder / "cache")}
    return subprocess.run([sys.executable, "-m", "autotrain", "llm", "--train", "--model", str(model), "--data-path",
                           data.name, "--project-name", "p", "--max-steps", "1", "--batch-size", "2",
                           "--gradient-accumulation", "1", *flags], cwd=folder, env=env, capture_output=True, text=True)


def test_flex_attention_without_cuda_is_refused_before_anything_is_written(tmp_path, chat_model):
    done = cli(tmp_path, chat_model, "--attn-implementation", "flex_attention")
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.splitlines() == [
        "error: attn_implementation flex_attention: torch's flex_attention has no backward pass on CPU or MPS, so it "
        "cannot train on this machine (no CUDA GPU is visible); choose sdpa or eager, or leave --attn-implementation "
        "unset"]
    assert not (tmp_path / "p").exists()
    assert not (tmp_path / "cache").exists()  # refused before the data was tokenized


def test_flash_attention_without_cuda_is_refused_before_the_model_loads():
    from autotrain import preflight
    from autotrain.errors import ParamsError
    from autotrain.trainers.clm.params import LLMTrainingParams

    for kernel in ("flash_attention_2", "flash_attention_3"):
        with pytest.raises(ParamsError) as raised:
            preflight.check_device(LLMTrainingParams(attn_implementation=kernel))
        assert str(raised.value) == (f"attn_implementation {kernel}: flash-attn runs on CUDA GPUs only and none is "
                                     "visible; choose sdpa or eager, or leave --attn-implementation unset")
    preflight.check_device(LLMTrainingParams(attn_implementation="sdpa"))  # the CPU kernels pass


# --- Kernels made to fail, registered under flex_attention's name (so the run lays its batches out for flex) --------


def attention(query, key, value, allowed, scaling=None, softcap=None):
    """Plain attention where `allowed` [R, T, T] says so: what every correct kernel computes."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = query @ key.transpose(-1, -2) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    return (scores.masked_fill(~allowed[:, None], float("-inf")).softmax(-1) @ value).transpose(1, 2).contiguous()


def dense_from_block_mask(module, query, key, value, attention_mask, scaling=None, softcap=None, **kwargs):
    """A correct stand-in for flex_attention: the BlockMask's own rule, evaluated densely."""
    rows, _, width, _ = query.shape
    allowed = attention_mask.mask_mod(torch.arange(rows)[:, None, None], None, torch.arange(width)[None, :, None],
                                      torch.arange(width)[None, None, :])
    return attention(query, key, value, allowed.expand(rows, width, width), scaling, softcap), None


def raises(module, query, key, value, attention_mask, **kwargs):
    raise RuntimeError("CUDA error: an illegal memory access was encountered. Compile with TORCH_USE_CUDA_DSA")


def leaks(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """Causal over the whole packed row, its mask ignored: the rejected answer sees the chosen one."""
    out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


class NanBackward(torch.autograd.Function):
    """torch's own flex_attention forward (without gradients, which CPU allows), a NaN gradient backward."""

    @staticmethod
    def forward(ctx, query, key, value, block_mask, scaling):
        from torch.nn.attention.flex_attention import flex_attention

        ctx.shapes = (query.shape, key.shape, value.shape)
        return flex_attention(query.detach(), key.detach(), value.detach(), block_mask=block_mask, scale=scaling,
                              enable_gqa=True)

    @staticmethod
    def backward(ctx, grad):
        return (*(torch.full(shape, float("nan"), dtype=grad.dtype) for shape in ctx.shapes), None, None)


def nan_backward(module, query, key, value, attention_mask, scaling=None, **kwargs):
    out = NanBackward.apply(query, key, value, attention_mask, scaling)
    return out.transpose(1, 2).contiguous(), None


@contextlib.contextmanager
def registered(name: str, function):
    """`function` as transformers' attention kernel `name` (its public AttentionInterface), then the original."""
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    original = ALL_ATTENTION_FUNCTIONS[name]
    AttentionInterface.register(name, function)
    try:
        yield
    finally:
        AttentionInterface.register(name, original)


PAIR = random_pairs([(12, 9, 7)], seed=5)[0]


def settle(model, chosen: bool = False, dtype: torch.dtype | None = None):
    return settle_kernel(model, PAIR, 0, True, torch.device("cpu"), chosen, dtype)


def kernels_of(model) -> set[str]:
    return {m.config._attn_implementation for m in model.modules() if hasattr(getattr(m, "config", None),
                                                                              "_attn_implementation")}


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16-autocast"])
def test_a_correct_kernel_passes_and_leaves_no_trace(caplog, dtype):
    model = tiny_model(attn="flex_attention").train()
    with registered("flex_attention", dense_from_block_mask), caplog.at_level(logging.INFO, logger="autotrain"):
        finding = settle(model, dtype=dtype)
    assert finding.problem is None and finding.reference == "sdpa"
    assert finding.logp_gap < (1e-4 if dtype is None else 0.1) and finding.grad_gap < (1e-4 if dtype is None else 0.1)
    if dtype is not None:  # the same leak as below is still found in bf16
        with registered("flex_attention", leaks):
            assert settle(tiny_model(attn="flex_attention"), dtype=dtype).problem.startswith(
                "its log-probs differ from sdpa's by up to ")
    assert kernels_of(model) == {"flex_attention"} and model.training
    assert all(p.grad is None for p in model.parameters())  # the first optimizer step sees nothing of the probe
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("checked: ")]
    assert line.startswith("checked: flex_attention trains as sdpa does on the first training pair (log-prob gap ")


FAILURES = {
    "raises": (raises, "the forward pass raised (RuntimeError: CUDA error: an illegal memory access was encountered)"),
    "leaks": (leaks, "its log-probs differ from sdpa's by up to "),
    "nan gradient": (nan_backward, "its gradient is not finite"),
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_default_kernel_that_fails_gives_way_to_sdpa_for_the_whole_run(failure, caplog):
    kernel, problem = FAILURES[failure]
    model = tiny_model(attn="flex_attention")
    with registered("flex_attention", kernel), caplog.at_level(logging.WARNING, logger="autotrain"):
        finding = settle(model)
    assert finding.problem.startswith(problem)
    assert kernels_of(model) == {"sdpa"}
    assert [r.getMessage() for r in caplog.records] == [
        f"flex_attention (the default here) failed its start-up check on the first training pair: {finding.problem}; "
        "this run trains with sdpa instead (--attn-implementation chooses the kernel)"]
    if failure == "leaks":  # the measured gap is the rejected answer's tokens seeing the chosen ones
        gap, tolerance = map(float, re.search(r"by up to (\S+) \(tolerance (\S+)\)$", finding.problem).groups())
        assert gap == pytest.approx(finding.logp_gap, rel=1e-2) and gap > 10 * tolerance


def test_a_kernel_the_user_chose_is_never_swapped():
    model = tiny_model(attn="flex_attention")
    with registered("flex_attention", raises), pytest.raises(ModelError) as raised:
        settle(model, chosen=True)
    assert str(raised.value) == (
        "attn_implementation flex_attention: failed its start-up check on the first training pair: the forward pass "
        "raised (RuntimeError: CUDA error: an illegal memory access was encountered); nothing was trained (choose "
        "sdpa, or leave --attn-implementation unset)")
    assert kernels_of(model) == {"flex_attention"}


def test_the_real_flex_forward_is_checked_and_its_cpu_backward_is_the_finding():
    """transformers' own flex_attention path, uncompiled: its forward matches SDPA's on CPU; its backward raises there,
    as it would on a GPU whose flex kernel fails."""
    model = tiny_model(attn="flex_attention")
    with torch.compiler.set_stance("force_eager"):
        finding = settle(model)
    assert finding.logp_gap is not None and finding.logp_gap < 1e-4
    assert finding.problem == ("the forward and backward pass raised (NotImplementedError: FlexAttention does not "
                               "support backward on CPU)")
    assert kernels_of(model) == {"sdpa"}


def test_per_layer_type_block_masks_and_a_model_without_sdpa():
    """Gemma 2: a BlockMask per layer type (sliding and full), softcapped attention, and eager as the proven path."""
    model = windowed_model("gemma2")
    model.set_attn_implementation("flex_attention")
    with registered("flex_attention", dense_from_block_mask):
        finding = settle_kernel(model, long_pairs(seed=3)[0], EOS, True, torch.device("cpu"), False)
    assert finding.problem is None and finding.reference == "eager"
    assert finding.logp_gap < 1e-4 and finding.grad_gap < 1e-4
    with registered("flex_attention", leaks):
        finding = settle_kernel(model, long_pairs(seed=3)[0], EOS, True, torch.device("cpu"), False)
    assert finding.problem.startswith("its log-probs differ from eager's by up to ")
    assert kernels_of(model) == {"eager"}


def test_the_varlen_layout_is_probed_too():
    model = tiny_model()
    with registered("flash_attention_2", _varlen_reference):
        model.config._attn_implementation = "flash_attention_2"  # flash-attn itself cannot load without CUDA
        finding = settle(model, chosen=True)
        assert finding.problem is None and finding.logp_gap < 1e-4 and finding.grad_gap < 1e-4
        assert kernels_of(model) == {"flash_attention_2"}


# --- Whole runs -------------------------------------------------------------------------------------------------


def run_params(tmp_path: Path, model: Path, **extra) -> LLMTrainingParams:
    data = write_jsonl(tmp_path / "d.jsonl", arithmetic_pairs(4))
    return LLMTrainingParams(model=str(model), data_path=str(data), project_name=str(tmp_path / "p"), max_steps=2,
                             batch_size=2, gradient_accumulation=1, logging_steps=1, **extra)


def test_a_run_whose_flex_kernel_raises_still_trains(tmp_path, chat_model, monkeypatch, caplog):
    """The decision a CUDA machine takes (flex_attention, packed), on a machine whose flex kernel raises in backward
    (this CPU's, uncompiled); DPO, so that the reference model is loaded too, on the kernel the run settled on."""
    from autotrain import models

    monkeypatch.setattr(models, "default_attention", lambda params: "flex_attention")
    references: list[str] = []
    load_reference = models.load_reference
    monkeypatch.setattr(models, "load_reference", lambda *a, **k: references.append(
        (net := load_reference(*a, **k)).config._attn_implementation) or net)
    with torch.compiler.set_stance("force_eager"), caplog.at_level(logging.WARNING, logger="autotrain"):
        result = AutoTrainProject(run_params(tmp_path, chat_model, trainer="dpo")).create()
    assert [r.getMessage() for r in caplog.records if "start-up check" in r.getMessage()] == [
        "flex_attention (the default here) failed its start-up check on the first training pair: the forward and "
        "backward pass raised (NotImplementedError: FlexAttention does not support backward on CPU); this run trains "
        "with sdpa instead (--attn-implementation chooses the kernel)"]
    assert references == ["sdpa"]
    steps = [r for r in outputs.read_metrics(result.output_dir) if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(math.isfinite(r["loss"]) for r in steps)
    assert (result.output_dir / "model.safetensors").exists()


def test_a_chosen_kernel_that_fails_its_check_stops_the_run_before_anything_is_written(tmp_path, chat_model,
                                                                                      monkeypatch):
    from autotrain import preflight

    monkeypatch.setattr(preflight, "check_kernel_here", lambda attention: None)  # as on a CUDA machine
    with registered("flex_attention", raises), pytest.raises(ModelError) as raised:
        AutoTrainProject(run_params(tmp_path, chat_model, attn_implementation="flex_attention")).create()
    assert str(raised.value).startswith("attn_implementation flex_attention: failed its start-up check on the first "
                                        "training pair: the forward pass raised (RuntimeError: CUDA error: ")
    project = tmp_path / "p"
    assert not project.exists() or not list(project.iterdir())


def test_a_model_without_flex_keeps_sdpa_by_default(tmp_path, monkeypatch):
    """GPT-2's class has no flex_attention: asked for it at load, transformers refuses the model; by default the run
    keeps SDPA instead, while the classes that have it get it."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from autotrain import models

    monkeypatch.setattr(models, "default_attention", lambda params: "flex_attention")
    GPT2LMHeadModel(GPT2Config(vocab_size=101, n_embd=32, n_layer=1, n_head=4, n_positions=64)).save_pretrained(
        tmp_path / "gpt2")
    params = LLMTrainingParams(model=str(tmp_path / "gpt2"))
    assert models.load_model(params, str(tmp_path / "gpt2")).config._attn_implementation == "sdpa"
    llama = tiny_model()
    llama.save_pretrained(tmp_path / "llama")
    assert models.load_model(params, str(tmp_path / "llama")).config._attn_implementation == "flex_attention"


def test_every_process_takes_the_decision_of_a_finding_in_any_process():
    """Here the kernel passes, but another process's probe found a problem (its finding arrives through `gather`, as
    accelerate's gather_object hands every process all of them): this process falls back too."""
    model = tiny_model(attn="flex_attention")
    other = "its gradient is not finite"
    with registered("flex_attention", dense_from_block_mask):
        finding = settle_kernel(model, PAIR, 0, True, torch.device("cpu"), False, gather=lambda found: found + [other])
    assert finding.problem == other and kernels_of(model) == {"sdpa"}
