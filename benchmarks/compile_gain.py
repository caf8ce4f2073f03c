"""Compile gain on the CPU, per precision: eager PyTorch vs every engine variant, side by side.

Contenders, in one process with the same thread count (default 2), timed in interleaved rounds
(``prumux_compile.bench.timing.interleaved``: A B C ... A B C ..., median of the rounds), batch 8·N rows at sequence
length 128 — every variant is its own column, nothing is a best-of taken after the fact:

* ``eager``: ``build_module(compile_ir(ir, "pruning")[0])`` in fp32 under ``torch.no_grad()`` — the physically
  pruned, unfused model, i.e. what upstream's evaluation.py runs (minus its per-layer syncs);
* ``ort fp32``: ``model.onnx`` on ONNX Runtime (``plain``), the same with the session's SkipLayerNormFusion off
  (``noskip``) and ``model.ort.onnx`` after ORT's transformer fusions (``fused``) — the variants the ``ort-cpu``
  engine measures at build time;
* ``ort int8``: the int8 forms the ``ort-cpu`` engine builds (:mod:`prumux_compile.engines.ort_int8`: ONNX
  Runtime dynamic quantization of ``model.onnx`` (``dyn``) and of ``model.ort.onnx`` (``dyn-fused``), static QDQ
  (``static``, calibrated on 16 rows of the benchmark's random-token inputs));
* ``ov fp32`` / ``ov bf16``: the OpenVINO IR of the ``openvino`` engine at f32 / bf16 inference precision;
  ``ov int8``: the ``openvino`` engine's int8 IR (NNCF post-training quantization, 16 calibration rows) where
  ``nncf`` is installed;
* ``matmul``: an ONNX Runtime 2048³ fp32 MatMul, the machine-drift anchor of every cell.

Checkpoints: BERT-base-shaped random-weight checkpoints written with ``prumux_compile.demo.synthetic`` into a
temporary directory (12 layers, hidden 768, 12 heads of 64, FFN 3072): N = 1 (``bert`` at s = 0,
``cofi_compressed`` otherwise) and ``prumux_compressed`` for N > 1, at CoFi sparsity targets s
(docs/checkpoint-formats.md §6 count; kept heads per layer round(12·(1-s)) >= 1, the FFN width solving the count,
uniform over
layers). Grids: ``--grid full`` N ∈ {1, 2, 5, 10} × s ∈ {0, 0.6, 0.8, 0.9, 0.95} (20 cells), ``--grid quick``
(N=1 s=0, N=2 s=0.6, N=10 s=0.95).

Columns per cell: seq/s of every contender; each engine's speedup over the eager model of the same checkpoint;
GFLOP per batch (2·MACs of every GEMM, counted from the IR each contender runs: Q/K/V/output projections, attention
scores and context, FFN, ortho mux, demux, pooler, classifier; elementwise ops, LayerNorm, softmax and GELU are not
counted); the FLOP ratio of BERT-base to the cell; and per precision column (``ort fp32 plain``, ``ort int8 dyn``,
``ov fp32``, ``ov bf16``) the FLOP-ratio efficiency = (cell seq/s / BERT-base seq/s of the same column) / FLOP
ratio. Cross-cell ratios (efficiency, "x eager BERT-base") are measured minutes apart on a shared machine, so they
are shown divided by the drift of the MatMul anchor timed in both cells' rounds, and raw in parentheses (the
compute-bound anchor and a memory-bound sparse model do not slow down alike under load: the truth lies between).

Targets (reported, not asserted; README "Benchmark"): BERT-base's best CPU engine >= 3x its eager forward; PruMUX
N=10 s=0.95's best CPU engine >= 300x the eager BERT-base forward; every cell >= 85 % FLOP-ratio efficiency at the
same precision. ``--profile`` prints where N=10 s=0.95's time goes: ONNX Runtime's time per op type (plain fp32
graph) and OpenVINO's per-layer counters (bf16), grouped by layer type and kernel.

Usage: ``python benchmarks/compile_gain.py [--grid quick|full] [--demo DIR] [--threads 2] [--rounds 5]
[--profile] [--json OUT] [--markdown]``; ``--from-json OUT`` prints the table of a saved (or partial) run again.
Runtime on 2 shared cores: quick about 8 min, full about 60 min.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import time
import importlib.util
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
from prumux_compile.demo.synthetic import SynthSpec, write_checkpoint

SEQ = 128
BASE = dict(num_layers=12, hidden=768, heads=12, ffn=3072, vocab=30522, max_pos=512, num_labels=3)
GRIDS = {
    "full": [(n, s) for n in (1, 2, 5, 10) for s in (0.0, 0.6, 0.8, 0.9, 0.95)],
    "quick": [(1, 0.0), (2, 0.6), (10, 0.95)],
}
MATMUL_N = 2048
#: The precision columns whose FLOP-ratio efficiency is reported (one variant each, named).
PRECISION_COLUMNS = {"ort fp32": "ort-fp32-plain", "ort int8": "ort-int8-dyn", "ov fp32": "ov-fp32",
                     "ov bf16": "ov-bf16", "ov int8": "ov-int8"}
ENGINES = ("ort-fp32-plain", "ort-fp32-noskip", "ort-fp32-fused", "ort-int8-dyn", "ort-int8-dyn-fused",
           "ort-int8-static", "ov-fp32", "ov-bf16", "ov-int8")


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


# ---------------------------------------------------------------------------------------------- MatMul anchor
class MatMulProbe:
    """One ONNX Runtime fp32 MatMul [2048, 2048] x [2048, 2048] session; calling it runs the product once.

    Timed as one more contender inside every cell's interleaved rounds, so the machine's drift hits it and the
    engines alike; cross-cell ratios are divided by its drift.
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


