"""Attention kernels that only a CUDA machine trains with: refused before anything is written when the machine cannot
run them, and probed on the first training pair when it may (autotrain.trainers.clm.kernel_probe).

The CPU cannot train through flex_attention (torch has no CPU backward for it) or flash-attn, so the probe is
exercised here with kernels made to fail on purpose (raise, wrong values, a non-finite gradient), registered through
transformers' public AttentionInterface, and with the real flex_attention forward, whose CPU backward raises. A run on
CUDA takes flex_attention by default: `autotrain.models.default_attention` is the seam the tests replace to make the
same decision here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import arithmetic_pairs, write_jsonl


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
