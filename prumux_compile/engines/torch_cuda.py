"""CUDA engine (``torch-cuda`` backend): a runtime around the one compact model of :mod:`prumux_compile.kernels`.

There is no second definition of the model here: the engine builds :class:`prumux_compile.kernels.CompiledModel`
from the compiled IR, at the precision of the :class:`~prumux_compile.engines.base.EngineConfig`, and adds only
what a GPU runtime needs:

* the exact ``align-dims`` pass (heads / FFN dims zero-padded to multiples of 8 elements, docs/checkpoint-formats.md
  E9, field fault F16 in docs/field-faults.md) on top of the full pass pipeline;
* the kernels' compute-dtype policy (fp32 / fp16 / bf16 GEMMs; LayerNorm, softmax, reductions, residual stream,
  multiplexer statistics, pooler and classifier in float32 — field fault F8 in docs/field-faults.md);
* kernel choice (:func:`choose_kernels`): the OpenAI-Triton multiplexer / first demux layer
  (:mod:`prumux_compile.kernels.triton_mux`, :mod:`~prumux_compile.kernels.triton_demux`) where they beat their
  PyTorch form by ``min_ratio`` on the machine that builds, and fused scaled-dot-product attention
  (``attention="sdpa"``) or the explicit float32 form (``"math"``);
* CUDA graphs captured lazily per (batch bucket, sequence bucket): a batch is padded with copies of its last
  row up to the smallest bucket (bucket sizes are multiples of N, so mux groups of the real rows are exactly
  those of the unpadded batch: the same "repeat-last" policy as the compiled model, F18 in docs/field-faults.md) and the graph
  replays; batches beyond the largest bucket run in chunks of it. ``graph_mode="compile-cuda-graph"``
  wraps the model in ``torch.compile`` first (kernels then stay PyTorch so inductor can fuse them);
  ``"eager"`` disables graphs.

The engine builds from the IR (``Compiled.ir``) and writes it as ``model.engine-ir.pt`` (:func:`save_ir`; loaded
with ``weights_only=True``), which is the artifact. Fidelity is judged by the criteria of ``("torch-cuda",
precision)`` (:mod:`prumux_compile.validation`). Nothing here needs CUDA or ``onnx`` at import time; with
``device="cpu"`` the runtime runs eagerly on the CPU, which is how it is tested on machines without a GPU.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from prumux_compile.engines.base import (Artifact, Backend, Compiled, Deployment, EngineConfig, Runner, file_sha256,
                                         prepare_feeds)
from prumux_compile.errors import EngineBuildError, InputError
from prumux_compile.ir import FFN, Attention, Demux, Embeddings, Layer, ModelIR, Mux

__all__ = ["CudaOptions", "CudaRunner", "TorchCudaBackend", "compile_for_cuda", "save_ir", "load_ir",
           "choose_kernels", "cuda_time_ms", "engine_model", "IR_FILENAME", "PRECISIONS", "GRAPH_MODES"]

IR_FILENAME = "model.engine-ir.pt"
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
GRAPH_MODES = ("eager", "cuda-graph", "compile-cuda-graph")
_KERNEL_CHOICES = ("auto", "triton", "torch")
_IR_FORMAT = "prumux-ir"
_IR_VERSION = 1


# ------------------------------------------------------------------------------------------------ options
@dataclass(frozen=True)
class CudaOptions:
    """Options of the CUDA engine.

    Attributes:
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"`` (GEMM dtype; module docstring).
        batch_sizes: CUDA-graph batch buckets in rows (rounded up to multiples of N); empty = N·{1,2,4,...,128}.
        seq_buckets: sequence buckets (tokens) of the N = 1 families; multiplexed models always use their
            compiled length. Longer inputs get a graph of their own length.
        graph_mode: one of :data:`GRAPH_MODES`.
        mux_kernel / demux_kernel: ``"auto"`` (Triton where measured faster), ``"triton"`` or ``"torch"``.
        attention: ``"sdpa"`` (fused kernels) or ``"math"`` (explicit float32 scores and softmax).
        align: ``align-dims`` multiple (None = do not pad).
        min_ratio: Triton is kept only when ``torch_ms / triton_ms >= min_ratio``.
        device: torch device string.
        max_graphs: at most this many captured graphs are kept (least recently used ones are dropped).
    """

    precision: str = "fp32"
    batch_sizes: tuple[int, ...] = ()
    seq_buckets: tuple[int, ...] = (32, 64, 128, 256, 512)
    graph_mode: str = "cuda-graph"
    mux_kernel: str = "auto"
    demux_kernel: str = "auto"
    attention: str = "sdpa"
    align: int | None = 8
    min_ratio: float = 1.05
    device: str = "cuda"
    max_graphs: int = 16

    def check(self) -> None:
        """Raise :class:`InputError` naming the first bad option."""
        if self.precision not in PRECISIONS:
            raise InputError(f"torch-cuda: precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if self.graph_mode not in GRAPH_MODES:
            raise InputError(f"torch-cuda: graph_mode {self.graph_mode!r}: expected one of {', '.join(GRAPH_MODES)}")
        for name in ("mux_kernel", "demux_kernel"):
            if getattr(self, name) not in _KERNEL_CHOICES:
                raise InputError(f"torch-cuda: {name}={getattr(self, name)!r}: expected one of "
                                 f"{', '.join(_KERNEL_CHOICES)}")
        if self.attention not in ("sdpa", "math"):
            raise InputError(f"torch-cuda: attention={self.attention!r}: expected 'sdpa' or 'math'")
        if any(int(b) < 1 for b in self.batch_sizes) or any(int(s) < 1 for s in self.seq_buckets):
            raise InputError("torch-cuda: batch and sequence buckets must be >= 1")
        if self.align is not None and int(self.align) < 1:
            raise InputError(f"torch-cuda: align={self.align}: must be >= 1 or None")
        if not self.min_ratio > 0 or int(self.max_graphs) < 1:
            raise InputError("torch-cuda: min_ratio must be > 0 and max_graphs >= 1")

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision]


def cuda_available() -> tuple[bool, str]:
    """``(True, description)`` with a CUDA device, else ``(False, reason)``."""
    if not torch.cuda.is_available():
        return False, "no CUDA device (torch.cuda.is_available() is False)"
    return True, (f"torch {torch.__version__} (CUDA {torch.version.cuda}) on {torch.cuda.get_device_name(0)}")


# ------------------------------------------------------------------------------------------------ IR file
def _encode(obj):
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"__ir__": type(obj).__name__, **{f.name: _encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(x) for x in obj]}
    if isinstance(obj, list):
        return [_encode(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _encode(v) for k, v in obj.items()}
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu").contiguous().clone()
    return obj


_IR_CLASSES = {cls.__name__: cls for cls in (ModelIR, Embeddings, Attention, FFN, Layer, Mux, Demux)}


def _decode(obj):
    if isinstance(obj, dict):
        if "__ir__" in obj:
            cls = _IR_CLASSES.get(obj["__ir__"])
            if cls is None:
                raise InputError(f"IR file: unknown record type {obj['__ir__']!r}")
            return cls(**{k: _decode(v) for k, v in obj.items() if k != "__ir__"})
        if set(obj) == {"__tuple__"}:
            return tuple(_decode(x) for x in obj["__tuple__"])
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(x) for x in obj]
    return obj


def save_ir(ir: ModelIR, path: str | Path) -> Path:
    """Write ``ir`` to ``path`` as plain containers of tensors (loadable with ``weights_only=True``)."""
    path = Path(path)
    torch.save({"format": _IR_FORMAT, "version": _IR_VERSION, "ir": _encode(ir)}, path)
    return path


def load_ir(path: str | Path) -> ModelIR:
    """Read an IR written by :func:`save_ir` (``torch.load(weights_only=True)``).

    Raises:
        InputError: missing file, not an IR file, or an unknown format version.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such IR file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors of many kinds
        raise InputError(f"{path}: not a readable IR file ({type(exc).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != _IR_FORMAT or data.get("version") != _IR_VERSION:
        raise InputError(f"{path}: not a prumux IR file of version {_IR_VERSION}")
    ir = _decode(data["ir"])
    if not isinstance(ir, ModelIR):
        raise InputError(f"{path}: the file does not hold a ModelIR")
    return ir


# ------------------------------------------------------------------------------------------------ IR prep
def compile_for_cuda(ir: ModelIR, align: int | None = 8, *, check_each: bool = True) -> tuple[ModelIR, list]:
    """The IR the engine runs: the full pass pipeline (passes not in ``ir.history`` yet) and ``align-dims``
    (if ``align``).

    Args:
        ir: any IR (masked or compressed).
        align: ``align-dims`` multiple, or None.
        check_each: check the IR invariants after every pass (the :class:`PassManager` contract); False checks
            once, on the result (the passes are the same; on BERT-base each check scans ~110M weights for
            NaN/Inf, which dominates compile time in benchmarks).

    Returns:
        ``(ir, pass reports)``.

    Raises:
        IRInvariantError: from the passes or the final check (message names the pass or "after align").
    """
    from prumux_compile.ir import check_invariants
    from prumux_compile.passes import PassManager, default_passes
    from prumux_compile.passes.align_dims import AlignDims

    todo = [p for p in default_passes("all") if p.name not in ir.history]
    if align:
        todo.append(AlignDims(int(align)))
    if not todo:
        return ir, []
    if check_each:
        return PassManager(todo).run(ir)
    reports = []
    for p in todo:
        ir, report = p.run(ir)
        reports.append(report)
    check_invariants(ir, where=f"after {', '.join(p.name for p in todo)}")
    return ir, reports


# ------------------------------------------------------------------------------------------------ model
def engine_model(ir: ModelIR, precision: str = "fp32", *, attention: str = "sdpa", device: str = "cpu"):
    """The compact model of a compiled IR (:class:`prumux_compile.kernels.CompiledModel`) at ``precision`` on
    ``device``, with the attention implementation set (kernels stay PyTorch until :func:`choose_kernels`).

    Raises:
        InputError: the IR still holds masks, or an unknown precision.
    """
    from prumux_compile.kernels import build_module

    if ir.masks is not None or ir.hidden_keep is not None or any(
            (l.attention is not None and l.attention.head_keep is not None)
            or (l.ffn is not None and l.ffn.dim_keep is not None) for l in ir.layers):
        raise InputError("torch-cuda: the IR still holds masks; run the pass pipeline first (compile_for_cuda)")
    if precision not in PRECISIONS:
        raise InputError(f"torch-cuda: precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    model = build_module(ir, PRECISIONS[precision]).to(device)
    model.set_kernels(attention=attention)
    return model


# ------------------------------------------------------------------------------------------------ timing
def cuda_time_ms(fn, *, rounds: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of ``fn()`` on the current CUDA stream (CUDA events; CPU wall clock on CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        for _ in range(rounds):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(rounds):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def choose_kernels(model, options: CudaOptions, batch: int, *, rounds: int = 20) -> dict:
    """Resolve ``"auto"`` mux / demux kernel choices by measurement and set them on ``model``
    (:meth:`prumux_compile.kernels.CompiledModel.set_kernels`).

    For each of mux / demux that the model has in the form the Triton kernel implements: ``"torch"``/``"triton"``
    options are taken as given; ``"auto"`` times both forms on ``batch`` rows (``ratio = torch_ms / triton_ms``,
    medians of ``rounds`` CUDA-event timings) and keeps Triton only when Triton is available, compiles and runs,
    the outputs agree (max |diff| <= 1e-3 fp32, 2e-2 otherwise) and ``ratio >= options.min_ratio``.

    Returns:
        ``{kind: {"choice", "why", "torch_ms", "triton_ms", "ratio", "max_abs_diff"}}`` (timings absent when
        not measured).

    Raises:
        EngineBuildError: a kernel requested as ``"triton"`` cannot run.
    """
    from prumux_compile.kernels.triton_demux import demux_first_torch, demux_first_triton
    from prumux_compile.kernels.triton_mux import mux_embed_torch, mux_embed_triton, triton_available

    dev = next((b.device for b in model.parameters()), torch.device("cpu"))
    report: dict = {}
    gen = torch.Generator(device="cpu").manual_seed(0)
    cases = {}
    n = model.num_instances
    g = max(1, -(-batch // n))
    if model.muxed and model.embed.triton_capable:
        e = model.embed
        ids = torch.randint(0, e.word.shape[0], (g * n, e.const.shape[0]), generator=gen).to(dev)
        args = (ids, e.word, e.const, e.scale, e.shift, e.eps, (e.ln.weight, e.ln.bias))
        cases["mux"] = (options.mux_kernel, lambda a=args: mux_embed_torch(*a), lambda a=args: mux_embed_triton(*a))
    if model.muxed and model.demux.triton_capable:
        shared, const = model.demux._p("dense_1.shared"), model.demux._p("dense_1.const")
        h = torch.randn((g, shared.shape[1]), generator=gen).to(dev, shared.dtype)
        args = (h, shared, const)
        cases["demux"] = (options.demux_kernel, lambda a=args: demux_first_torch(*a),
                          lambda a=args: demux_first_triton(*a))
    tol = 1e-3 if model.compute_dtype == torch.float32 else 2e-2
    ok, why_not = triton_available(dev)
    chosen = {"mux": "torch", "demux": "torch"}
    for kind, (want, torch_fn, triton_fn) in cases.items():
        if want == "torch" or (want == "auto" and not ok):
            report[kind] = {"choice": "torch", "why": "requested" if want == "torch" else why_not}
            continue
        if want == "triton" and not ok:
            raise EngineBuildError(f"torch-cuda: {kind}_kernel='triton' but {why_not}")
        try:
            diff = float((torch_fn().float() - triton_fn().float()).abs().max())
            t_ms = cuda_time_ms(torch_fn, rounds=rounds)
            k_ms = cuda_time_ms(triton_fn, rounds=rounds)
        except Exception as exc:  # a Triton compile/launch error: fall back (auto) or report (requested)
            if want == "triton":
                raise EngineBuildError(f"torch-cuda: Triton {kind} kernel failed: {type(exc).__name__}: "
                                       f"{str(exc).strip()[:200]}") from exc
            report[kind] = {"choice": "torch", "why": f"Triton failed: {type(exc).__name__}: {str(exc)[:200]}"}
            continue
        ratio = t_ms / k_ms if k_ms > 0 else float("inf")
        entry = {"torch_ms": t_ms, "triton_ms": k_ms, "ratio": ratio, "max_abs_diff": diff}
        if want == "triton":
            choice, why = "triton", "requested"
        elif diff > tol:
            choice, why = "torch", f"Triton output differs by {diff:.3g} > {tol:g}"
        elif ratio >= options.min_ratio:
            choice, why = "triton", f"Triton {ratio:.2f}x faster (>= {options.min_ratio:g})"
        else:
            choice, why = "torch", f"Triton only {ratio:.2f}x (< {options.min_ratio:g})"
        chosen[kind] = choice
        report[kind] = {"choice": choice, "why": why, **entry}
    model.set_kernels(mux=chosen["mux"], demux=chosen["demux"])
    return report


# ------------------------------------------------------------------------------------------------ runner
def _default_buckets(n: int) -> tuple[int, ...]:
    return tuple(n * (1 << i) for i in range(8))  # N·{1, 2, ..., 128}


class CudaRunner(Runner):
    """Runs the compact model with CUDA graphs per (batch, sequence) bucket (module docstring).

    Args:
        model: a :class:`prumux_compile.kernels.CompiledModel` on its device (:func:`engine_model`).
        spec: the model interface (input checks of :func:`prepare_feeds`).
        options: :class:`CudaOptions` (buckets, graph mode).
    """

    def __init__(self, model, spec, options: CudaOptions):
        self.model = model.eval()
        self.spec = spec
        self.options = options
        self.device = next((b.device for b in model.parameters()), torch.device("cpu"))
        n = model.num_instances
        raw = options.batch_sizes or _default_buckets(n)
        self.buckets = sorted({-(-int(b) // n) * n for b in raw})
        self.use_graphs = options.graph_mode != "eager" and self.device.type == "cuda"
        self.fn = model
        if options.graph_mode == "compile-cuda-graph":
            self.fn = torch.compile(model, dynamic=False)
        self._graphs: dict[tuple[int, int], tuple] = {}
        self.captures = 0

    # ---------------------------------------------------------------- shapes
    def _seq_bucket(self, s: int) -> int:
        if self.model.muxed:
            return int(self.model.seq_len)
        fits = [b for b in self.options.seq_buckets if b >= s and b <= self.spec.max_seq_len]
        return min(fits) if fits else s

    def _batch_bucket(self, b: int) -> int:
        fits = [x for x in self.buckets if x >= b]
        return min(fits) if fits else self.buckets[-1]

    @staticmethod
    def _pad(t: Tensor, rows: int, cols: int, fill: int) -> Tensor:
        b, s = t.shape
        if rows > b:
            t = torch.cat([t, t[-1:].expand(rows - b, s)], 0)
        if cols > s:
            t = torch.cat([t, t.new_full((rows, cols - s), fill)], 1)
        return t

    # ---------------------------------------------------------------- graphs
    def _graph(self, b: int, s: int):
        key = (b, s)
        if key in self._graphs:
            entry = self._graphs.pop(key)
            self._graphs[key] = entry  # most recently used last
            return entry
        while len(self._graphs) >= int(self.options.max_graphs):
            self._graphs.pop(next(iter(self._graphs)))
        dev = self.device
        static = [torch.zeros((b, s), dtype=torch.int64, device=dev) for _ in range(3)]
        static[1].fill_(1)  # ids 0 ([PAD]) are valid for every vocabulary
        side = torch.cuda.Stream(device=dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(2):
                self.fn(*static)
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            out = self.fn(*static)
        self.captures += 1
        self._graphs[key] = (graph, static, out)
        return self._graphs[key]

    def forward_device(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                       token_type_ids: Tensor | None = None) -> Tensor:
        """Logits float32 ``[B, C]`` (device tensor) for int64 device inputs ``[B, S]`` (no host copies; the
        timing path of the benchmarks). Batches are bucketed / chunked as described in the module docstring."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        b, s = input_ids.shape
        top = self.buckets[-1]
        if b > top:
            outs = [self.forward_device(input_ids[i:i + top], attention_mask[i:i + top], token_type_ids[i:i + top])
                    for i in range(0, b, top)]
            return torch.cat(outs, 0)
        sb = self._seq_bucket(s)
        if not self.use_graphs:
            with torch.no_grad():
                return self.fn(input_ids, attention_mask, token_type_ids)
        bb = self._batch_bucket(b)
        graph, static, out = self._graph(bb, sb)
        static[0].copy_(self._pad(input_ids, bb, sb, 0))
        static[1].copy_(self._pad(attention_mask, bb, sb, 0))
        static[2].copy_(self._pad(token_type_ids, bb, sb, 0))
        graph.replay()
        return out[:b].clone()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """See :meth:`Runner.run`: checked int64 feeds -> ``{"logits": float32 [B, C]}``."""
        if self.model is None:
            raise InputError("torch-cuda runner is closed")
        checked = prepare_feeds(feeds, self.spec)
        t = [torch.from_numpy(checked[k]).to(self.device) for k in ("input_ids", "attention_mask", "token_type_ids")]
        out = self.forward_device(*t)
        return {"logits": out.float().cpu().numpy()}

    def close(self) -> None:
        self._graphs.clear()
        self.model = None
        self.fn = None


# ------------------------------------------------------------------------------------------------ backend
class TorchCudaBackend(Backend):
    """``torch-cuda``: the compact model of :mod:`prumux_compile.kernels` on a CUDA device (module docstring).

    Options (``EngineConfig.options``): ``graph_mode``, ``mux_kernel``, ``demux_kernel``, ``attention``,
    ``align``, ``min_ratio``, ``max_graphs``, ``seq_buckets`` (:class:`CudaOptions`); precision and batch
    buckets come from the config's fields.

    Args:
        options: defaults for those options (``device`` says where engines run; ``"cpu"`` for tests).
    """

    name = "torch-cuda"
    precisions = tuple(PRECISIONS)
    option_names = ("graph_mode", "mux_kernel", "demux_kernel", "attention", "align", "min_ratio", "max_graphs",
                    "seq_buckets")

    def __init__(self, options: CudaOptions | None = None):
        self.options = options or CudaOptions()
        self.options.check()

    def eager_device(self) -> str:
        return torch.device(self.options.device).type

    def available(self) -> tuple[bool, str]:
        if torch.device(self.options.device).type == "cpu":
            return True, f"torch {torch.__version__} on the CPU (eager; for tests)"
        return cuda_available()

    def _options(self, config: EngineConfig) -> CudaOptions:
        fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.options.items()}
        opts = dataclasses.replace(self.options, precision=config.precision, **fields)
        if config.batch_sizes:
            opts = dataclasses.replace(opts, batch_sizes=tuple(int(b) for b in config.batch_sizes))
        opts.check()
        return opts

    def build(self, compiled: Compiled | str | Path, config: EngineConfig | None = None) -> Artifact:
        """Compile (passes + align-dims), build the compact model at the config's precision, choose kernels by
        measurement, write ``model.engine-ir.pt`` (the artifact).

        Returns:
            :class:`Artifact` whose ``report`` holds ``options``, ``passes`` (names), ``kernels``
            (:func:`choose_kernels`), ``kernel_choice``, ``device`` and ``params``.

        Raises:
            EngineBuildError: unavailable, no IR in ``compiled``, or a requested Triton kernel cannot run.
        """
        from prumux_compile.export.spec import spec_for_ir

        compiled, config, out_dir = self._start_build(compiled, config)
        if compiled.ir is None:
            raise EngineBuildError(f"{self.name} builds from the compiled IR, not from the ONNX graph: pass "
                                   "Compiled(onnx_path, spec, ir)")
        opts = self._options(config)
        ir, reports = compile_for_cuda(compiled.ir, opts.align)
        model = engine_model(ir, opts.precision, attention=opts.attention, device=opts.device)
        batch = config.profile_batches(ir.num_instances)[0]
        if opts.graph_mode == "compile-cuda-graph":  # inductor fuses the PyTorch forms itself
            opts = dataclasses.replace(opts, mux_kernel="torch", demux_kernel="torch")
        kernels = choose_kernels(model, opts, batch)
        path = save_ir(ir, out_dir / IR_FILENAME)
        report = {"backend": self.name, "options": asdict(opts), "device": self.available()[1],
                  "passes": [r.name for r in reports if r.changed], "kernels": kernels,
                  "kernel_choice": dict(model.kernels), "params": ir.total_params()}
        dev = torch.device(opts.device).type
        deployment = Deployment(platform=None, instance_kind="KIND_GPU" if dev == "cuda" else "KIND_CPU",
                                model_file=IR_FILENAME)
        return Artifact(backend=self.name, path=path, files={"plain": Path(compiled.onnx_path), "ir": path},
                        spec=spec_for_ir(ir), precision=opts.precision, deployment=deployment, device=dev,
                        report=report, runnable=("ir",), sha256=file_sha256(path))

    def load(self, artifact: Artifact) -> CudaRunner:
        """A :class:`CudaRunner` for the artifact (precision, options and kernel choices as recorded at build)."""
        self._check_artifact(artifact)
        if artifact.role != "ir":
            raise InputError(f"torch-cuda loads only its IR artifact, not {artifact.path.name}")
        recorded = dict(artifact.report.get("options", {}))
        recorded = {k: (tuple(v) if isinstance(v, list) else v) for k, v in recorded.items()}
        opts = CudaOptions(**{**asdict(self.options), **recorded})
        model = engine_model(load_ir(artifact.path), opts.precision, attention=opts.attention, device=opts.device)
        choice = artifact.report.get("kernel_choice", {})
        model.set_kernels(mux=choice.get("mux", "torch"), demux=choice.get("demux", "torch"))
        return CudaRunner(model, artifact.spec, opts)