# ---------------------------------------------------------------------------------------------- one cell
def _engines(work: Path, spec, feeds: dict, threads: int, ov_ok: bool) -> dict:
    """Every engine variant of the cell's ``model.onnx`` (label -> runner)."""
    from prumux_compile.engines.ort_int8 import quantize_graph

    ort_fuse(work / "model.onnx", work / "model.ort.onnx", layer_heads=list(spec.layer_heads))
    calib = {k: v[:16] for k, v in realistic_inputs(16, SEQ, spec.vocab_size, seed=3,
                                                     type_vocab_size=spec.type_vocab_size).items()}
    for form, src in (("int8-dynamic", "model.onnx"), ("int8-dynamic-fused", "model.ort.onnx"),
                      ("int8-static", "model.onnx")):
        quantize_graph(form, work / src, work / f"model.{form}.onnx", calibration=calib, batch=8)
    r = {"ort-fp32-plain": OrtRunner(work / "model.onnx", spec, threads=threads),
         "ort-fp32-noskip": OrtRunner(work / "model.onnx", spec, threads=threads,
                                      disabled_optimizers=("SkipLayerNormFusion",)),
         "ort-fp32-fused": OrtRunner(work / "model.ort.onnx", spec, threads=threads),
         "ort-int8-dyn": OrtRunner(work / "model.int8-dynamic.onnx", spec, threads=threads),
         "ort-int8-dyn-fused": OrtRunner(work / "model.int8-dynamic-fused.onnx", spec, threads=threads),
         "ort-int8-static": OrtRunner(work / "model.int8-static.onnx", spec, threads=threads)}
    if ov_ok:
        import openvino as ov

        from prumux_compile.engines.openvino import OpenVinoRunner

        ov.save_model(ov.Core().read_model(str(work / "model.onnx")), str(work / "model.xml"), compress_to_fp16=False)
        r["ov-fp32"] = OpenVinoRunner(work / "model.xml", spec, precision="fp32", threads=threads)
        r["ov-bf16"] = OpenVinoRunner(work / "model.xml", spec, precision="bf16", threads=threads)
        if importlib.util.find_spec("nncf") is not None:  # the openvino engine's int8 (NNCF), as it builds it
            from prumux_compile.engines.base import EngineConfig
            from prumux_compile.engines.openvino import OpenVinoBackend

            (work / "ov-int8").mkdir()
            art = OpenVinoBackend().build(work / "model.onnx", EngineConfig(precision="int8", threads=threads,
                                                                            out_dir=work / "ov-int8",
                                                                            options={"calibration": calib}))
            r["ov-int8"] = OpenVinoBackend().load(art)
    return r


