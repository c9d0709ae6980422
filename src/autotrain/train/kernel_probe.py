"""The start-up probe of an attention kernel whose training path only a GPU runs: flex_attention (the default on CUDA
with packing: autotrain.model.loading.default_attention) and the varlen flash kernels (flash_attention_2 / _3).

The CPU suite runs flex forward only (torch has no CPU backward for it) and varlen against a plain-torch stand-in
(autotrain.model.kernels), so on a user's GPU these kernels, their masks (a BlockMask per layer type), their compile
and the q/k/v casting wrappers (autotrain.model.kernel_dtypes) run code no test has run. Before anything trains, and
before the reference pass or the sample answers use the model, `settle_kernel` runs the run's kernel on one short row
made from the first training pair (the end of its prompt, the start of both answers), in the run's layout (the
collator autotrain.model.kernels gives this model) and precision (the run's autocast), and the proven path on the same
pair: SDPA (eager for a model without SDPA) in the padded layout. Both in eval mode (no dropout), as the head check:

1. a forward without gradients: the log-prob of every completion target; the largest difference counts;
2. a forward and backward: the gradient of the targets' summed log-prob with respect to the input embeddings, summed
   per token id (the packed row holds the prompt once, the padded rows twice: the sums are equal); the relative L2
   difference counts, and it must be finite.

A finding is an exception (a failed compile included), a difference beyond `tolerances`, or a non-finite value. A
kernel the run took by default then gives way to the proven path for the whole run, with one warning line naming the
kernel, the finding and --attn-implementation; a kernel the user named stops the run before anything is written, with
the finding (ModelError: one line, exit 2). Every process probes, and all take the decision of the first finding.
A run whose weights are sharded (FSDP, ZeRO-3) is not probed: its model cannot run whole on one device before it is
wrapped (autotrain.project).

Cost: a forward, then a forward and backward, of each of the two kernels on a row of at most 48 tokens (padded to 128
for flex); docs/model-families.md, "Attention kernels and the start-up check", has the measured share of a run. On a GPU the probe's
flex call compiles the kernel, in eval mode: transformers' flex wrapper calls torch.compile again when the model
goes to training (whether that compiles twice is for the GPU run to show: bench/kernel_probe_cost.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from typing import Any, Callable

import torch

from autotrain.batch.padded import PaddedCollator
from autotrain.errors import ModelError
from autotrain.model.dropout import eval_mode
from autotrain.model.forward import sequence_logps
from autotrain.model.kernels import PaddedFallback, make_collator
from autotrain.model.loading import unwrap
from autotrain.private import attention_of, names_attention, set_attention

logger = logging.getLogger("autotrain")

__all__ = ["PROBED", "Finding", "probe_kernel", "probe_pair", "set_kernel", "settle_kernel", "tolerances"]

# Kernels whose training path only a GPU runs; sdpa and eager train in the CPU suite.
PROBED = ("flex_attention", "flash_attention_2", "flash_attention_3")
# The probe's row: the end of the first pair's prompt and the start of each of its answers.
PROMPT_TOKENS, ANSWER_TOKENS = 16, 16


@dataclasses.dataclass(frozen=True)
class Finding:
    """What the probe found: `problem` None when the kernel passed; the gaps measured before any problem."""

    kernel: str
    reference: str
    problem: str | None
    logp_gap: float | None = None
    grad_gap: float | None = None
    seconds: float = 0.0
    skipped: str | None = None  # why the kernel could not be probed
    largest_logit: float = 0.0  # of the proven path, which the log-prob tolerance scales with


def probe_pair(feature: dict[str, Any]) -> dict[str, list[int]]:
    """The probe's pair from a training row: the last PROMPT_TOKENS of its prompt, the first ANSWER_TOKENS of each
    answer (an SFT row's rejected side stays empty)."""
    return {"prompt_ids": list(feature["prompt_ids"])[-PROMPT_TOKENS:],
            "chosen_ids": list(feature["chosen_ids"])[:ANSWER_TOKENS],
            "rejected_ids": list(feature["rejected_ids"])[:ANSWER_TOKENS]}


def tolerances(eps: float, largest_logit: float) -> tuple[float, float]:
    """(log-prob, relative gradient) differences two correct kernels may show in a precision whose eps is `eps`.

    Two kernels compute the same attention with sums in different orders, and the layouts differ (a packed row, two
    padded rows), so every layer's output differs by a few units in the last place of the compute precision; the
    logits, rounded to it, by about eps times their size, and a log-softmax moves a log-prob by at most twice its
    logits' largest change. Measured on CPU on SmolLM2-135M (30 layers, three real pairs: `python
    bench/kernel_probe_cost.py --calibrate`), eager packed and SDPA packed against SDPA padded: fp32 at most 2e-5
    (log-prob) and 5e-6 (gradient); bf16 autocast at most 0.11 (0.5 eps times 1 + the largest logit, 27 to 36 there)
    and 5.6%. The tolerances are several times those: 1e-3 + 4 eps (1 + largest logit), 0.86 to 1.17 nats there in
    bf16; 1e-3 + 32 eps, 25% in bf16, 0.1% in fp32. A kernel that computes something else moves log-probs by far
    more (a mask that lets the rejected answer see the chosen one: 2 nats on the test model); one that passes in bf16
    with a gap near its tolerance is worth a look in fp32.
    """
    return 1e-3 + 4 * eps * (1 + largest_logit), 1e-3 + 32 * eps


def _configs(model: torch.nn.Module) -> list[Any]:
    """Every config the model's modules read their attention implementation from: the model's own, and the copy a
    layer holds when autotrain.model.dropout has zeroed its dropout."""
    found: dict[int, Any] = {}
    for module in unwrap(model).modules():
        config = getattr(module, "config", None)
        if config is not None and names_attention(config):
            found.setdefault(id(config), config)
    return list(found.values())


def set_kernel(model: torch.nn.Module, name: str) -> None:
    """Run `model` with attention implementation `name` (transformers' set_attn_implementation, which checks that the
    model's class supports it); every layer's copy of the config follows."""
    unwrap(model).set_attn_implementation(name)
    for config in _configs(model):
        if attention_of(config) != name:
            set_attention(config, name)


@contextlib.contextmanager
def _running(model: torch.nn.Module, name: str) -> Iterator[None]:
    """`model` on kernel `name` inside; afterwards, exactly the kernels its configs named before (set back as they
    were: a flash kernel loaded on a GPU needs no second check)."""
    saved = [(config, attention_of(config)) for config in _configs(model)]
    set_kernel(model, name)
    try:
        yield
    finally:
        for config, value in saved:
            set_attention(config, value)


def reference_kernel(model: torch.nn.Module) -> str:
    """The proven path: SDPA, or eager for a model class without SDPA (Gemma 2, whose attention soft-caps)."""
    return "sdpa" if getattr(type(unwrap(model)), "_supports_sdpa", False) else "eager"


def _on(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _per_token(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch with each completion target a sequence of its own, so that sequence_logps' sums are per-token."""
    k = batch["target_ids"].shape[0]
    ones = torch.ones(k, dtype=torch.bool)
    return {**batch, "target_seq": torch.arange(k), "in_completion": ones, "in_nll": ones, "num_pairs": k}


class _Pass:
    """One kernel's two passes over the probe's batch: log-probs (no grad), then the per-token-id embedding gradient
    of their sum."""

    def __init__(self, model: torch.nn.Module, batch: dict[str, Any], autocast: Callable[[], Any]):
        self.model, self.batch, self.autocast = model, batch, autocast
        self.largest_logit = 0.0

    def logps(self) -> torch.Tensor:
        returned: list[torch.Tensor] = []
        handle = self.model.register_forward_hook(lambda module, args, output: returned.append(output.logits))
        try:
            with torch.no_grad(), self.autocast():
                out = sequence_logps(self.model, self.batch, own_logits=1).sums[: self.batch["num_pairs"]].float()
        finally:
            handle.remove()
        # The last position of each row; a padded row's may be padding, whose logits need not be finite.
        logits = returned[-1].float() if returned else torch.zeros(1)
        self.largest_logit = float(torch.where(torch.isfinite(logits), logits.abs(), 0.0).max())
        return out

    def gradient(self, tokens: torch.Tensor) -> torch.Tensor:
        leaves: list[torch.Tensor] = []

        def fresh_leaf(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
            # A leaf of its own: the gradient reaches it through every attention layer's backward, and no weight's
            # .grad is touched (the first optimizer step sees none of the probe).
            leaves.append(output.detach().requires_grad_(True))
            return leaves[-1]

        handle = unwrap(self.model).get_input_embeddings().register_forward_hook(fresh_leaf)
        try:
            with self.autocast():
                total = sequence_logps(self.model, self.batch).sums[: self.batch["num_pairs"]].float().sum()
        finally:
            handle.remove()
        (grad,) = torch.autograd.grad(total, leaves[0])
        width = grad.shape[-1]
        index = torch.searchsorted(tokens, self.batch["input_ids"].reshape(-1))
        return grad.new_zeros((len(tokens), width), dtype=torch.float32).index_add_(
            0, index, grad.reshape(-1, width).float())


def _failure(step: str, exc: Exception) -> str:
    """One line for an exception in a probe step; a failed compile is named as such."""
    text = " ".join(str(exc).split())
    first = text.split(". ")[0][:300]
    compiling = type(exc).__module__.startswith(("torch._dynamo", "torch._inductor"))
    return f"{step} {'failed to compile' if compiling else 'raised'} ({type(exc).__name__}: {first})"


def probe_kernel(model: torch.nn.Module, pair: dict[str, list[int]], pad_id: int, packing: bool,
                 device: torch.device, autocast_dtype: torch.dtype | None = None) -> Finding:
    """Probe the model's attention kernel against the proven path on `pair` (see the module docstring)."""
    start = time.perf_counter()
    kernel = attention_of(unwrap(model).config)
    reference = reference_kernel(model)
    collate = make_collator(packing, pad_id, prompt_loss=False, model=model)
    if isinstance(collate, PaddedFallback):  # its first-batch note on padding belongs to the run's first batch
        collate = PaddedCollator(pad_id=pad_id, prompt_loss=False)
    ours_batch = collate([pair])
    ref_batch = PaddedCollator(pad_id=pad_id, prompt_loss=False)([pair])
    if not torch.equal(ours_batch["target_ids"], ref_batch["target_ids"]):
        raise RuntimeError("the probe's two layouts list their targets in different orders")  # a layout bug
    if len(ours_batch["target_ids"]) == 0:
        return Finding(kernel, reference, None, skipped="the first training pair has no answer token to compare")
    ours = _Pass(model, _on(_per_token(ours_batch), device), lambda: _autocast(device, autocast_dtype))
    ref = _Pass(model, _on(_per_token(ref_batch), device), lambda: _autocast(device, autocast_dtype))
    tokens = torch.unique(torch.cat([ours.batch["input_ids"].reshape(-1), ref.batch["input_ids"].reshape(-1)]))
    eps = torch.finfo(autocast_dtype or torch.float32).eps
    gaps: dict[str, float] = {}

    def found(problem: str | None) -> Finding:
        return Finding(kernel, reference, problem, gaps.get("logp"), gaps.get("grad"), time.perf_counter() - start,
                       largest_logit=ref.largest_logit)

    with eval_mode(model):
        with _running(model, reference):
            if attention_of(unwrap(model).config) != reference:
                # transformers cannot switch a model whose code does not dispatch through its AttentionInterface
                # (remote code): nothing to compare with, and no way back either.
                return Finding(kernel, reference, None, seconds=time.perf_counter() - start,
                               skipped=f"{type(unwrap(model)).__name__} cannot switch its attention kernel")
            expected_logps, expected_grad = ref.logps(), ref.gradient(tokens)
        logp_tolerance, grad_tolerance = tolerances(eps, ref.largest_logit)
        try:
            logps = ours.logps()
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the kernel is the finding
            return found(_failure("the forward pass", exc))
        gaps["logp"] = float((logps - expected_logps).abs().max())
        if not gaps["logp"] <= logp_tolerance:  # NaN fails too
            return found(f"its log-probs differ from {reference}'s by up to {gaps['logp']:.3g} (tolerance "
                         f"{logp_tolerance:.2g})")
        try:
            grad = ours.gradient(tokens)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001
            return found(_failure("the forward and backward pass", exc))
        if not bool(torch.isfinite(grad).all()):
            return found("its gradient is not finite")
        gaps["grad"] = float((grad - expected_grad).norm() / expected_grad.norm().clamp(min=1e-30))
        if not gaps["grad"] <= grad_tolerance:
            return found(f"its gradient differs from {reference}'s by {gaps['grad']:.2%} (tolerance "
                         f"{grad_tolerance:.2%})")
    return found(None)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def settle_kernel(model: torch.nn.Module, feature: dict[str, Any], pad_id: int, packing: bool, device: torch.device,
                  chosen: bool, autocast_dtype: torch.dtype | None = None,
                  gather: Callable[[list[Any]], list[Any]] = lambda found: found) -> Finding | None:
    """Probe the model's kernel when it is one of PROBED; fall back or stop on a finding (module docstring).

    `chosen`: the user named the kernel (--attn-implementation); `gather` collects every process's finding so that
    all take the same decision. Returns the finding (None when the kernel needs no probe).
    """
    kernel = attention_of(unwrap(model).config)
    if kernel not in PROBED:
        return None
    finding = probe_kernel(model, probe_pair(feature), pad_id, packing, device, autocast_dtype)
    problems = [problem for problem in gather([finding.problem]) if problem]
    if problems:
        finding = dataclasses.replace(finding, problem=problems[0], skipped=None)
    if finding.skipped is not None:
        logger.warning("%s was not checked at start-up: %s", kernel, finding.skipped)
        return finding
    if finding.problem is None:
        logger.info("checked: %s trains as %s does on the first training pair (log-prob gap %.2g, gradient gap "
                    "%.2g; %.2f s)", kernel, finding.reference, finding.logp_gap, finding.grad_gap, finding.seconds)
        return finding
    if chosen:
        raise ModelError(f"attn_implementation {kernel}: failed its start-up check on the first training pair: "
                         f"{finding.problem}; nothing was trained (choose {finding.reference}, or leave "
                         "--attn-implementation unset)")
    set_kernel(model, finding.reference)
    logger.warning(f"{kernel} (the default here) failed its start-up check on the first training pair: "
                   f"{finding.problem}; this run trains with {finding.reference} instead (--attn-implementation "
                   "chooses the kernel)")
    return finding


def settle_run_kernel(params: Any, model: torch.nn.Module, feature: dict[str, Any], pad_id: int,
                      device: torch.device) -> Finding | None:
    """settle_kernel for a run of `params` (LLMTrainingParams): its layout, its precision, its processes."""
    from accelerate.utils import gather_object

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(params.mixed_precision or "")
    return settle_kernel(model, feature, pad_id, params.packing, torch.device(device), params.attention is not None,
                         dtype, gather_object)
