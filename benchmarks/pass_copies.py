#!/usr/bin/env python
"""Cost of the pass pipeline: structural copies (what ``Pass.run`` does) vs a deep copy of the IR per pass.

Runs the full pipeline (fold-masks .. trim-last-layer) on a BERT-base-shaped checkpoint with soft masks (random
weights, ``prumux_compile.demo.synthetic``), side by side in interleaved rounds in one process: A = the passes as they
are, B = the same passes with a deep copy of the whole IR per pass (the previous behaviour). Prints, per pass, the
bytes of tensor storage the pass newly allocates under each scheme, and the median wall time of the whole pipeline
(ratio B / A). Usage: ``python benchmarks/pass_copies.py [--layers 12] [--hidden 768] [--rounds 3]``.
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from prumux_compile.checkpoint import load  # noqa: E402
from prumux_compile.passes import base as pass_base  # noqa: E402
from prumux_compile.passes import default_passes  # noqa: E402
from prumux_compile.passes.base import ir_tensors  # noqa: E402
from prumux_compile.demo.synthetic import SynthSpec, write_checkpoint  # noqa: E402


def _storages(ir) -> dict[int, int]:
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in ir_tensors(ir)}


def run_pipeline(ir, deep: bool) -> tuple[float, list[tuple[str, int]]]:
    """(seconds, [(pass, new storage bytes)]) of the default pipeline; ``deep`` copies the whole IR per pass."""
    real = pass_base.structural_copy
    if deep:
        pass_base.structural_copy = copy.deepcopy
    try:
        per_pass = []
        t0 = time.perf_counter()
        for p in default_passes("all"):
            before = _storages(ir)
            ir, _ = p.run(ir)
            after = _storages(ir)
            per_pass.append((p.name, sum(n for ptr, n in after.items() if ptr not in before)))
        return time.perf_counter() - t0, per_pass
    finally:
        pass_base.structural_copy = real


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    heads, ffn = args.hidden // 64, 4 * args.hidden
    with tempfile.TemporaryDirectory() as tmp:
        write_checkpoint(Path(tmp) / "ckpt", SynthSpec(
            family="prumux_masked", num_instances=2, num_layers=args.layers, hidden=args.hidden, heads=heads,
            ffn=ffn, vocab=30522, max_pos=512, num_labels=3, soft_masks=True, seed=0,
            heads_kept=[list(range(0, heads, 2))] * args.layers, ffn_kept=[list(range(ffn // 2))] * args.layers))
        ir = load(Path(tmp) / "ckpt", seq_len=128)
    total = sum(t.untyped_storage().nbytes() for t in ir_tensors(ir))
    times = {"structural": [], "deep": []}
    per = {}
    for _ in range(args.rounds):  # interleaved: A B A B ...
        for name in ("structural", "deep"):
            t, per[name] = run_pipeline(ir, deep=name == "deep")
            times[name].append(t)
    print(f"IR tensors: {total / 2**20:.0f} MiB ({args.layers} layers, hidden {args.hidden}, soft masks, N=2)")
    print(f"{'pass':<22} {'structural MiB':>15} {'deep copy MiB':>14}")
    for (name, a), (_, b) in zip(per["structural"], per["deep"]):
        print(f"{name:<22} {a / 2**20:>15.1f} {b / 2**20:>14.1f}")
    sa = sum(n for _, n in per["structural"])
    sb = sum(n for _, n in per["deep"])
    ma, mb = np.median(times["structural"]), np.median(times["deep"])
    print(f"{'total':<22} {sa / 2**20:>15.1f} {sb / 2**20:>14.1f}   (deep / structural: {sb / max(sa, 1):.1f}x bytes)")
    print(f"pipeline wall time, median of {args.rounds} interleaved rounds: structural {ma:.2f} s, deep copy "
          f"{mb:.2f} s -> deep / structural = {mb / ma:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