def run_cell(label: str, ckpt: Path, work: Path, args, sparsity: float | None, matmul: MatMulProbe,
             ov_ok: bool) -> dict:
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
    feeds = realistic_inputs(batch, SEQ, spec.vocab_size, seed=0, type_vocab_size=spec.type_vocab_size)
    runners = _engines(work, spec, feeds, args.threads, ov_ok)
    t_prep = time.perf_counter() - t0
    del ir
    tfeeds = tuple(torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))

    def run_eager():
        with torch.no_grad():
            return eager(*tfeeds)

    ref = run_eager().numpy().astype(np.float64)
    delta = {k: float(np.abs(r.run(feeds)["logits"] - ref).max()) for k, r in runners.items()}
    t0 = time.perf_counter()
    timings = interleaved({"eager": run_eager, **{k: (lambda r=r: r.run(feeds)) for k, r in runners.items()},
                           "matmul": matmul}, batch_size=batch, seq_len=SEQ, warmup=1, rounds=args.rounds)
    t_time = time.perf_counter() - t0
    for r in runners.values():
        r.close()
    sps = {k: t.throughput for k, t in timings.items()}
    flops = gemm_flops(fast_ir, batch, SEQ)
    return {
        "checkpoint": label, "N": n, "sparsity": sparsity, "batch": batch, "seq": SEQ,
        "seq_s": sps, "p50_ms": {k: t.p50_ms for k, t in timings.items()},
        "latencies_ms": {k: t.latencies_ms for k, t in timings.items()},
        "speedup_vs_eager": {k: sps[k] / sps["eager"] for k in runners},
        "gflop_per_batch": flops / 1e9, "gflop_per_seq": flops / 1e9 / batch,
        "eager_gflop_per_seq": gemm_flops(eager_ir, batch, SEQ) / 1e9 / batch,
        "max_abs_delta_vs_eager": delta, "max_abs_logit": float(np.abs(ref).max()),
        "matmul_gflops": matmul.gflops(timings["matmul"].p50_ms), "prep_s": t_prep, "timing_s": t_time,
    }


def add_ratios(rows: list[dict]) -> None:
    """FLOP ratio, FLOP-ratio efficiency per precision column and x-eager-BERT-base, relative to the BERT-base
    cell (N=1, s=0), divided by the MatMul anchor's drift between the two cells (raw values kept)."""
    base = next((r for r in rows if r["N"] == 1 and (r["sparsity"] or 0) < 0.01), None)
    if base is None:
        return
    for r in rows:
        drift = r["matmul_gflops"] / base["matmul_gflops"]
        r["drift_vs_base"] = drift
        r["flop_ratio"] = base["gflop_per_seq"] / r["gflop_per_seq"]
        r["efficiency"], r["efficiency_raw"], r["x_eager_base"] = {}, {}, {}
        for col, key in PRECISION_COLUMNS.items():
            if key in r["seq_s"] and key in base["seq_s"]:
                raw = (r["seq_s"][key] / base["seq_s"][key]) / r["flop_ratio"]
                r["efficiency_raw"][col] = raw
                r["efficiency"][col] = raw / drift
        for key in r["seq_s"]:
            if key != "matmul":
                r["x_eager_base"][key] = r["seq_s"][key] / base["seq_s"]["eager"] / drift


def best_engine(row: dict) -> str:
    """The fastest engine variant of a cell (for the targets only; every variant is a column)."""
    return max((k for k in row["seq_s"] if k not in ("eager", "matmul")), key=lambda k: row["seq_s"][k])


