"""Peak memory of building one packed row's flex_attention BlockMask on CPU: torch's uncompiled create_block_mask
(the dense [R, T, T] evaluation autotrain used before) against autotrain.model.block_mask.strip_block_mask.

    python bench/block_mask_memory.py [--tokens 13312] [--way both|dense|strips]

Each way runs in a fresh child process; its peak is the growth of the resident set's high-water mark (VmHWM, reset
through /proc/self/clear_refs) over the resident set before the build, with glibc's mmap threshold fixed so that freed
buffers leave the resident set. Linux only. Results: ../BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time


def status(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) * 1024


def segments(tokens: int, seed: int = 0) -> list[int]:
    """One row like the GPU bench's 8 pairs: prompt 32-256, completions 32-512, segment ids 3k, 3k+1, 3k+2."""
    rng, out, k = random.Random(seed), [], 0
    while len(out) < tokens:
        for part, (low, high) in enumerate(((32, 256), (32, 512), (32, 512))):
            out += [3 * k + part] * rng.randint(low, high)
        k += 1
    return out[:tokens]


def child(way: str, tokens: int) -> None:
    import torch
    from torch.nn.attention.flex_attention import create_block_mask

    from autotrain.batch.packed import segment_mask_mod
    from autotrain.model.block_mask import strip_block_mask

    table = torch.tensor([segments(tokens)])
    # As autotrain's kernel module did for the dense build: int16 ids (smaller [R, T, T] temporaries).
    mask_mod = segment_mask_mod(table.to(torch.int16) if way == "dense" else table)
    # A small build first: code pages and allocator pools that any first call brings in are not the build's memory.
    warm = torch.tensor([segments(256)])
    (create_block_mask(segment_mask_mod(warm), 1, None, 256, 256, device="cpu") if way == "dense"
     else strip_block_mask(segment_mask_mod(warm), 1, 256, "cpu"))
    base = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    start = time.perf_counter()
    if way == "dense":
        mask = create_block_mask(mask_mod, 1, None, tokens, tokens, device="cpu")
    else:
        mask = strip_block_mask(mask_mod, 1, tokens, "cpu")
    seconds = time.perf_counter() - start
    peak = status("VmHWM") - base
    print(f"{way}: {tokens} tokens, peak {peak / 2**20:.1f} MiB over the RSS before, {seconds:.2f} s, "
          f"{int(mask.kv_num_blocks.sum())} partial + {int(mask.full_kv_num_blocks.sum())} full blocks", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=13312)
    parser.add_argument("--way", choices=["both", "dense", "strips"], default="both")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.way, args.tokens)
    for way in (["dense", "strips"] if args.way == "both" else [args.way]):
        # A fixed mmap threshold: every large buffer is mapped and unmapped on its own, so the high-water mark is the
        # live memory, not what glibc's heap kept from earlier iterations.
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
        subprocess.run([sys.executable, __file__, "--child", "--way", way, "--tokens", str(args.tokens)], check=True,
                       env=env)


if __name__ == "__main__":
    main()
