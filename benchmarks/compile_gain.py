"""Compile gain on CPU: eager PyTorch (the research-code stand-in) vs our ONNX graphs on ONNX Runtime.

Contenders, side by side in one process with the same thread count (default 2), timed in interleaved rounds
(``prumux_compile.bench.timing.interleaved``: A B C A B C ..., median of >= 5 rounds), batch 8·N rows at
sequence length 128:

* ``eager``  : ``build_module(compile_ir(ir, "pruning")[0])`` in fp32 under ``torch.no_grad()`` -- the
  physically pruned, unfused model, i.e. what upstream's evaluation.py runs (minus its per-layer syncs);
* ``onnx``   : ``model.onnx`` (standard ops; every IR pass incl. fuse-mux / fuse-demux / fold-attention-scale /
  trim-last-layer) on ONNX Runtime CPU;
* ``onnx-noskip``: ``model.onnx`` with ORT's session-level ``SkipLayerNormFusion`` disabled (one of the
  variants the ``ort-cpu`` engine measures at build time);
* ``ort``    : ``model.ort.onnx`` (the same graph after ORT transformer fusions) on ONNX Runtime CPU.

Checkpoints: BERT-base-shaped random-weight checkpoints written with ``prumux_compile.synthetic`` into a
temporary directory (12 layers, hidden 768, 12 heads of 64, FFN 3072): N = 1 (family ``bert`` at sparsity 0,
``cofi_compressed`` otherwise) and ``prumux_compressed`` with N in {2, 5}, at CoFi sparsity targets
{0, 0.6, 0.9} (docs/checkpoint-formats.md §6: remaining = 4·dh·Σh_i·d' + 2·Σf_i·d' over prunable =
L·(4d²+4d) + L·(2dF+5d)); kept heads per layer = round(12·(1-s)) (>= 1) and the FFN width solving the count
(uniform over layers). With ``--demo DIR``: also every compressed checkpoint of a MiniLM demo grid
(``prumux-compile demo-checkpoints``).

Columns: sequences/s of each contender, speedup over eager of each graph and of the fastest ("engine"), GFLOP
per batch and achieved GFLOP/s of the fastest graph, and that rate as a fraction of an ONNX Runtime 2048³ fp32
MatMul timed as one more contender in the same interleaved rounds (same threads, same minute of machine time).
FLOPs are counted from the IR each contender runs: 2·MACs of every GEMM (Q/K/V/output projections, attention
scores and context, FFN, ortho mux, demux, pooler, classifier); elementwise ops, LayerNorm, softmax and GELU are
not counted.

Targets (reported, not asserted): ORT engine >= 2.5x eager for BERT-base-shaped N=2 s=0.6; unpruned BERT-base
engine >= 90 % of the MatMul rate. ``--profile`` adds an ONNX Runtime profile (time per op type) of the plain
graph for the N=2 s=0.6 configuration.

Usage: ``python benchmarks/compile_gain.py [--quick] [--demo DIR] [--threads 2] [--rounds 5] [--json OUT]``.
``--quick`` runs N=1 s=0 and N=2 s=0.6 only. Runtime on 2 cores: about 6-8 min full, 2 min quick.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from prumux_compile.bench.timing import environment, interleaved
from prumux_compile.checkpoint import from_raw, read_raw
from prumux_compile.engines.onnxruntime import OrtRunner
from prumux_compile.export.inputs import realistic_inputs
from prumux_compile.export.onnx_export import check_onnx, export_onnx
from prumux_compile.export.spec import spec_for_ir
from prumux_compile.kernels import build_module
from prumux_compile.passes import compile_ir
from prumux_compile.passes.onnx import ort_fuse
from prumux_compile.synthetic import SynthSpec, write_checkpoint

SEQ = 128
BASE = dict(num_layers=12, hidden=768, heads=12, ffn=3072, vocab=30522, max_pos=512, num_labels=3)
FULL_GRID = [(1, 0.0), (1, 0.6), (1, 0.9), (2, 0.0), (2, 0.6), (2, 0.9), (5, 0.0), (5, 0.6), (5, 0.9)]
QUICK_GRID = [(1, 0.0), (2, 0.6)]
MATMUL_N = 2048


# ---------------------------------------------------------------------------------------------- FLOPs
def gemm_flops(ir, batch: int, seq: int) -> int:
    """2·MACs of every GEMM of one forward of ``ir`` on ``batch`` input rows of ``seq`` tokens.

    Multiplexed models run ``G = ceil(batch / N)`` groups at the compiled length (+ N + 1 prefix tokens for the
    index demux); N = 1 models run ``batch`` rows at ``seq``. A layer with ``out_rows = k`` (trim-last-layer)
    computes queries, attention output and FFN for the first k positions only.
    """
    n = ir.num_instances
    d = ir.hidden
    dh = ir.head_size
    if ir.is_muxed:
        rows = math.ceil(batch / n)
        length = ir.seq_len + (n + 1 if ir.demux.variant == "index" else 0)
    else:
        rows, length = batch, seq
    total = 0
    if ir.is_muxed and ir.mux.variant == "random_ortho":
        total += 2 * rows * n * length * d * d
    cur = length
    for layer in ir.layers:
        q = layer.out_rows or cur
        a, f = layer.attention, layer.ffn
        if a is not None and a.heads_kept > 0:
            w = a.heads * dh
            total += 2 * rows * (2 * cur + q) * d * w      # K, V on every position, Q on the kept ones
            total += 2 * 2 * rows * a.heads * q * cur * dh  # scores and context
            total += 2 * rows * q * w * d                   # output projection
        if f is not None and f.dims_kept > 0:
            total += 2 * 2 * rows * q * d * f.dims
        cur = q
    if ir.is_muxed:
        for name, t in ir.demux.tensors.items():
            if t.dim() != 2 or name.endswith((".const", "demux_instance_embedding")):
                continue
            # applied once per mux group: fused shared halves, and the mlp demux's per-instance dense_n
            per_group = (name.endswith((".shared", ".right")) or name == "dense_all.weight"
                         or (ir.demux.variant == "mlp" and re.fullmatch(r"dense_\d+\.weight", name) is not None))
            total += 2 * (rows if per_group else rows * n) * int(t.shape[0]) * int(t.shape[1])
        total += 2 * rows * n * int(ir.classifier[0].numel())
    else:
        total += 2 * rows * int(ir.pooler[0].numel()) + 2 * rows * int(ir.classifier[0].numel())
    return int(total)


# ---------------------------------------------------------------------------------------------- structure
def uniform_structure(target: float, layers: int = 12, heads: int = 12, ffn: int = 3072, hidden: int = 768,
                      dh: int = 64):
    """Heads / FFN dims kept per layer (uniform) hitting CoFi sparsity ``target`` (docs/checkpoint-formats.md §6 count)."""
    if target <= 0:
        return None, None
    prunable = layers * (4 * hidden * hidden + 4 * hidden) + layers * (2 * hidden * ffn + 5 * hidden)
    per_layer = (1.0 - target) * prunable / layers
    h = max(1, min(heads, round(heads * (1.0 - target))))
    f = int(round((per_layer - 4 * dh * h * hidden) / (2 * hidden)))
    f = max(1, min(ffn, f))
    return [list(range(h))] * layers, [list(range(f))] * layers


# ---------------------------------------------------------------------------------------------- MatMul peak
class MatMulProbe:
    """One ONNX Runtime fp32 MatMul [2048, 2048] x [2048, 2048] session; calling it runs the product once.

    Timed as a fourth contender inside every configuration's interleaved rounds, so the machine's drift hits
    it and the model alike (the host is shared and noisy).
    """

    flops = 2 * MATMUL_N ** 3

    def __init__(self, threads: int):
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        rng = np.random.default_rng(0)
        b = numpy_helper.from_array(rng.standard_normal((MATMUL_N, MATMUL_N), dtype=np.float32), "B")
        graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], "mm",
                                  [helper.make_tensor_value_info("A", TensorProto.FLOAT, [MATMUL_N, MATMUL_N])],
                                  [helper.make_tensor_value_info("C", TensorProto.FLOAT, [MATMUL_N, MATMUL_N])], [b])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model.SerializeToString(), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        self.a = rng.standard_normal((MATMUL_N, MATMUL_N), dtype=np.float32)

    def __call__(self):
        return self.session.run(None, {"A": self.a})

    def gflops(self, p50_ms: float) -> float:
        return self.flops / (p50_ms / 1000) / 1e9


# ---------------------------------------------------------------------------------------------- one config
def run_checkpoint(label: str, ckpt: Path, work: Path, args, sparsity: float | None,
                   matmul: MatMulProbe) -> dict:
    raw = read_raw(ckpt)
    ir = from_raw(raw, seq_len=SEQ)
    eager_ir, _ = compile_ir(ir, "pruning")
    fast_ir, _ = compile_ir(ir, "all")
    n = ir.num_instances
    batch = 8 * n
    eager = build_module(eager_ir)
    spec = spec_for_ir(fast_ir)
    t0 = time.perf_counter()
    export_onnx(build_module(fast_ir), spec, work / "model.onnx")
    check_onnx(work / "model.onnx", spec)
    t_export = time.perf_counter() - t0
    t0 = time.perf_counter()
    fusion = ort_fuse(work / "model.onnx", work / "model.ort.onnx", layer_heads=list(spec.layer_heads))
    t_fuse = time.perf_counter() - t0
    del ir
    feeds = realistic_inputs(batch, SEQ, spec.vocab_size, seed=0, type_vocab_size=spec.type_vocab_size)
    tfeeds = tuple(torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
    plain = OrtRunner(work / "model.onnx", spec, threads=args.threads)
    fused = OrtRunner(work / "model.ort.onnx", spec, threads=args.threads)
    noskip = OrtRunner(work / "model.onnx", spec, threads=args.threads, disabled_optimizers=("SkipLayerNormFusion",))

    def run_eager():
        with torch.no_grad():
            return eager(*tfeeds)

    outs = {"eager": run_eager().numpy(), "onnx": plain.run(feeds)["logits"], "ort": fused.run(feeds)["logits"],
            "onnx-noskip": noskip.run(feeds)["logits"]}
    delta = max(float(np.abs(outs[k] - outs["eager"]).max()) for k in ("onnx", "onnx-noskip", "ort"))
    t0 = time.perf_counter()
    timings = interleaved({"eager": run_eager, "onnx": lambda: plain.run(feeds),
                           "onnx-noskip": lambda: noskip.run(feeds), "ort": lambda: fused.run(feeds),
                           "matmul": matmul}, batch_size=batch, seq_len=SEQ, warmup=1, rounds=args.rounds)
    t_time = time.perf_counter() - t0
    if args.profile and label == "bert-base N=2 s=0.60":
        profile_ops(work / "model.onnx", feeds, args.threads)
    sps = {k: t.throughput for k, t in timings.items()}
    best = max(("onnx", "onnx-noskip", "ort"), key=lambda k: sps[k])
    flops = gemm_flops(fast_ir, batch, SEQ)
    engine_gflops = flops / (timings[best].p50_ms / 1000) / 1e9
    row = {
        "checkpoint": label, "N": n, "sparsity": sparsity, "batch": batch, "seq": SEQ,
        "eager_seq_s": sps["eager"], "onnx_seq_s": sps["onnx"], "onnx_noskip_seq_s": sps["onnx-noskip"],
        "ort_seq_s": sps["ort"],
        "speedup_onnx": sps["onnx"] / sps["eager"], "speedup_ort": sps["ort"] / sps["eager"],
        "engine": best, "engine_speedup": sps[best] / sps["eager"],
        "gflop_per_batch": flops / 1e9, "engine_gflops": engine_gflops,
        "peak_fraction": engine_gflops / matmul.gflops(timings["matmul"].p50_ms),
        "eager_gflop_per_batch": gemm_flops(eager_ir, batch, SEQ) / 1e9,
        "max_abs_delta_vs_eager": delta, "export_s": t_export, "fuse_s": t_fuse, "timing_s": t_time,
        "fused_attention_layers": f"{len(fusion.fused_attention)}/{len(fusion.expected_attention)}",
        "matmul_gflops": matmul.gflops(timings["matmul"].p50_ms),
        "p50_ms": {k: t.p50_ms for k, t in timings.items()},
    }
    for r in (plain, noskip, fused):
        r.close()
    return row


def profile_ops(path: Path, feeds: dict, threads: int, runs: int = 3) -> None:
    """Print ONNX Runtime's profile of ``path``: share of kernel time per op type."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.enable_profiling = True
    opts.profile_file_prefix = str(path.with_suffix(""))
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        sess.run(None, feeds)
    prof = Path(sess.end_profiling())
    per_op: dict[str, float] = {}
    for ev in json.loads(prof.read_text()):
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            op = ev.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + ev.get("dur", 0) / 1000.0
    total = sum(per_op.values()) or 1.0
    print(f"\nORT profile of {path.name} ({runs} runs): kernel time per op type", file=sys.stderr)
    for op, ms in sorted(per_op.items(), key=lambda x: -x[1])[:10]:
        print(f"  {op:<28} {ms / runs:9.1f} ms/run  {100 * ms / total:5.1f} %", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- output
COLUMNS = [("checkpoint", "checkpoint", "{}"), ("N", "N", "{}"), ("sparsity", "s", "{:.2f}"),
           ("eager_seq_s", "eager seq/s", "{:.1f}"), ("onnx_seq_s", "onnx seq/s", "{:.1f}"),
           ("onnx_noskip_seq_s", "noskip seq/s", "{:.1f}"), ("ort_seq_s", "ort seq/s", "{:.1f}"),
           ("speedup_onnx", "onnx x", "{:.2f}"), ("speedup_ort", "ort x", "{:.2f}"),
           ("engine_speedup", "engine x", "{:.2f}"), ("gflop_per_batch", "GFLOP/batch", "{:.1f}"),
           ("engine_gflops", "GFLOP/s", "{:.0f}"), ("matmul_gflops", "MatMul GFLOP/s", "{:.0f}"),
           ("peak_fraction", "% MatMul", "{:.0%}"),
           ("max_abs_delta_vs_eager", "max|Δ|", "{:.1e}")]


def print_table(rows: list[dict], threads: int) -> None:
    title = (f"compile gain, CPU, {threads} threads, seq {SEQ}, batch 8·N, medians of interleaved rounds "
             f"(eager | onnx | onnx-noskip | ort | ORT MatMul {MATMUL_N}³)")
    cells = [[("-" if r.get(k) is None else fmt.format(r[k])) for k, _, fmt in COLUMNS] for r in rows]
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for _, head, _ in COLUMNS:
            table.add_column(head, justify="left" if head == "checkpoint" else "right")
        for c in cells:
            table.add_row(*c)
        Console(width=200).print(table)
    except ImportError:
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h, _) in enumerate(COLUMNS)]
        print(title)
        print("  ".join(h.rjust(w) for (_, h, _), w in zip(COLUMNS, widths)))
        for c in cells:
            print("  ".join(x.rjust(w) for x, w in zip(c, widths)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N=1 s=0 and N=2 s=0.6 only")
    ap.add_argument("--demo", type=Path, default=None, help="a MiniLM demo grid directory (grid.json)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    ap.add_argument("--profile", action="store_true", help="ORT op-type profile of N=2 s=0.6")
    ap.add_argument("--no-bert-base", action="store_true", help="only the --demo grid")
    args = ap.parse_args(argv)
    if args.rounds < 5:
        ap.error("--rounds must be >= 5")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    matmul = MatMulProbe(args.threads)
    rows = []
    if args.demo is not None:
        grid = json.loads((args.demo / "grid.json").read_text())
        for entry in grid["checkpoints"]:
            if entry.get("masked"):
                continue
            with tempfile.TemporaryDirectory(prefix="prumux-bench-") as tmp:
                rows.append(run_checkpoint(f"minilm {entry['name']}", args.demo / entry["name"], Path(tmp), args,
                                           entry.get("sparsity"), matmul))
            print(f"done {rows[-1]['checkpoint']} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    if not args.no_bert_base:
        for n, target in (QUICK_GRID if args.quick else FULL_GRID):
            family = ("bert" if target == 0 else "cofi_compressed") if n == 1 else "prumux_compressed"
            heads_kept, ffn_kept = uniform_structure(target)
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="prumux-bench-") as tmp:
                spec = SynthSpec(family=family, num_instances=n, heads_kept=heads_kept, ffn_kept=ffn_kept, **BASE)
                info = write_checkpoint(Path(tmp) / "ckpt", spec)
                t_write = time.perf_counter() - t0
                rows.append(run_checkpoint(f"bert-base N={n} s={target:.2f}", info.path, Path(tmp), args,
                                           info.sparsity, matmul))
            r = rows[-1]
            print(f"done {r['checkpoint']} at {time.perf_counter() - start:.0f} s (write {t_write:.0f} s, export "
                  f"{r['export_s']:.0f} s, fuse {r['fuse_s']:.0f} s, timing {r['timing_s']:.0f} s)", file=sys.stderr)
    print_table(rows, args.threads)
    target = next((r for r in rows if r["checkpoint"] == "bert-base N=2 s=0.60"), None)
    base = next((r for r in rows if r["checkpoint"] == "bert-base N=1 s=0.00"), None)
    if target:
        print(f"target engine >= 2.5x eager (BERT-base N=2 s=0.6): {target['engine_speedup']:.2f}x "
              f"({'met' if target['engine_speedup'] >= 2.5 else 'MISSED'})")
    if base:
        print(f"target unpruned BERT-base engine >= 90% of MatMul: {base['peak_fraction']:.0%} "
              f"({'met' if base['peak_fraction'] >= 0.9 else 'MISSED'})")
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "threads": args.threads,
                                         "environment": environment()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