# ---------------------------------------------------------------------------------------------- profile
def profile(ckpt: Path, work: Path, threads: int, ov_ok: bool, runs: int = 3) -> dict:
    """Where the time of one forward goes: ONNX Runtime kernel time per op type of the plain fp32 graph, and
    OpenVINO's per-layer counters at bf16 grouped by (layer type, kernel). Shares of the total, in percent."""
    import onnxruntime as ort

    raw = read_raw(ckpt)
    fast_ir, _ = compile_ir(from_raw(raw, seq_len=SEQ), "all")
    spec = spec_for_ir(fast_ir)
    export_onnx(build_module(fast_ir), spec, work / "model.onnx")
    feeds = realistic_inputs(8 * spec.num_instances, SEQ, spec.vocab_size, seed=0, type_vocab_size=2)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.enable_profiling = True
    opts.profile_file_prefix = str(work / "ort-profile")
    sess = ort.InferenceSession(str(work / "model.onnx"), sess_options=opts, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    for _ in range(runs):
        sess.run(None, {k: v for k, v in feeds.items() if k in names})
    per_op: dict[str, float] = {}
    mux: float = 0.0
    for ev in json.loads(Path(sess.end_profiling()).read_text()):
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            op = ev.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + ev.get("dur", 0) / 1000.0 / runs
            if ev["name"].startswith("/embed/"):
                mux += ev.get("dur", 0) / 1000.0 / runs
    out = {"ort_ms_per_op": per_op, "ort_multiplexer_ms": mux}
    if ov_ok:
        from prumux_compile.engines.openvino import OpenVinoRunner

        with OpenVinoRunner(work / "model.onnx", spec, precision="bf16", threads=threads, perf_counters=True) as r:
            for _ in range(runs):
                r.run(feeds)
            per: dict[str, float] = {}
            for p in r.profile():
                key = f"{p['type']} [{p['exec_type']}]"
                per[key] = per.get(key, 0.0) + p["us"] / 1000.0
        out["ov_bf16_ms_per_layer_type"] = per
    return out


def print_profile(prof: dict) -> None:
    for title, key in (("ONNX Runtime fp32 (plain graph), kernel time per op type", "ort_ms_per_op"),
                       ("OpenVINO bf16, per-layer counters by (type [kernel])", "ov_bf16_ms_per_layer_type")):
        if key not in prof:
            continue
        total = sum(prof[key].values()) or 1.0
        print(f"\n{title}: total {total:.1f} ms")
        for op, ms in sorted(prof[key].items(), key=lambda x: -x[1])[:12]:
            print(f"  {op:<44} {ms:8.2f} ms  {100 * ms / total:5.1f} %")
    if "ort_multiplexer_ms" in prof:
        total = sum(prof["ort_ms_per_op"].values()) or 1.0
        print(f"  multiplexer (/embed/*, all B·S tokens): {prof['ort_multiplexer_ms']:.1f} ms = "
              f"{100 * prof['ort_multiplexer_ms'] / total:.1f} % of ONNX Runtime's kernel time")


# ---------------------------------------------------------------------------------------------- output
def table_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Markdown-ready header and cells: seq/s per variant, speedups, FLOP ratio and efficiencies."""
    engines = [e for e in ENGINES if any(e in r["seq_s"] for r in rows)]
    head = (["N", "s", "eager"] + engines + ["best x eager", "GFLOP/seq", "FLOP ratio"]
            + [f"eff {c} (raw)" for c in PRECISION_COLUMNS] + ["best x eager BERT-base (raw)"])
    cells = []
    for r in rows:
        best = best_engine(r)
        cell = [str(r["N"]), f"{r['sparsity']:.2f}", f"{r['seq_s']['eager']:.1f}"]
        cell += [f"{r['seq_s'][e]:.1f}" if e in r["seq_s"] else "-" for e in engines]
        cell += [f"{r['speedup_vs_eager'][best]:.2f}x ({best})", f"{r['gflop_per_seq']:.2f}",
                 f"{r.get('flop_ratio', float('nan')):.1f}"]
        cell += [f"{r['efficiency'][c]:.0%} ({r['efficiency_raw'][c]:.0%})" if c in r.get("efficiency", {}) else "-"
                 for c in PRECISION_COLUMNS]
        cell += [f"{r['x_eager_base'][best]:.0f}x ({r['x_eager_base'][best] * r['drift_vs_base']:.0f}x)"
                 if "x_eager_base" in r else "-"]
        cells.append(cell)
    return head, cells


def print_table(rows: list[dict], threads: int, markdown: bool = False) -> None:
    head, cells = table_rows(rows)
    title = (f"compile gain, CPU, {threads} threads, seq {SEQ}, batch 8·N, medians of interleaved rounds; seq/s per "
             "variant; eff = FLOP-ratio efficiency vs BERT-base in the same column (MatMul-drift corrected)")
    if markdown:
        print(title)
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for c in cells:
            print("| " + " | ".join(c) + " |")
        return
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    print(title)
    print("  ".join(h.rjust(w) for h, w in zip(head, widths)))
    for c in cells:
        print("  ".join(x.rjust(w) for x, w in zip(c, widths)))


def print_targets(rows: list[dict]) -> None:
    base = next((r for r in rows if r["N"] == 1 and (r["sparsity"] or 0) < 0.01), None)
    top = next((r for r in rows if r["N"] == 10 and abs((r["sparsity"] or 0) - 0.95) < 0.02), None)
    if base:
        b = best_engine(base)
        x = base["speedup_vs_eager"][b]
        print(f"target BERT-base best CPU engine >= 3x eager: {x:.2f}x ({b}) {'met' if x >= 3 else 'MISSED'}")
    if top and "x_eager_base" in top:
        b = best_engine(top)
        x = top["x_eager_base"][b]
        print(f"target PruMUX N=10 s=0.95 >= 300x eager BERT-base: {x:.0f}x ({b}; raw {x * top['drift_vs_base']:.0f}x) "
              f"{'met' if x >= 300 else 'MISSED'}")
    for col in PRECISION_COLUMNS:
        for kind in ("efficiency", "efficiency_raw"):
            effs = [(r["N"], r["sparsity"], r[kind][col]) for r in rows if col in r.get(kind, {})]
            if effs:
                low = [f"N={n} s={s:.2f} {e:.0%}" for n, s, e in effs if e < 0.85]
                what = "drift-corrected" if kind == "efficiency" else "raw"
                print(f"target every cell >= 85% FLOP-ratio efficiency ({col}, {what}): "
                      + ("met" if not low else f"MISSED in {len(low)}/{len(effs)}: " + ", ".join(low)))


def main(argv: list[str] | None = None) -> int:
    import importlib.util

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", choices=sorted(GRIDS), default="full")
    ap.add_argument("--quick", action="store_true", help="same as --grid quick")
    ap.add_argument("--demo", type=Path, default=None, help="also every compressed checkpoint of a demo grid")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown (README)")
    ap.add_argument("--profile", action="store_true", help="where N=10 s=0.95's time goes (ORT, OpenVINO)")
    ap.add_argument("--no-bert-base", action="store_true", help="only the --demo grid")
    ap.add_argument("--from-json", type=Path, default=None, help="print the table and targets of a saved run")
    args = ap.parse_args(argv)
    if args.from_json is not None:
        saved = json.loads(args.from_json.read_text())
        bert = [r for r in saved["rows"] if r["checkpoint"].startswith("bert-base")]
        add_ratios(bert)
        print_table(saved["rows"], saved.get("threads", args.threads), markdown=args.markdown)
        print_targets(bert)
        if saved.get("profile"):
            print_profile(saved["profile"])
        return 0
    if args.rounds < 3:
        ap.error("--rounds must be >= 3")
    grid = GRIDS["quick" if args.quick else args.grid]
    ov_ok = importlib.util.find_spec("openvino") is not None
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    matmul = MatMulProbe(args.threads)
    rows, prof = [], None
    if args.demo is not None:
        spec_grid = json.loads((args.demo / "grid.json").read_text())
        for entry in spec_grid["checkpoints"]:
            if entry.get("masked"):
                continue
            with tempfile.TemporaryDirectory(prefix="prumux-bench-") as tmp:
                rows.append(run_cell(f"minilm {entry['name']}", args.demo / entry["name"], Path(tmp), args,
                                     entry.get("sparsity"), matmul, ov_ok))
            print(f"done {rows[-1]['checkpoint']} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    bert_rows = []
    if not args.no_bert_base:
        for n, target in grid:
            family = ("bert" if target == 0 else "cofi_compressed") if n == 1 else "prumux_compressed"
            heads_kept, ffn_kept = uniform_structure(target)
            with tempfile.TemporaryDirectory(prefix="prumux-bench-") as tmp:
                spec = SynthSpec(family=family, num_instances=n, heads_kept=heads_kept, ffn_kept=ffn_kept, **BASE)
                info = write_checkpoint(Path(tmp) / "ckpt", spec)
                bert_rows.append(run_cell(f"bert-base N={n} s={target:.2f}", info.path, Path(tmp), args,
                                          info.sparsity, matmul, ov_ok))
                if args.profile and n == 10 and target == 0.95:
                    (Path(tmp) / "p").mkdir()
                    prof = profile(info.path, Path(tmp) / "p", args.threads, ov_ok)
            r = bert_rows[-1]
            print(f"done {r['checkpoint']} at {time.perf_counter() - start:.0f} s (prep {r['prep_s']:.0f} s, timing "
                  f"{r['timing_s']:.0f} s)", file=sys.stderr)
            if args.json:  # a long run keeps what it has measured
                args.json.write_text(json.dumps({"rows": rows + bert_rows, "partial": True}, indent=1))
        add_ratios(bert_rows)
    rows += bert_rows
    print_table(rows, args.threads, markdown=args.markdown)
    print_targets(bert_rows)
    if prof:
        print_profile(prof)
    env = environment(threads=args.threads)
    print(f"CPU: {env.get('cpu_model')}; flags: {' '.join(env.get('cpu_flags') or [])}")
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "threads": args.threads, "profile": prof,
                                         "environment": env}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
