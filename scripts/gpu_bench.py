#!/usr/bin/env python
"""GPU validation and benchmark stages run by ``scripts/gpu_check.sh`` (one stage per process).

Stages (each writes ``<out>/<stage>.json`` and prints a table):

``env``       versions, device, backend availability.
Every result file sits directly in ``--out`` (the device tool returns at most 8 files; the shell script
packs its logs into one archive).

``kernels``   fused Triton multiplexer / demultiplexer vs their PyTorch forms at BERT-base widths
              (d' = D = 768, L = 128, batch 128·N rows): median CUDA-event ms, the ratio torch/triton, max |diff|,
              and the resulting choice (Triton only when the ratio >= 1.05; engines built later use it).
``validate``  the CUDA engine (fp32 and fp16) on ONE BERT-base-shaped checkpoint (N = 2, s = 0.6) against the
              float64 reference with the one comparator (:mod:`prumux_compile.validation`: the criteria of
              ("torch-cuda", precision), the case list of ``validation_cases``); plus the fp16 engine against the
              fp32 engine on max(128·N, 512) rows with the fp16 criteria.
``bench``     batch 128·N, sequence 128, N in {1, 2, 5, 10} x sparsity in {0, 0.6, 0.9, 0.95}: eager PyTorch
              fp32 (upstream style: the pruning-stage module) vs the CUDA engine fp32 and fp16, interleaved;
              sequences/s and the speedup over the BERT-base eager baseline (N = 1, s = 0). ``bench.json`` is
              rewritten after every configuration, so a stage cut short still leaves every finished row.
``compile``   CUDA graphs vs torch.compile + CUDA graphs on one configuration (which graph mode to use).
``summary``   ``summary.md`` from everything above and ``stages.tsv``.
``all``       every stage in this process (what ``--dry-run`` uses).

``--dry-run`` runs everything but CUDA on the CPU with a tiny configuration (2 layers, 32 hidden, N in {1, 2},
s in {0, 0.6}): eager mode, PyTorch kernels, no Triton; it exercises every code path of the stages.

Checkpoints: one synthetic BERT-base-shaped checkpoint per N (:mod:`prumux_compile.demo.synthetic`, random weights,
family ``prumux_compressed`` / ``cofi_compressed``) is written once to ``--cache`` and read back; each sparsity
is the compressed checkpoint of a kept structure (:func:`structure_for`), made in memory with
``synthetic.slice_state_dict`` exactly as ``write_checkpoint`` would write it (the CPU test checks the two
agree), so no 400 MB file is written per configuration. Nothing large is written under ``--out``.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runs from a checkout even when the package is not installed
    sys.path.insert(0, str(REPO))

from prumux_compile.checkpoint import from_raw, read_raw  # noqa: E402
from prumux_compile.demo.synthetic import (KeptStructure, SynthSpec, cofi_sparsity, pruned_heads_bookkeeping,  # noqa: E402
                                      slice_state_dict, write_checkpoint)

GRID_N = (1, 2, 5, 10)
GRID_S = (0.0, 0.6, 0.9, 0.95)
DRY_N = (1, 2)
DRY_S = (0.0, 0.6)
MIN_RATIO = 1.05


@dataclass(frozen=True)
class Shape:
    """Model and workload sizes: original widths, vocabulary, compiled length, batch rows per N."""

    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int
    max_pos: int
    labels: int
    seq_len: int
    batch_per_n: int

    @property
    def head_size(self) -> int:
        return self.hidden // self.heads


BERT_BASE = Shape(12, 768, 12, 3072, 30522, 512, 3, 128, 128)
TINY = Shape(2, 32, 4, 64, 512, 64, 3, 16, 4)


@dataclass
class Ctx:
    out: Path
    cache: Path
    dry: bool
    device: str
    shape: Shape
    budget_s: float
    started: float = dataclasses.field(default_factory=time.time)

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def left(self) -> float:
        return self.budget_s - (time.time() - self.started)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=1, default=_json_default))


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


# ------------------------------------------------------------------------------------------------ structures
def allocate(total: int, weights: list[float], cap: int) -> list[int]:
    """Split ``total`` units over slots in proportion to ``weights`` (largest remainder), at most ``cap`` each.

    Raises:
        ValueError: ``total`` exceeds ``cap * len(weights)``.
    """
    if total > cap * len(weights):
        raise ValueError(f"cannot place {total} units in {len(weights)} slots of {cap}")
    counts = [0] * len(weights)
    left = int(total)
    while left > 0:
        open_slots = [i for i in range(len(weights)) if counts[i] < cap]
        wsum = sum(weights[i] for i in open_slots)
        shares = {i: left * weights[i] / wsum for i in open_slots}
        placed = 0
        for i in open_slots:
            add = min(cap - counts[i], int(shares[i]))
            counts[i] += add
            placed += add
        if placed == 0:  # distribute the remainder one by one, largest fractional share first
            for i in sorted(open_slots, key=lambda j: (-(shares[j] - int(shares[j])), j)):
                if left - placed == 0:
                    break
                counts[i] += 1
                placed += 1
        left -= placed
    return counts


def structure_for(sparsity: float, shape: Shape, seed: int = 0) -> KeptStructure:
    """A CoFi-like kept structure for a target sparsity (docs/checkpoint-formats.md §6 accounting; hidden dims all kept).

    The remaining heads and FFN dims are ``(1 - s) · prunable / full`` of the original ones, spread over the
    layers with weights falling linearly from 2 (layer 0) to 1 (last layer), so upper layers lose more and, at
    high sparsity, whole attention sublayers disappear (F1 in docs/field-faults.md). Head ids and FFN dims are seeded random subsets.
    """
    L, H, Fd, d, dh = shape.layers, shape.heads, shape.ffn, shape.hidden, shape.head_size
    if sparsity <= 0:
        return KeptStructure([list(range(H)) for _ in range(L)], [list(range(Fd)) for _ in range(L)],
                             list(range(d)))
    prunable = L * (4 * d * d + 4 * d) + L * (2 * d * Fd + 5 * d)
    full = 4 * dh * L * H * d + 2 * L * Fd * d
    frac = min(1.0, (1.0 - sparsity) * prunable / full)
    weights = [2.0 - i / max(1, L - 1) for i in range(L)]
    heads = allocate(round(frac * L * H), weights, H)
    dims = allocate(round(frac * L * Fd), weights, Fd)
    rng = np.random.default_rng(seed)
    heads_kept = [sorted(rng.choice(H, size=h, replace=False).tolist()) for h in heads]
    ffn_kept = [sorted(rng.choice(Fd, size=f, replace=False).tolist()) for f in dims]
    return KeptStructure(heads_kept, ffn_kept, list(range(d)))


def base_checkpoint(ctx: Ctx, n: int):
    """The unpruned synthetic checkpoint for N (written once into the cache), read back as a RawCheckpoint."""
    sh = ctx.shape
    path = ctx.cache / f"base-n{n}-{sh.layers}x{sh.hidden}"
    if not (path / "config.json").is_file():
        family = "cofi_compressed" if n == 1 else "prumux_compressed"
        t0 = time.time()
        write_checkpoint(path, SynthSpec(family=family, num_layers=sh.layers, hidden=sh.hidden, heads=sh.heads,
                                         ffn=sh.ffn, vocab=sh.vocab, max_pos=sh.max_pos, num_labels=sh.labels,
                                         num_instances=n, seed=0))
        log(f"wrote checkpoint N={n} in {time.time() - t0:.1f}s")
    return read_raw(path)


def sliced_raw(base, structure: KeptStructure, shape: Shape):
    """The compressed checkpoint of ``structure`` (what ``write_checkpoint`` would write), in memory."""
    if all(len(h) == shape.heads for h in structure.heads_kept) and all(
            len(f) == shape.ffn for f in structure.ffn_kept):
        return base
    demux = base.demuxing_variant if base.is_muxed else None
    sd = slice_state_dict(base.state_dict, structure, shape.head_size, demux)
    config = {**base.config, "pruned_heads": pruned_heads_bookkeeping(structure, shape.heads)}
    family = "prumux_compressed" if base.is_muxed else "cofi_compressed"
    return dataclasses.replace(base, state_dict=sd, config=config, family=family)


def config_ir(ctx: Ctx, n: int, sparsity: float, bases: dict):
    """(raw, IR, structure, actual sparsity) of one grid configuration."""
    if n not in bases:
        bases.clear()  # keep one base checkpoint in memory at a time
        gc.collect()
        bases[n] = base_checkpoint(ctx, n)
    sh = ctx.shape
    structure = structure_for(sparsity, sh, seed=0)
    raw = sliced_raw(bases[n], structure, sh)
    ir = from_raw(raw, seq_len=sh.seq_len)
    return raw, ir, structure, cofi_sparsity(structure, sh.layers, sh.hidden, sh.ffn, sh.head_size)


def device_inputs(ctx: Ctx, batch: int, seed: int = 0):
    from prumux_compile.export.inputs import realistic_inputs

    feeds = realistic_inputs(batch, ctx.shape.seq_len, ctx.shape.vocab, seed=seed)
    return tuple(torch.from_numpy(feeds[k]).to(ctx.device) for k in ("input_ids", "attention_mask",
                                                                        "token_type_ids"))


def kernel_choices(ctx: Ctx) -> dict:
    """(kernel, N, precision) -> "triton" | "torch" from kernels.json (torch when missing)."""
    data = read_json(ctx.out / "kernels.json") or {}
    return {tuple(k.split("|")): v["choice"] for k, v in data.get("choices", {}).items()}


def make_engine(ctx: Ctx, ir_c, precision: str, *, choices: dict | None = None, graph_mode: str | None = None,
                batch: int | None = None):
    """A :class:`CudaRunner` around the compact model of a compiled IR (kernels from ``choices``; eager on the
    CPU)."""
    from prumux_compile.engines.torch_cuda import CudaOptions, CudaRunner, engine_model
    from prumux_compile.export.spec import spec_for_ir

    n = ir_c.num_instances
    choices = choices or {}
    mux = choices.get(("mux", str(n), "fp32"), "torch")
    demux = choices.get(("demux", str(n), precision), "torch")
    mode = graph_mode or ("cuda-graph" if ctx.cuda else "eager")
    if mode == "compile-cuda-graph":
        mux = demux = "torch"
    opts = CudaOptions(precision=precision, device=ctx.device, graph_mode=mode,
                       batch_sizes=(batch or ctx.shape.batch_per_n * n,))
    model = engine_model(ir_c, precision, attention=opts.attention, device=ctx.device)
    model.set_kernels(mux=mux, demux=demux)
    return CudaRunner(model, spec_for_ir(ir_c), opts)


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------ stages
def stage_env(ctx: Ctx) -> dict:
    from prumux_compile.bench.timing import environment
    from prumux_compile.engines import registry

    info = {"environment": environment(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "dry_run": ctx.dry}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["device"] = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                          "capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    info["backends"] = {k: {"available": v[0], "why": v[1]} for k, v in registry.availability().items()}
    write_json(ctx.out / "env.json", info)
    for k, v in info.items():
        log(f"{k}: {v}")
    return info


def stage_kernels(ctx: Ctx) -> dict:
    """Triton vs PyTorch forms of the fused mux / demux at the benchmark shapes."""
    from prumux_compile.engines.torch_cuda import cuda_time_ms
    from prumux_compile.kernels.triton_demux import demux_first_torch, demux_first_triton
    from prumux_compile.kernels.triton_mux import mux_embed_torch, mux_embed_triton, triton_available

    sh = ctx.shape
    ok, why = triton_available(ctx.device)
    gen = torch.Generator().manual_seed(0)
    d = sh.hidden
    word = (torch.randn(sh.vocab, d, generator=gen) * 0.2).to(ctx.device)
    const = (torch.randn(sh.seq_len, d, generator=gen) * 0.2).to(ctx.device)
    shift = (torch.randn(d, generator=gen) * 0.1).to(ctx.device)
    ln = ((1 + 0.1 * torch.randn(d, generator=gen)).to(ctx.device), (0.1 * torch.randn(d, generator=gen)).to(ctx.device))
    shared32 = (torch.randn(d, d, generator=gen) / d ** 0.5).to(ctx.device)
    rows, choices = [], {}
    rounds = 3 if ctx.dry else 30
    for n in [x for x in (GRID_N if not ctx.dry else DRY_N) if x > 1]:
        g = sh.batch_per_n
        ids = torch.randint(0, sh.vocab, (g * n, sh.seq_len), generator=gen).to(ctx.device)
        scale = (torch.randn(n, d, generator=gen) / n).to(ctx.device)
        mux_args = (ids, word, const, scale, shift, 1e-12, ln)
        cases = [("mux", "fp32", lambda a=mux_args: mux_embed_torch(*a), lambda a=mux_args: mux_embed_triton(*a),
                  1e-4)]
        cst = torch.randn(n, d, generator=gen).to(ctx.device)
        h32 = torch.randn(g, d, generator=gen).to(ctx.device)
        for prec, dt, tol in (("fp32", torch.float32, 1e-4), ("fp16", torch.float16, 2e-2),
                              ("bf16", torch.bfloat16, 1e-1)):
            a = (h32.to(dt), shared32.to(dt), cst)
            cases.append(("demux", prec, lambda a=a: demux_first_torch(*a), lambda a=a: demux_first_triton(*a), tol))
        for kind, prec, torch_fn, triton_fn, tol in cases:
            row = {"kernel": kind, "N": n, "precision": prec, "groups": g}
            row["torch_ms"] = cuda_time_ms(torch_fn, rounds=rounds)
            if ok:
                try:
                    row["max_abs_diff"] = float((torch_fn().float() - triton_fn().float()).abs().max())
                    row["triton_ms"] = cuda_time_ms(triton_fn, rounds=rounds)
                except Exception as exc:  # a Triton compile/launch failure: recorded, PyTorch form kept
                    traceback.print_exc()
                    row.update(choice="torch", why=f"Triton failed: {type(exc).__name__}: {str(exc)[:160]}")
                else:
                    row["ratio"] = row["torch_ms"] / row["triton_ms"]
                    good = row["max_abs_diff"] <= tol
                    row["choice"] = "triton" if good and row["ratio"] >= MIN_RATIO else "torch"
                    row["why"] = (f"{row['ratio']:.2f}x" + ("" if good else
                                                             f"; diff {row['max_abs_diff']:.2g} > {tol}"))
            else:
                row.update(choice="torch", why=why)
            rows.append(row)
            choices[f"{kind}|{n}|{prec}"] = {"choice": row["choice"], "ratio": row.get("ratio")}
            log(f"{kind:5s} N={n:2d} {prec}: torch {row['torch_ms']:.3f} ms, triton "
                f"{row.get('triton_ms', float('nan')):.3f} ms, ratio {row.get('ratio', float('nan')):.2f}, "
                f"diff {row.get('max_abs_diff', float('nan')):.2e} -> {row['choice']}")
    data = {"triton": why, "min_ratio": MIN_RATIO, "rows": rows, "choices": choices}
    write_json(ctx.out / "kernels.json", data)
    return data


def stage_validate(ctx: Ctx) -> dict:
    """Engine fidelity on one BERT-base-shaped configuration (module docstring), fp32 and fp16."""
    from prumux_compile.engines.base import Compiled, EngineConfig
    from prumux_compile.engines.torch_cuda import CudaOptions, TorchCudaBackend
    from prumux_compile.export.spec import spec_for_ir
    from prumux_compile.passes import compile_ir
    from prumux_compile.validation import compare, criteria_for, validate

    sh = ctx.shape
    n, s = 2, 0.6
    t0 = time.time()
    raw, ir, _, actual = config_ir(ctx, n, s, {})
    ir_c, _ = compile_ir(ir)
    spec = spec_for_ir(ir_c)
    entry = {"N": n, "sparsity": s, "actual_sparsity": actual}
    runners, arts, ok_all = {}, {}, True
    backend = TorchCudaBackend(CudaOptions(device=ctx.device, graph_mode="cuda-graph" if ctx.cuda else "eager"))
    with tempfile.TemporaryDirectory(dir=ctx.cache) as tmp:
        for prec in ("fp32", "fp16"):
            try:
                arts[prec] = backend.build(Compiled(Path(tmp) / "model.onnx", spec, ir_c),
                                           EngineConfig(precision=prec, batch_sizes=(sh.batch_per_n * n,),
                                                        out_dir=Path(tmp) / prec))
                runners[prec] = backend.load(arts[prec])
            except Exception as exc:  # EngineBuildError or anything unexpected: recorded, the stage fails
                traceback.print_exc()
                entry[prec] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                ok_all = False
    entry["build_s"] = round(time.time() - t0, 1)
    if runners:
        t1 = time.time()
        results = validate(runners, raw, spec, {p: arts[p].criteria for p in runners})
        for prec, res in results.items():
            entry[prec] = {"ok": res.passed, "criteria": res.criteria.describe(), "max_abs_diff": res.max_abs_diff,
                           "argmax_agreement": res.argmax_agreement, "rows": sum(c.rows for c in res.cases),
                           "cases": len(res.cases), "kernels": arts[prec].report["kernels"], "error": None}
            ok_all &= res.passed
            log(f"validate N={n} s={s} {prec}: ok={res.passed} max|diff|={res.max_abs_diff:.3g} "
                f"agreement={res.argmax_agreement:.4f} ({res.criteria.describe()})")
        entry["validate_s"] = round(time.time() - t1, 1)
    if len(runners) == 2:  # fp16 vs fp32 engine on >= 512 rows (GPU-fast; fp32 was checked vs the reference)
        inputs = device_inputs(ctx, max(sh.batch_per_n * n, 4 * sh.batch_per_n), seed=123)
        a = runners["fp32"].forward_device(*inputs).double().cpu().numpy()
        b = runners["fp16"].forward_device(*inputs).float().cpu().numpy()
        cross = compare(b, a, criteria_for("torch-cuda", "fp16"))
        agree_ok = cross.argmax_agreement >= criteria_for("torch-cuda", "fp16").min_agreement
        entry["fp16_vs_fp32_engine"] = {"rows": cross.rows, "max_abs_diff": cross.max_abs_diff,
                                        "argmax_agreement": cross.argmax_agreement, "finite": cross.finite,
                                        "ok": cross.within and agree_ok}
        ok_all &= cross.within and agree_ok
        log(f"validate fp16 vs fp32 engine on {cross.rows} rows: agreement {cross.argmax_agreement:.4f}, "
            f"max|diff| {cross.max_abs_diff:.3g}")
    for r in runners.values():
        r.close()
    free()
    data = {"ok": ok_all, "configs": [entry],
            "criteria": {p: criteria_for("torch-cuda", p).describe() for p in ("fp32", "fp16")}}
    write_json(ctx.out / "validate.json", data)
    if not ok_all:
        raise SystemExit("validation failed (see validate.json)")
    return data


def stage_bench(ctx: Ctx) -> dict:
    """The N x sparsity grid (module docstring); appends one JSON line per configuration."""
    grid = [(n, s) for n in (DRY_N if ctx.dry else GRID_N) for s in (DRY_S if ctx.dry else GRID_S)]
    path = ctx.out / "bench.json"
    choices = kernel_choices(ctx)
    warmup, rounds = (1, 2) if ctx.dry else (2, 5)
    bases, done, failed, per_config = {}, [], [], 0.0
    for n, s in grid:
        if done and ctx.left() < 1.5 * per_config:
            log(f"bench: {ctx.left():.0f}s left, a configuration takes ~{per_config:.0f}s: stopping before N={n} s={s}")
            break
        t0 = time.time()
        try:
            row = _bench_config(ctx, n, s, bases, choices, warmup, rounds)
        except Exception as exc:  # one configuration failing must not stop the grid
            traceback.print_exc()
            failed.append({"N": n, "sparsity": s, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            log(f"bench N={n} s={s}: FAILED {failed[-1]['error']}")
            free()
            continue
        done.append(row)
        # rewritten after every configuration: a stage cut short still leaves every finished row
        write_json(path, {"rows": done, "failed": failed, "grid": grid, "complete": False})
        per_config = max(per_config, time.time() - t0)
        free()
    data = {"rows": done, "failed": failed, "grid": grid, "complete": len(done) == len(grid)}
    write_json(path, data)
    print(bench_table(done))
    if failed:
        raise SystemExit(f"{len(failed)} configuration(s) failed (see bench.json)")
    return data


def _bench_config(ctx: Ctx, n: int, s: float, bases: dict, choices: dict, warmup: int, rounds: int) -> dict:
    """Build, check and time one (N, sparsity) configuration; returns its bench row."""
    from prumux_compile.bench.timing import interleaved
    from prumux_compile.engines.torch_cuda import compile_for_cuda
    from prumux_compile.kernels import build_module
    from prumux_compile.passes import compile_ir

    sh = ctx.shape
    t0 = time.time()
    raw, ir, structure, actual = config_ir(ctx, n, s, bases)
    ir_p, _ = compile_ir(ir, "pruning")
    eager = build_module(ir_p).to(ctx.device)
    ir_c, _ = compile_for_cuda(ir_p, align=8, check_each=False)
    engines = {p: make_engine(ctx, ir_c, p, choices=choices) for p in ("fp32", "fp16")}
    batch = sh.batch_per_n * n
    inputs = device_inputs(ctx, batch, seed=7)

    def eager_fn():
        with torch.no_grad():
            eager(*inputs)
        ctx.sync()

    def engine_fn(p):
        def fn():
            engines[p].forward_device(*inputs)
            ctx.sync()
        return fn

    prep_s = time.time() - t0
    timings = interleaved({"eager_fp32": eager_fn, "engine_fp32": engine_fn("fp32"),
                           "engine_fp16": engine_fn("fp16")}, batch_size=batch, seq_len=sh.seq_len,
                          warmup=warmup, rounds=rounds)
    row = {"N": n, "sparsity": s, "actual_sparsity": round(actual, 4), "batch": batch, "seq": sh.seq_len,
           "heads_per_layer": [len(h) for h in structure.heads_kept],
           "ffn_per_layer": [len(f) for f in structure.ffn_kept],
           "params_engine": ir_c.total_params(), "prep_s": round(prep_s, 2),
           "kernels": {p: dict(e.model.kernels) for p, e in engines.items()}}
    for name, t in timings.items():
        row[name] = {"p50_ms": t.p50_ms, "p90_ms": t.p90_ms, "seq_per_s": t.throughput}
    row["total_s"] = round(time.time() - t0, 2)
    log(f"bench N={n:2d} s={s:.2f} (actual {actual:.3f}): eager {row['eager_fp32']['seq_per_s']:.0f}, "
        f"fp32 {row['engine_fp32']['seq_per_s']:.0f}, fp16 {row['engine_fp16']['seq_per_s']:.0f} seq/s "
        f"(prep {prep_s:.1f}s, total {row['total_s']:.1f}s)")
    return row


def stage_compile(ctx: Ctx) -> dict:
    """CUDA graphs vs torch.compile + CUDA graphs (fp16, N=2, s=0.6)."""
    from prumux_compile.bench.timing import interleaved
    from prumux_compile.engines.torch_cuda import compile_for_cuda

    if not ctx.cuda:
        data = {"skipped": "torch.compile comparison needs CUDA (dry run)"}
        write_json(ctx.out / "compile.json", data)
        log(data["skipped"])
        return data
    sh = ctx.shape
    n, s = 2, 0.6
    _, ir, _, _ = config_ir(ctx, n, s, {})
    ir_c, _ = compile_for_cuda(ir, align=8, check_each=False)
    batch = sh.batch_per_n * n
    inputs = device_inputs(ctx, batch, seed=11)
    graph = make_engine(ctx, ir_c, "fp16", choices=kernel_choices(ctx), graph_mode="cuda-graph")
    compiled = make_engine(ctx, ir_c, "fp16", graph_mode="compile-cuda-graph")
    t0 = time.time()
    out_c = compiled.forward_device(*inputs)
    ctx.sync()
    compile_s = time.time() - t0
    out_g = graph.forward_device(*inputs)
    diff = float((out_c.float() - out_g.float()).abs().max())

    def fn(r):
        def f():
            r.forward_device(*inputs)
            ctx.sync()
        return f

    t = interleaved({"cuda-graph": fn(graph), "compile-cuda-graph": fn(compiled)}, batch_size=batch,
                    seq_len=sh.seq_len, warmup=2, rounds=10)
    ratio = t["cuda-graph"].p50_ms / t["compile-cuda-graph"].p50_ms
    data = {"N": n, "sparsity": s, "precision": "fp16", "batch": batch, "compile_s": compile_s,
            "cuda_graph_ms": t["cuda-graph"].p50_ms, "compile_ms": t["compile-cuda-graph"].p50_ms,
            "ratio_graph_over_compile": ratio, "max_abs_diff": diff,
            "choice": "compile-cuda-graph" if ratio >= MIN_RATIO else "cuda-graph"}
    write_json(ctx.out / "compile.json", data)
    log(f"compile: first call {compile_s:.1f}s; cuda-graph {data['cuda_graph_ms']:.2f} ms vs compile "
        f"{data['compile_ms']:.2f} ms (ratio {ratio:.2f}) -> {data['choice']}")
    return data


# ------------------------------------------------------------------------------------------------ summary
def bench_table(rows: list[dict]) -> str:
    """Markdown table of bench rows with speedups over the eager BERT-base baseline (N=1, s=0)."""
    base = next((r["eager_fp32"]["seq_per_s"] for r in rows if r["N"] == 1 and r["sparsity"] == 0), None)
    head = ("| N | sparsity (target / actual) | eager fp32 seq/s | engine fp32 seq/s | engine fp16 seq/s | "
            "speedup eager | speedup fp32 | speedup fp16 | kernels fp16 (mux/demux) |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        vals = [r[k]["seq_per_s"] for k in ("eager_fp32", "engine_fp32", "engine_fp16")]
        sp = [f"{v / base:.2f}x" if base else "n/a" for v in vals]
        k = r.get("kernels", {}).get("fp16", {})
        lines.append(f"| {r['N']} | {r['sparsity']:.2f} / {r['actual_sparsity']:.3f} | {vals[0]:.0f} | {vals[1]:.0f} | "
                     f"{vals[2]:.0f} | {sp[0]} | {sp[1]} | {sp[2]} | {k.get('mux', '-')}/{k.get('demux', '-')} |")
    if base is None:
        lines.append("\n(no N=1, s=0 baseline row: speedups unavailable)")
    return "\n".join(lines)


def stage_summary(ctx: Ctx) -> str:
    out = ctx.out
    parts = ["# GPU check summary", ""]
    stages = (out / "stages.tsv").read_text().splitlines() if (out / "stages.tsv").is_file() else []
    parts += ["## Stages", "", "| stage | status | seconds | detail |", "|---|---|---|---|"]
    parts += [f"| {' | '.join((line.split(chr(9)) + ['', '', '', ''])[:4])} |" for line in stages if line.strip()]
    env = read_json(out / "env.json")
    if env:
        dev = env.get("device", {})
        parts += ["", "## Environment", "",
                  f"torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), triton {env.get('triton')}, device "
                  f"{dev.get('name', 'none')} {dev.get('memory_gib', '')} GiB, dry run: {env.get('dry_run')}",
                  "", "| backend | available | why |", "|---|---|---|"]
        parts += [f"| {k} | {v['available']} | {v['why']} |" for k, v in env.get("backends", {}).items()]
    kern = read_json(out / "kernels.json")
    if kern:
        parts += ["", "## Triton kernels vs PyTorch form (ratio = torch ms / triton ms; kept if >= "
                  f"{kern.get('min_ratio')})", "", f"triton: {kern.get('triton')}", "",
                  "| kernel | N | precision | torch ms | triton ms | ratio | max abs diff | choice |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in kern.get("rows", []):
            parts.append(f"| {r['kernel']} | {r['N']} | {r['precision']} | {r['torch_ms']:.3f} | "
                         f"{r.get('triton_ms', float('nan')):.3f} | {r.get('ratio', float('nan')):.2f} | "
                         f"{r.get('max_abs_diff', float('nan')):.2e} | {r['choice']} |")
    val = read_json(out / "validate.json")
    if val:
        parts += ["", f"## Validation (overall ok: {val.get('ok')})", "",
                  "| N | sparsity | precision | ok | max abs diff | argmax agreement | rows | error |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in val.get("configs", []):
            for p in ("fp32", "fp16"):
                r = c.get(p, {})
                parts.append(f"| {c['N']} | {c['sparsity']} | {p} ({r.get('criteria', '')}) | {r.get('ok')} | "
                             f"{r.get('max_abs_diff')} | {r.get('argmax_agreement')} | {r.get('rows')} | "
                             f"{r.get('error') or ''} |")
            x = c.get("fp16_vs_fp32_engine", {})
            parts.append(f"| {c['N']} | {c['sparsity']} | fp16 vs fp32 engine | {x.get('ok')} | "
                         f"{x.get('max_abs_diff')} | {x.get('argmax_agreement')} | {x.get('rows')} | |")
    bench = read_json(out / "bench.json") or {}
    rows = bench.get("rows", [])
    if rows:
        per_n = rows[0]["batch"] // rows[0]["N"]
        parts += ["", f"## Throughput (batch {per_n}·N, sequence {rows[0]['seq']}; speedup vs eager fp32 N=1 s=0)", "",
                  bench_table(rows)]
        if not bench.get("complete"):
            parts.append(f"\n(grid incomplete: {len(rows)} of {len(bench.get('grid', []))} configurations; "
                         f"failed: {bench.get('failed') or 'none'})")
    comp = read_json(out / "compile.json")
    if comp:
        parts += ["", "## Graph mode", "", "```", json.dumps(comp, indent=1, default=_json_default), "```"]
    text = "\n".join(parts) + "\n"
    (out / "summary.md").write_text(text)
    print(text)
    return text


STAGES = {"env": stage_env, "kernels": stage_kernels, "validate": stage_validate, "bench": stage_bench,
          "compile": stage_compile, "summary": stage_summary}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=[*STAGES, "all"])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_out")))
    ap.add_argument("--cache", type=Path, default=None, help="checkpoint cache (default: a temp dir)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny model, no CUDA")
    ap.add_argument("--budget-s", type=float, default=1e9, help="bench: stop starting configurations after this")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.cache or Path(tempfile.gettempdir()) / "prumux-gpu-cache"
    cache.mkdir(parents=True, exist_ok=True)
    if not args.dry_run and not torch.cuda.is_available() and args.stage not in ("summary", "env"):
        print("no CUDA device: use --dry-run for the CPU path", file=sys.stderr)
        return 2
    ctx = Ctx(out=args.out, cache=cache, dry=args.dry_run, device="cpu" if args.dry_run else "cuda",
              shape=TINY if args.dry_run else BERT_BASE, budget_s=args.budget_s)
    torch.manual_seed(0)
    if args.stage != "all":
        STAGES[args.stage](ctx)
        return 0
    status = ctx.out / "stages.tsv"
    status.write_text("")
    failed = 0
    for name in ("env", "kernels", "validate", "bench", "compile"):
        t0 = time.time()
        try:
            STAGES[name](ctx)
            state, detail = "ok", ""
        except (Exception, SystemExit) as exc:  # one stage failing must not stop the others
            traceback.print_exc()
            state, detail = "failed", f"{type(exc).__name__}: {str(exc)[:120]}"
            failed += 1
        with status.open("a") as fh:
            fh.write(f"{name}\t{state}\t{time.time() - t0:.1f}\t{detail}\n")
    stage_summary(ctx)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
