"""CUDA engine (``torch-cuda`` backend): the compact model after all passes, in PyTorch on the GPU.

What it runs (:class:`CudaCompactModel`, built from the compiled IR alone, DESIGN.md "Contracts"):

* the IR after the whole pass pipeline (:func:`prumux_compile.passes.compile_ir`) plus, by default, the
  exact ``align-dims`` pass (heads / FFN dims zero-padded to multiples of 8 elements, spec E9, F16);
* precision ``fp32``, ``fp16`` or ``bf16``: GEMMs (Q/K/V fused into one, Wo, FFN, demux dense layers) in the
  chosen dtype with float32 accumulation; the residual stream, every LayerNorm, the mux statistics, the
  classifier and pooler in float32; attention through ``F.scaled_dot_product_attention``, whose fused kernels
  keep the softmax in float32 registers (``attention="math"`` materialises float32 scores and softmax
  instead). That is fault class F8: LayerNorm, softmax and reductions never run in fp16 (spec E10);
* the fused Triton multiplexer / demultiplexer (:mod:`prumux_compile.kernels.triton_mux`,
  :mod:`~prumux_compile.kernels.triton_demux`) where they beat their PyTorch form by ``min_ratio`` on the
  machine that builds (``"auto"``: measured at build time, recorded in the artifact report);
* CUDA graphs captured lazily per (batch bucket, sequence bucket): a batch is padded with copies of its last
  row up to the smallest bucket (bucket sizes are multiples of N, so mux groups of the real rows are exactly
  those of the unpadded batch: the same "repeat-last" policy as the compiled model, F18) and the graph
  replays; batches beyond the largest bucket run in chunks of it. ``graph_mode="compile-cuda-graph"``
  wraps the model in ``torch.compile`` first (kernels then stay PyTorch so inductor can fuse them);
  ``"eager"`` disables graphs. Which is faster is measured by ``scripts/gpu_bench.py``.

Input semantics are those of :class:`prumux_compile.kernels.CompiledModel` (multiplexed families: batch
padded to a multiple of N by repeating the last row, sequence padded with [PAD] to the compiled length,
[CLS] forced in column 0 / the ``index`` prefix prepended, mask and token types ignored; N = 1: BERT with
additive mask -10000 and token types). Fidelity is checked by :func:`validate_runner` against
:func:`prumux_compile.reference.forward` with the per-precision criteria of
:data:`prumux_compile.engines.trt_onnx.TOLERANCES`.

The engine builds from the IR, not from ONNX: :meth:`TorchCudaBackend.build` reads ``model.ir.pt``
(:func:`save_ir`) next to ``model.onnx``; :meth:`TorchCudaBackend.build_from_ir` takes an IR directly.
Nothing here needs CUDA at import time; the model also runs on the CPU (eager, PyTorch kernels), which is how
it is tested on machines without a GPU.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from prumux_compile.engines.base import Artifact, Backend, BuildSpec, Runner, prepare_feeds
from prumux_compile.errors import EngineBuildError, InputError, ValidationError
from prumux_compile.ir import FFN, Attention, Demux, Embeddings, Layer, ModelIR, Mux

__all__ = ["CudaOptions", "CudaCompactModel", "CudaRunner", "TorchCudaBackend", "compile_for_cuda", "save_ir",
           "load_ir", "choose_kernels", "validate_runner", "cuda_time_ms", "IR_FILENAME", "PRECISIONS",
           "GRAPH_MODES"]

IR_FILENAME = "model.ir.pt"
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
GRAPH_MODES = ("eager", "cuda-graph", "compile-cuda-graph")
_KERNEL_CHOICES = ("auto", "triton", "torch")
_CLS_ID = 101
_MASK_VALUE = -10000.0
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
def _buf(module: nn.Module, name: str, t: Tensor, dtype: torch.dtype) -> None:
    module.register_buffer(name, t.detach().to(dtype).contiguous().clone(), persistent=False)


class _Attention(nn.Module):
    """``x = LN(x + Attn(x))`` (spec §2.5) with fused QKV; input/output fp32 residual ``[B, L, d']``."""

    def __init__(self, a: Attention, eps: float, cd: torch.dtype, impl: str):
        super().__init__()
        self.heads, self.dh = a.heads, a.head_size
        self.width = a.heads * a.head_size
        self.scale = 1.0 if a.q_prescaled else 1.0 / math.sqrt(a.head_size)
        self.eps, self.cd, self.impl = float(eps), cd, impl
        _buf(self, "wqkv", torch.cat([a.wq, a.wk, a.wv], 0), cd)
        _buf(self, "bqkv", torch.cat([a.bq, a.bk, a.bv], 0), cd)
        _buf(self, "wo", a.wo, cd)
        _buf(self, "bo", a.bo, cd)
        _buf(self, "ln_w", a.ln_weight, torch.float32)
        _buf(self, "ln_b", a.ln_bias, torch.float32)

    def _split(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, self.dh).transpose(1, 2)

    def forward(self, x: Tensor, mask: Tensor | None, out_rows: int | None) -> Tensor:
        xc = x.to(self.cd)
        w = self.width
        if out_rows is None:
            q, k, v = F.linear(xc, self.wqkv, self.bqkv).split(w, dim=-1)
        else:
            q = F.linear(xc[:, :out_rows], self.wqkv[:w], self.bqkv[:w])
            k, v = F.linear(xc, self.wqkv[w:], self.bqkv[w:]).split(w, dim=-1)
        q, k, v = self._split(q), self._split(k), self._split(v)
        if self.impl == "sdpa":
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        else:  # explicit float32 scores and softmax
            scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * self.scale
            if mask is not None:
                scores = scores + mask.float()
            ctx = torch.matmul(torch.softmax(scores, dim=-1).to(self.cd), v)
        b, _, n, _ = ctx.shape
        o = F.linear(ctx.transpose(1, 2).reshape(b, n, w), self.wo, self.bo)
        res = x if out_rows is None else x[:, :out_rows]
        return F.layer_norm(res + o, (res.shape[-1],), self.ln_w, self.ln_b, self.eps)


class _FeedForward(nn.Module):
    """``x = LN(x + gelu(x W1ᵀ + b1) W2ᵀ + b2)`` (erf GELU); fp32 residual in and out."""

    def __init__(self, f: FFN, eps: float, cd: torch.dtype):
        super().__init__()
        self.eps, self.cd = float(eps), cd
        for name in ("w1", "b1", "w2", "b2"):
            _buf(self, name, getattr(f, name), cd)
        _buf(self, "ln_w", f.ln_weight, torch.float32)
        _buf(self, "ln_b", f.ln_bias, torch.float32)

    act = staticmethod(F.gelu)  # replaced by config.hidden_act's function (fault class F22)

    def forward(self, x: Tensor) -> Tensor:
        u = self.act(F.linear(x.to(self.cd), self.w1, self.b1))
        return F.layer_norm(x + F.linear(u, self.w2, self.b2), (x.shape[-1],), self.ln_w, self.ln_b, self.eps)


class _Layer(nn.Module):
    def __init__(self, layer: Layer, eps: float, cd: torch.dtype, impl: str):
        super().__init__()
        self.attention = _Attention(layer.attention, eps, cd, impl) if layer.attention is not None else None
        self.ffn = _FeedForward(layer.ffn, eps, cd) if layer.ffn is not None else None
        self.out_rows = layer.out_rows

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        if self.attention is not None:
            x = self.attention(x, mask, self.out_rows)
        elif self.out_rows is not None:
            x = x[:, : self.out_rows]
        if self.ffn is not None:
            x = self.ffn(x)
        return x


class CudaCompactModel(nn.Module):
    """The compact model of a compiled IR at one precision (module docstring).

    Args:
        ir: an IR after the pass pipeline (no masks; see :func:`compile_for_cuda`).
        precision: key of :data:`PRECISIONS`.
        mux_kernel / demux_kernel: ``"triton"`` or ``"torch"`` (resolved choices, not ``"auto"``).
        attention: ``"sdpa"`` or ``"math"``.

    Forward: ``(input_ids, attention_mask, token_type_ids)`` int64 ``[B, S]`` tensors on the model's device
    -> ``logits`` float32 ``[B, C]``.

    Raises:
        InputError: the IR still holds masks, or a kernel choice is not resolved / not supported.
    """

    def __init__(self, ir: ModelIR, precision: str = "fp32", *, mux_kernel: str = "torch",
                 demux_kernel: str = "torch", attention: str = "sdpa"):
        super().__init__()
        from prumux_compile.kernels.demux import Demultiplexer
        from prumux_compile.kernels.model import index_prefix
        from prumux_compile.kernels.mux import MuxEmbedding

        if ir.masks is not None or ir.hidden_keep is not None or any(
                (l.attention is not None and l.attention.head_keep is not None)
                or (l.ffn is not None and l.ffn.dim_keep is not None) for l in ir.layers):
            raise InputError("torch-cuda: the IR still holds masks; run the pass pipeline first (compile_for_cuda)")
        if precision not in PRECISIONS:
            raise InputError(f"torch-cuda: precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        cd = PRECISIONS[precision]
        self.precision, self.cd = precision, cd
        self.eps = float(ir.eps)
        self.muxed = ir.is_muxed
        self.n = ir.num_instances
        self.seq_len = ir.seq_len
        self.num_labels = ir.num_labels
        self.layers = nn.ModuleList(_Layer(l, ir.eps, cd, attention) for l in ir.layers)
        from prumux_compile.kernels.activations import activation_function  # config.hidden_act (F22)
        for layer in self.layers:
            if layer.ffn is not None:
                layer.ffn.act = activation_function(ir.activation)
        _buf(self, "cls_w", ir.classifier[0], torch.float32)
        _buf(self, "cls_b", ir.classifier[1], torch.float32)
        self.kernels = {"mux": mux_kernel, "demux": demux_kernel}
        self.fused_mux = self.own_demux = self.demux_fused = False
        e = ir.embeddings
        if not self.muxed:
            for name in ("word", "position", "token_type"):
                _buf(self, name, getattr(e, name), torch.float32)
            _buf(self, "emb_ln_w", e.ln_weight, torch.float32)
            _buf(self, "emb_ln_b", e.ln_bias, torch.float32)
            _buf(self, "pool_w", ir.pooler[0], torch.float32)
            _buf(self, "pool_b", ir.pooler[1], torch.float32)
            self.set_kernels("torch", "torch")
            return
        self.demux_variant = ir.demux.variant
        extra = self.n + 1 if self.demux_variant == "index" else 0
        self.length = int(ir.seq_len) + extra
        if self.demux_variant == "index":
            self.register_buffer("prefix", index_prefix(self.n), persistent=False)
        mux = ir.mux
        self.fused_mux = mux.fused_scale is not None and mux.variant != "random_ortho"
        if self.fused_mux:
            _buf(self, "word", e.word, torch.float32)
            _buf(self, "const", e.position[: self.length] + e.token_type[0], torch.float32)
            _buf(self, "mux_scale", mux.fused_scale, torch.float32)
            _buf(self, "mux_shift", mux.fused_shift, torch.float32)
            _buf(self, "emb_ln_w", e.ln_weight, torch.float32)
            _buf(self, "emb_ln_b", e.ln_bias, torch.float32)
        else:  # random_ortho or unfused: the compiled model's module, float32
            self.mux_module = MuxEmbedding(e, mux, ir.eps, self.length)
        dm = ir.demux
        self.own_demux = dm.variant == "index_pos"
        if self.own_demux:
            t = dm.tensors
            self.demux_fused = dm.fused
            self.legacy = dm.legacy
            self.num_dense = dm.num_layers
            if dm.fused:
                _buf(self, "d1_shared", t["dense_1.shared"], cd)
                _buf(self, "d1_const", t["dense_1.const"], torch.float32)
            else:
                _buf(self, "d1_e", t["demux_instance_embedding"], torch.float32)
                _buf(self, "d1_w", t["dense_1.weight"], cd)
                _buf(self, "d1_b", t["dense_1.bias"], cd)
            if dm.legacy:
                _buf(self, "ln1_w", t["layer_norm_1.weight"], torch.float32)
                _buf(self, "ln1_b", t["layer_norm_1.bias"], torch.float32)
            for k in range(2, self.num_dense + 1):
                _buf(self, f"d{k}_w", t[f"dense_{k}.weight"], cd)
                _buf(self, f"d{k}_b", t[f"dense_{k}.bias"], cd)
            _buf(self, "pre_w", t["pre_decoder.weight"], cd)
            _buf(self, "pre_b", t["pre_decoder.bias"], cd)
            _buf(self, "pre_ln_w", t["pre_decoder_layer_norm.weight"], torch.float32)
            _buf(self, "pre_ln_b", t["pre_decoder_layer_norm.bias"], torch.float32)
        else:  # mlp / index: the compiled model's demultiplexer, float32 (a few rows per group)
            self.demux_module = Demultiplexer(dm, self.n, ir.eps)
        self.set_kernels(self.kernels["mux"], self.kernels["demux"])

    def set_kernels(self, mux: str, demux: str) -> None:
        """Use the Triton (``"triton"``) or PyTorch (``"torch"``) form of the fused mux / demux (only where the
        model has that fused layer; otherwise the choice stays ``"torch"``). Imports the kernel modules here,
        not in ``forward``.

        Raises:
            InputError: a choice other than ``"torch"`` / ``"triton"``.
        """
        from prumux_compile.kernels import triton_demux, triton_mux

        for kind, choice in (("mux", mux), ("demux", demux)):
            if choice not in ("torch", "triton"):
                raise InputError(f"torch-cuda: {kind} kernel {choice!r} must be resolved to 'torch' or 'triton'")
        has_mux = self.muxed and self.fused_mux
        has_demux = self.muxed and self.own_demux and self.demux_fused
        self.kernels = {"mux": mux if has_mux else "torch", "demux": demux if has_demux else "torch"}
        self._mux_fn = triton_mux.mux_embed_triton if self.kernels["mux"] == "triton" else triton_mux.mux_embed_torch
        self._demux_fn = (triton_demux.demux_first_triton if self.kernels["demux"] == "triton"
                          else triton_demux.demux_first_torch)

    # -------------------------------------------------------------------------------- pieces
    def embed_muxed(self, ids: Tensor) -> Tensor:
        """Multiplexed embeddings: ids ``[G*N, L']`` -> fp32 ``[G, L', d']``."""
        if not self.fused_mux:
            return self.mux_module(ids).float()
        return self._mux_fn(ids, self.word, self.const, self.mux_scale, self.mux_shift, self.eps,
                            (self.emb_ln_w, self.emb_ln_b), out_dtype=torch.float32)

    def demux_first(self, h: Tensor) -> Tensor:
        """First index_pos demux layer, fused form: ``h [G, d']`` fp32 -> ``[G, N, D]`` in the compute dtype."""
        return self._demux_fn(h.to(self.cd), self.d1_shared, self.d1_const)

    def _demux_index_pos(self, x: Tensor) -> Tensor:
        g, n, cd = x.shape[0], self.n, self.cd
        h = x[:, 0]
        if self.demux_fused:
            y = self.demux_first(h).float()
        else:
            e = self.d1_e
            u = torch.cat([e[None].expand(g, n, e.shape[1]), h[:, None, :].expand(g, n, h.shape[1])], dim=-1)
            y = F.gelu(F.linear(u.to(cd), self.d1_w, self.d1_b)).float()
        if self.legacy:
            y = F.layer_norm(y, (y.shape[-1],), self.ln1_w, self.ln1_b, self.eps)
        for k in range(2, self.num_dense + 1):
            y = F.gelu(F.linear(y.to(cd), getattr(self, f"d{k}_w"), getattr(self, f"d{k}_b"))).float() + y
        p = F.gelu(F.linear(y.to(cd), self.pre_w, self.pre_b)).float()
        z = F.layer_norm(p, (p.shape[-1],), self.pre_ln_w, self.pre_ln_b, self.eps) + y
        return z.reshape(g * n, z.shape[-1])

    # -------------------------------------------------------------------------------- forward
    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> Tensor:
        if self.muxed:
            return self._forward_muxed(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        s = input_ids.shape[1]
        y = F.embedding(input_ids, self.word) + self.position[:s] + F.embedding(token_type_ids, self.token_type)
        x = F.layer_norm(y, (y.shape[-1],), self.emb_ln_w, self.emb_ln_b, self.eps)
        mask = ((1.0 - attention_mask[:, None, None, :].to(torch.float32)) * _MASK_VALUE).to(self.cd)
        for layer in self.layers:
            x = layer(x, mask)
        pooled = torch.tanh(F.linear(x[:, 0], self.pool_w, self.pool_b))
        return F.linear(pooled, self.cls_w, self.cls_b)

    def _forward_muxed(self, input_ids: Tensor) -> Tensor:
        n = self.n
        b, s = input_ids.shape
        groups = (b + n - 1) // n
        rows = torch.arange(groups * n, device=input_ids.device).clamp(max=b - 1)
        ids = input_ids.index_select(0, rows)
        ids = torch.cat([ids, ids.new_zeros(groups * n, self.seq_len - s)], 1)
        if self.demux_variant == "index":
            ids = torch.cat([self.prefix.repeat(groups, 1), ids], 1)
        else:
            ids = torch.cat([torch.full_like(ids[:, :1], _CLS_ID), ids[:, 1:]], 1)
        x = self.embed_muxed(ids)
        for layer in self.layers:
            x = layer(x, None)
        z = self._demux_index_pos(x) if self.own_demux else self.demux_module(x.float())
        return F.linear(z, self.cls_w, self.cls_b)[:b]


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


def choose_kernels(model: CudaCompactModel, options: CudaOptions, batch: int, *, rounds: int = 20) -> dict:
    """Resolve ``"auto"`` kernel choices by measurement and set them on ``model``.

    For each of mux / demux that the model uses in its fused form: ``"torch"``/``"triton"`` options are taken
    as given; ``"auto"`` times both forms on ``batch`` rows (``ratio = torch_ms / triton_ms``, medians of
    ``rounds`` CUDA-event timings) and keeps Triton only when Triton is available, compiles and runs, the outputs
    agree (max |diff| <= 1e-3 fp32, 2e-2 otherwise) and ``ratio >= options.min_ratio``.

    Returns:
        ``{kind: {"choice", "why", "torch_ms", "triton_ms", "ratio", "max_abs_diff"}}`` (timings absent when
        not measured).

    Raises:
        EngineBuildError: a kernel requested as ``"triton"`` cannot run.
    """
    from prumux_compile.kernels.triton_demux import demux_first_torch, demux_first_triton
    from prumux_compile.kernels.triton_mux import mux_embed_torch, mux_embed_triton, triton_available

    dev = next((b.device for b in model.buffers()), torch.device("cpu"))
    report: dict = {}
    gen = torch.Generator(device="cpu").manual_seed(0)
    cases = {}
    if model.muxed and model.fused_mux:
        g = max(1, -(-batch // model.n))
        ids = torch.randint(0, model.word.shape[0], (g * model.n, model.length), generator=gen).to(dev)
        args = (ids, model.word, model.const, model.mux_scale, model.mux_shift, model.eps,
                (model.emb_ln_w, model.emb_ln_b))
        cases["mux"] = (options.mux_kernel, lambda: mux_embed_torch(*args), lambda: mux_embed_triton(*args))
    if model.muxed and model.own_demux and model.demux_fused:
        g = max(1, -(-batch // model.n))
        h = torch.randn((g, model.d1_shared.shape[1]), generator=gen).to(dev, model.cd)
        args = (h, model.d1_shared, model.d1_const)
        cases["demux"] = (options.demux_kernel, lambda: demux_first_torch(*args),
                          lambda: demux_first_triton(*args))
    tol = 1e-3 if model.cd == torch.float32 else 2e-2
    ok, why_not = triton_available(dev)
    chosen = {"mux": "torch", "demux": "torch"}
    for kind, (want, torch_fn, triton_fn) in cases.items():
        if want == "torch" or (want == "auto" and not ok):
            chosen[kind] = "torch"
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
            chosen[kind] = "torch"
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
    model.set_kernels(chosen["mux"], chosen["demux"])
    return report


# ------------------------------------------------------------------------------------------------ runner
def _default_buckets(n: int) -> tuple[int, ...]:
    return tuple(n * (1 << i) for i in range(8))  # N·{1, 2, ..., 128}


class CudaRunner(Runner):
    """Runs a :class:`CudaCompactModel` with CUDA graphs per (batch, sequence) bucket (module docstring).

    Args:
        model: the model (on its device).
        spec: the model interface (input checks of :func:`prepare_feeds`).
        options: :class:`CudaOptions` (buckets, graph mode).
    """

    def __init__(self, model: CudaCompactModel, spec, options: CudaOptions):
        self.model = model.eval()
        self.spec = spec
        self.options = options
        self.device = next((b.device for b in model.buffers()), torch.device("cpu"))
        n = model.n
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


# ------------------------------------------------------------------------------------------------ validation
def validate_runner(runner, raw, precision: str, *, seq_len: int, seq: int | None = None,
                    batches: list[int] | None = None, seed: int = 0, ref_dtype: torch.dtype = torch.float64) -> dict:
    """Compare a runner's logits with the reference (:func:`prumux_compile.reference.forward`).

    Per batch: finite and within :data:`~prumux_compile.engines.trt_onnx.TOLERANCES` ``[key]`` (``fp32-cuda``
    for fp32, else the precision); over all rows: argmax agreement >= the precision's bound; the caller's
    arrays unchanged and a second call bit-identical (F18).

    Args:
        runner: anything with ``run(feeds) -> {"logits"}`` (e.g. :class:`CudaRunner`).
        raw: the checkpoint the engine was compiled from.
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"``.
        seq_len: compiled length of a multiplexed model; seq: input length (default seq_len, N = 1: 32).
        batches: default :func:`prumux_compile.engines.trt_onnx.validation_batches`.
        seed: input seed; ref_dtype: reference dtype.

    Returns:
        ``{"precision", "tolerance_key", "batches": [...], "rows", "max_abs_diff", "argmax_agreement", "ok"}``.

    Raises:
        ValidationError: outside tolerance, NaN/Inf, agreement below the bound, inputs modified, or
            non-deterministic output (exit 3).
    """
    from prumux_compile import reference
    from prumux_compile.engines.trt_onnx import fidelity, validation_batches
    from prumux_compile.export.inputs import realistic_inputs

    key = "fp32-cuda" if precision == "fp32" else precision
    vocab = int(raw.state_dict["bert.embeddings.word_embeddings.weight"].shape[0])
    length = int(seq or (seq_len if raw.is_muxed else 32))
    results, outs, refs = [], [], []
    for i, b in enumerate(batches or validation_batches(raw.num_instances)):
        feeds = realistic_inputs(b, length, vocab, seed=seed + i, type_vocab_size=int(
            raw.state_dict["bert.embeddings.token_type_embeddings.weight"].shape[0]))  # F20
        before = {k: v.copy() for k, v in feeds.items()}
        logits = runner.run(feeds)["logits"]
        again = runner.run(feeds)["logits"]
        ref = reference.forward(raw, feeds["input_ids"], feeds["attention_mask"], feeds["token_type_ids"],
                                seq_len=seq_len, dtype=ref_dtype).double().numpy()
        res = fidelity(logits, ref, key)
        res["deterministic"] = bool(np.array_equal(logits, again))
        res["inputs_unchanged"] = all(np.array_equal(before[k], feeds[k]) for k in feeds)
        results.append({"batch": b, **res})
        outs.append(np.asarray(logits, np.float64))
        refs.append(ref)
    total = fidelity(np.concatenate(outs), np.concatenate(refs), key)
    bad = [r for r in results if not (r["finite"] and r["max_excess"] <= 0 and r["deterministic"]
                                      and r["inputs_unchanged"])]
    report = {"precision": precision, "tolerance_key": key, "batches": results, "rows": total["rows"],
              "max_abs_diff": total["max_abs_diff"], "argmax_agreement": total["argmax_agreement"],
              "ok": not bad and total["ok"]}
    if not report["ok"]:
        r = bad[0] if bad else total
        what = ("NaN/Inf in logits" if not r["finite"] else
                "output changed between two identical calls" if not r.get("deterministic", True) else
                "the caller's input arrays were modified" if not r.get("inputs_unchanged", True) else
                f"max |diff| {r['max_abs_diff']:.3g} vs tolerance {r['tolerance']}, argmax agreement "
                f"{r['argmax_agreement']:.4f}")
        raise ValidationError(f"torch-cuda ({precision}) disagrees with the reference at batch "
                              f"{r.get('batch', 'all')}: {what}")
    return report


# ------------------------------------------------------------------------------------------------ backend
class TorchCudaBackend(Backend):
    """``torch-cuda``: the compact model on a CUDA device (module docstring).

    Args:
        options: :class:`CudaOptions` (the engine-independent :class:`BuildSpec` has no precision field).
    """

    name = "torch-cuda"

    def __init__(self, options: CudaOptions | None = None):
        self.options = options or CudaOptions()
        self.options.check()

    def available(self) -> tuple[bool, str]:
        if torch.device(self.options.device).type == "cpu":
            return True, f"torch {torch.__version__} on the CPU (eager; for tests)"
        return cuda_available()

    def build(self, onnx_path: str | Path, spec: BuildSpec | None = None) -> Artifact:
        """Build from the IR saved next to ``model.onnx`` (``model.ir.pt``, :func:`save_ir`).

        Raises:
            EngineBuildError: unavailable, or no IR file next to the ONNX file.
        """
        onnx_path = Path(onnx_path)
        ir_path = onnx_path.parent / IR_FILENAME
        if not ir_path.is_file():
            raise EngineBuildError(f"{self.name} builds from the compiled IR, not from the ONNX graph: {ir_path} is "
                                   "missing (write it with prumux_compile.engines.torch_cuda.save_ir(ir, path) "
                                   "when exporting, or call TorchCudaBackend.build_from_ir)")
        return self.build_from_ir(load_ir(ir_path), out_dir=(spec.out_dir if spec and spec.out_dir else
                                                             onnx_path.parent), spec=spec)

    def build_from_ir(self, ir: ModelIR, out_dir: str | Path, spec: BuildSpec | None = None) -> Artifact:
        """Compile (passes + align-dims), choose kernels by measurement, write ``<out_dir>/model.engine-ir.pt``.

        Returns:
            :class:`Artifact` whose ``report`` holds ``options``, ``passes`` (names), ``kernels``
            (:func:`choose_kernels`), ``device`` and ``params``.

        Raises:
            EngineBuildError: the backend is unavailable or a requested Triton kernel cannot run.
        """
        from prumux_compile.export.spec import spec_for_ir

        ok, reason = self.available()
        if not ok:
            raise EngineBuildError(f"backend {self.name} is unavailable: {reason}")
        spec = spec or BuildSpec()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        compiled, reports = compile_for_cuda(ir, self.options.align)
        model = CudaCompactModel(compiled, self.options.precision, attention=self.options.attention,
                                 mux_kernel="torch", demux_kernel="torch").to(self.options.device)
        batch = int(spec.bench_batch or 8 * compiled.num_instances)
        opts = self.options
        if opts.graph_mode == "compile-cuda-graph":  # inductor fuses the PyTorch forms itself
            opts = dataclasses.replace(opts, mux_kernel="torch", demux_kernel="torch")
        kernels = choose_kernels(model, opts, batch)
        path = save_ir(compiled, out_dir / "model.engine-ir.pt")
        report = {"backend": self.name, "options": asdict(self.options), "device": self.available()[1],
                  "passes": [r.name for r in reports if r.changed], "kernels": kernels,
                  "kernel_choice": dict(model.kernels), "params": compiled.total_params()}
        return Artifact(backend=self.name, path=path, files={"ir": path}, spec=spec_for_ir(compiled), report=report)

    def load(self, artifact: Artifact) -> CudaRunner:
        """A :class:`CudaRunner` for the artifact (kernel choices as recorded at build time)."""
        if artifact.backend != self.name:
            raise InputError(f"artifact was built by {artifact.backend}, not {self.name}")
        opts = CudaOptions(**{**asdict(self.options), **artifact.report.get("options", {})})
        choice = artifact.report.get("kernel_choice", {})
        model = CudaCompactModel(load_ir(artifact.path), opts.precision, attention=opts.attention,
                                 mux_kernel=choice.get("mux", "torch"),
                                 demux_kernel=choice.get("demux", "torch")).to(opts.device)
        return CudaRunner(model, artifact.spec, opts)
