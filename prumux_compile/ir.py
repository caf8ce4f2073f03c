"""The intermediate representation (IR) of a (multiplexed, pruned) BERT classifier.

The IR is backend-free: float32 torch tensors plus small specs. Every width is the width of the tensors it
holds (widths are taken from weight shapes, never from config.json: docs/checkpoint-formats.md §1.3, §1.4).
An IR is executable at every stage of the pass pipeline by :func:`prumux_compile.kernels.build_module`, which is what lets every pass
be tested by running the model before and after it.

Stages an IR goes through (``ModelIR.history`` records the passes applied):

* straight from a full + masks checkpoint (families B/E): ``masks`` holds the soft ``zs.pt`` tensors;
  only ``fold-masks`` may run on it (the kernels refuse soft masks).
* after ``fold-masks``: weights carry the mask values (docs/checkpoint-formats.md §2.9); binary *keep* masks remain
  (``ModelIR.hidden_keep``, ``Attention.head_keep``, ``FFN.dim_keep``) and the kernels honour them
  (LayerNorm statistics over kept hidden dims, pruned dims held at 0, removed heads/dims multiplied by 0).
* after the prune passes: no keep masks are left, tensors are physically sliced, and a sublayer with nothing
  kept is ``None`` (identity residual, no bias, no LayerNorm; field faults F1 in docs/field-faults.md, F2).

Notation (docs/checkpoint-formats.md): N = ``num_instances``, d' = kept hidden dims, h_i / f_i = heads /
FFN dims of layer i, dh = head size (original hidden_size / num_attention_heads).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from prumux_compile.errors import IRInvariantError

#: ``config.hidden_act`` values the compiled model implements (kernels/activations.py) and the reference implements
#: from their formulas (reference.py); every other value is refused at load (field fault F22 in docs/field-faults.md). Names and formulas
#: are transformers' ``ACT2FN`` (``activations.py``): ``gelu``/``gelu_python`` exact erf GELU; ``gelu_new``,
#: ``gelu_pytorch_tanh``, ``gelu_python_tanh``, ``gelu_accurate`` the tanh approximation
#: ``0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3)))``; ``gelu_fast`` the same with the constant 0.7978845608;
#: ``gelu_10`` erf GELU clipped to [-10, 10]; ``quick_gelu`` ``x·sigmoid(1.702x)``; ``relu``; ``relu2`` ``relu(x)^2``;
#: ``relu6``; ``leaky_relu`` (slope 0.01); ``silu``/``swish`` ``x·sigmoid(x)``; ``mish`` ``x·tanh(softplus(x))``;
#: ``hardswish`` ``x·relu6(x+3)/6``; ``tanh``; ``sigmoid``; ``linear`` (identity).
ACTIVATIONS = ("gelu", "gelu_python", "gelu_new", "gelu_pytorch_tanh", "gelu_python_tanh", "gelu_accurate",
               "gelu_fast", "gelu_10", "quick_gelu", "relu", "relu2", "relu6", "leaky_relu", "silu", "swish", "mish",
               "hardswish", "tanh", "sigmoid", "linear")
#: ``config.problem_type`` values of transformers' sequence classifiers (they choose the loss, not the logits).
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


@dataclass
class Embeddings:
    """Token, position and token-type tables plus the embedding LayerNorm.

    Shapes: ``word [V, d']``, ``position [P, d']``, ``token_type [T, d']``, ``ln_weight/ln_bias [d']``.
    """

    word: Tensor
    position: Tensor
    token_type: Tensor
    ln_weight: Tensor
    ln_bias: Tensor


@dataclass
class Attention:
    """One self-attention sublayer with its own head count (post-LN BERT, docs/checkpoint-formats.md §2.5).

    Shapes (h = ``heads``): ``wq, wk, wv [h*dh, d']``, ``bq, bk, bv [h*dh]``, ``wo [d', h*dh]``, ``bo [d']``,
    ``ln_weight/ln_bias [d']``.

    Attributes:
        head_ids: original ids (0..H-1) of the heads present, ascending.
        head_keep: bool ``[h]`` or None; False heads are multiplied by 0 until ``prune-heads`` slices them.
        q_prescaled: True once the 1/sqrt(dh) attention scale is folded into ``wq``/``bq`` (docs/checkpoint-formats.md E8).
    """

    head_ids: list[int]
    head_size: int
    wq: Tensor
    bq: Tensor
    wk: Tensor
    bk: Tensor
    wv: Tensor
    bv: Tensor
    wo: Tensor
    bo: Tensor
    ln_weight: Tensor
    ln_bias: Tensor
    head_keep: Tensor | None = None
    q_prescaled: bool = False

    @property
    def heads(self) -> int:
        """Heads present (h_i)."""
        return len(self.head_ids)

    @property
    def heads_kept(self) -> int:
        """Heads that survive pruning (h_i, or the count of True in ``head_keep``)."""
        return self.heads if self.head_keep is None else int(self.head_keep.sum())


@dataclass
class FFN:
    """One feed-forward sublayer: ``x = LN(x + act(x W1ᵀ + b1) W2ᵀ + b2)`` with ``act`` = ``ModelIR.activation``
    (``config.hidden_act``; erf GELU for every upstream checkpoint, docs/checkpoint-formats.md §2.5).

    Shapes (f = ``dims``): ``w1 [f, d']``, ``b1 [f]``, ``w2 [d', f]``, ``b2 [d']``, ``ln_weight/ln_bias [d']``.

    Attributes:
        dim_ids: original intermediate dims (0..F-1) present, ascending.
        dim_keep: bool ``[f]`` or None; False dims are multiplied by 0 until ``prune-ffn`` slices them.
    """

    dim_ids: list[int]
    w1: Tensor
    b1: Tensor
    w2: Tensor
    b2: Tensor
    ln_weight: Tensor
    ln_bias: Tensor
    dim_keep: Tensor | None = None

    @property
    def dims(self) -> int:
        """Intermediate dims present (f_i)."""
        return len(self.dim_ids)

    @property
    def dims_kept(self) -> int:
        """Intermediate dims that survive pruning."""
        return self.dims if self.dim_keep is None else int(self.dim_keep.sum())


@dataclass
class Layer:
    """One encoder layer. ``None`` sublayers are removed (identity, docs/checkpoint-formats.md §2.5).

    Attributes:
        index: the layer's original index (0-based) in the checkpoint.
        out_rows: None = every position is computed; k = only the first k positions are computed and returned
            (set by ``trim-last-layer`` on the last layer, docs/checkpoint-formats.md E5: the demultiplexer / pooler reads rows 0..k-1).
    """

    index: int
    attention: Attention | None
    ffn: FFN | None
    out_rows: int | None = None


@dataclass
class Mux:
    """The multiplexer (docs/checkpoint-formats.md §2.3).

    Attributes:
        variant: ``gaussian_hadamard`` | ``binary_hadamard`` | ``random_ortho``.
        instance_embedding: hadamard ``[N, d']``; random_ortho ``[N, d', d']`` (row vector e -> (V_n e)ᵀ).
        fused_scale / fused_shift: set by ``fuse-mux`` (docs/checkpoint-formats.md E3) for hadamard variants: ``[N, d']`` =
            gamma ⊙ v_n / N and ``[d']`` = beta ⊙ mean_n v_n; the kernels then mix normalised pass-1
            embeddings directly. For random_ortho, ``fused_scale [N, d', d']`` = diag(gamma) V_nᵀ / sqrt(N) and
            ``fused_shift [d']`` = sum_n beta V_nᵀ / sqrt(N).
    """

    variant: str
    num_instances: int
    instance_embedding: Tensor
    fused_scale: Tensor | None = None
    fused_shift: Tensor | None = None


@dataclass
class Demux:
    """The demultiplexer (docs/checkpoint-formats.md §2.6) with its tensors under upstream names relative to the module.

    ``tensors`` keys by variant:

    * ``index_pos``: ``demux_instance_embedding [N, d']``, ``dense_1.weight [D, 2d']``, ``dense_1.bias [D]``,
      ``dense_k.weight/bias`` (k = 2..num_layers-1), ``layer_norm_1.weight/bias`` (legacy only),
      ``pre_decoder.weight/bias``, ``pre_decoder_layer_norm.weight/bias``;
      after ``fuse-demux`` (docs/checkpoint-formats.md E4): ``dense_1.const [N, D]`` and ``dense_1.shared [D, d']`` replace
      ``dense_1.*`` and ``demux_instance_embedding``.
    * ``mlp``: ``dense_n.weight [D, d']/bias``, ``layer_norm_n.weight/bias`` (n < N),
      ``dense_before_out_proj.weight/bias``, ``layernorm.weight/bias``; after ``fuse-demux``:
      ``dense_all.weight [N*D, d']``, ``dense_all.bias [N*D]``.
    * ``index``: ``dense.weight [D, 2d']``, ``dense.bias``, ``layer_norm.weight/bias``; after ``fuse-demux``:
      ``dense.left [D, d']``, ``dense.right [D, d']`` (bias stays).

    D is the demux output width (the original hidden size, never pruned).
    """

    variant: str
    num_layers: int
    legacy: bool
    tensors: dict[str, Tensor]
    fused: bool = False


@dataclass
class ModelIR:
    """A whole classifier.

    Attributes:
        family: checkpoint family (``prumux_compile.checkpoint.FAMILIES``).
        config: the checkpoint's config.json (ORIGINAL sizes; metadata only).
        head_size: dh.
        original: original sizes ``{"layers", "hidden", "heads", "ffn"}`` (for reports and sparsity).
        eps: LayerNorm epsilon.
        hidden_ids: original hidden dims present, ascending.
        hidden_keep: bool ``[d']`` or None (see module doc).
        masks: soft ``zs.pt`` masks (keys of docs/checkpoint-formats.md §1.5) before ``fold-masks``; None afterwards.
        mux / demux: None for the N = 1 families.
        pooler: ``(weight [D, d'], bias [D])`` for the N = 1 families (tanh pooler), else None.
        classifier: ``(weight [C, D], bias [C])``.
        seq_len: compiled sequence length for multiplexed families (their encoder has no attention mask, so
            outputs depend on the padded length: docs/checkpoint-formats.md Q2); None = dynamic (N = 1 families).
        id2label: class index -> label name.
        provenance: file name -> sha256.
        history: names of the passes applied, in order.
        activation: the FFN activation, ``config.hidden_act`` (one of :data:`ACTIVATIONS`). The demultiplexer
            always uses erf GELU and the pooler tanh, whatever the config says (upstream hard-codes both).
    """

    family: str
    config: dict
    head_size: int
    original: dict[str, int]
    eps: float
    embeddings: Embeddings
    layers: list[Layer]
    hidden_ids: list[int]
    classifier: tuple[Tensor, Tensor]
    mux: Mux | None = None
    demux: Demux | None = None
    pooler: tuple[Tensor, Tensor] | None = None
    hidden_keep: Tensor | None = None
    masks: dict[str, Tensor] | None = None
    seq_len: int | None = None
    id2label: dict[int, str] = field(default_factory=dict)
    provenance: dict[str, str] = field(default_factory=dict)
    history: list[str] = field(default_factory=list)
    activation: str = "gelu"

    # ------------------------------------------------------------------ derived sizes
    @property
    def num_instances(self) -> int:
        """Multiplexing width N (1 without a multiplexer)."""
        return self.mux.num_instances if self.mux is not None else 1

    @property
    def hidden(self) -> int:
        """Hidden dims present (d')."""
        return int(self.embeddings.word.shape[1])

    @property
    def num_labels(self) -> int:
        return int(self.classifier[0].shape[0])

    @property
    def is_muxed(self) -> bool:
        return self.mux is not None

    @property
    def problem_type(self) -> str:
        """How the logits are read (transformers' rule for sequence classifiers): ``config.problem_type`` when
        given (one of :data:`PROBLEM_TYPES`), else ``"regression"`` for one output and
        ``"single_label_classification"`` otherwise."""
        given = self.config.get("problem_type")
        if given is not None:
            return str(given)
        return "regression" if self.num_labels == 1 else "single_label_classification"

    def clone(self) -> "ModelIR":
        """Deep copy (passes are pure: they never modify their input IR)."""
        return copy.deepcopy(self)

    # ------------------------------------------------------------------ accounting
    def kept_structure(self) -> list[dict]:
        """Per original layer: heads and FFN dims that survive (after masks), as counts and ids.

        Returns one dict per ORIGINAL layer index ``{"layer", "heads", "head_ids", "ffn", "ffn_ids"}``;
        layers dropped from the IR appear with 0 / [].
        """
        by_index = {layer.index: layer for layer in self.layers}
        rows = []
        for i in range(self.original["layers"]):
            layer = by_index.get(i)
            att = layer.attention if layer else None
            ffn = layer.ffn if layer else None
            # ids >= the original count are zero padding added by align-dims: not model structure
            head_ids = [h for h in _kept_ids(att.head_ids, att.head_keep) if h < self.original["heads"]] if att else []
            ffn_ids = [f for f in _kept_ids(ffn.dim_ids, ffn.dim_keep) if f < self.original["ffn"]] if ffn else []
            rows.append({"layer": i, "heads": len(head_ids), "head_ids": head_ids,
                         "ffn": len(ffn_ids), "ffn_ids": ffn_ids})
        return rows

    def hidden_kept(self) -> int:
        """Hidden dims that survive pruning (d')."""
        return self.hidden if self.hidden_keep is None else int(self.hidden_keep.sum())

    def encoder_params(self) -> int:
        """Encoder parameters that would be computed (weights + biases + LayerNorms of present sublayers)."""
        total = 0
        for layer in self.layers:
            for sub in (layer.attention, layer.ffn):
                if sub is None:
                    continue
                total += sum(int(t.numel()) for t in _tensors(sub))
        return total

    def total_params(self) -> int:
        """All parameters the compiled model holds (embeddings, encoder, mux, demux, pooler, classifier)."""
        total = sum(int(t.numel()) for t in _tensors(self.embeddings)) + self.encoder_params()
        if self.mux is not None:
            total += int(self.mux.instance_embedding.numel())
        if self.demux is not None:
            total += sum(int(t.numel()) for t in self.demux.tensors.values())
        for pair in (self.pooler, self.classifier):
            if pair is not None:
                total += sum(int(t.numel()) for t in pair)
        return total


def _kept_ids(ids: list[int], keep: Tensor | None) -> list[int]:
    if keep is None:
        return list(ids)
    return [i for i, k in zip(ids, keep.tolist()) if k]


def _tensors(obj) -> list[Tensor]:
    return [v for v in vars(obj).values() if isinstance(v, Tensor) and v.dtype != torch.bool]


# ---------------------------------------------------------------------------------------------- invariants
def check_invariants(ir: ModelIR, where: str = "IR") -> None:
    """Check shape and stage invariants; raise :class:`IRInvariantError` naming ``where`` on a violation.

    Checked: every tensor width agrees with d' / h_i*dh / f_i; no sublayer of width 0 (F2 in docs/field-faults.md); keep masks have the
    sublayer's length; soft masks only before ``fold-masks``; mux/demux widths agree with d'; classifier input
    width agrees with the demux / pooler output; no NaN/Inf.
    """
    problems = _problems(ir)
    if problems:
        raise IRInvariantError(f"{where}: IR invariant violated: " + "; ".join(problems[:5]))


def _shape_problem(name: str, t: Tensor, shape: tuple) -> str | None:
    return None if tuple(t.shape) == tuple(shape) else f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}"


def _problems(ir: ModelIR) -> list[str]:
    out: list[str] = []
    d = ir.hidden
    dh = ir.head_size
    e = ir.embeddings
    checks = [("embeddings.position", e.position, (e.position.shape[0], d)),
              ("embeddings.token_type", e.token_type, (e.token_type.shape[0], d)),
              ("embeddings.ln_weight", e.ln_weight, (d,)), ("embeddings.ln_bias", e.ln_bias, (d,))]
    if len(ir.hidden_ids) != d:
        out.append(f"hidden_ids has {len(ir.hidden_ids)} entries for {d} hidden dims")
    if ir.hidden_keep is not None and tuple(ir.hidden_keep.shape) != (d,):
        out.append(f"hidden_keep has shape {tuple(ir.hidden_keep.shape)}, expected ({d},)")
    if ir.masks is not None and "fold-masks" in ir.history:
        out.append("soft masks present after fold-masks")
    if ir.activation not in ACTIVATIONS:
        out.append(f"activation {ir.activation!r} is not implemented (expected one of {', '.join(ACTIVATIONS)})")
    seen = set()
    for layer in ir.layers:
        if layer.index in seen:
            out.append(f"layer index {layer.index} appears twice")
        seen.add(layer.index)
        a = layer.attention
        if a is not None:
            h = a.heads
            if h == 0:
                out.append(f"layer {layer.index}: attention with 0 heads (must be None)")
            w = h * dh
            checks += [(f"layer {layer.index} wq", a.wq, (w, d)), (f"layer {layer.index} wk", a.wk, (w, d)),
                       (f"layer {layer.index} wv", a.wv, (w, d)), (f"layer {layer.index} bq", a.bq, (w,)),
                       (f"layer {layer.index} bk", a.bk, (w,)), (f"layer {layer.index} bv", a.bv, (w,)),
                       (f"layer {layer.index} wo", a.wo, (d, w)), (f"layer {layer.index} bo", a.bo, (d,)),
                       (f"layer {layer.index} attention ln", a.ln_weight, (d,))]
            if a.head_keep is not None and tuple(a.head_keep.shape) != (h,):
                out.append(f"layer {layer.index}: head_keep length {a.head_keep.shape[0]} != {h} heads")
            if sorted(set(a.head_ids)) != list(a.head_ids):
                out.append(f"layer {layer.index}: head ids not ascending/unique")
        f = layer.ffn
        if f is not None:
            n = f.dims
            if n == 0:
                out.append(f"layer {layer.index}: FFN with 0 dims (must be None)")
            checks += [(f"layer {layer.index} w1", f.w1, (n, d)), (f"layer {layer.index} b1", f.b1, (n,)),
                       (f"layer {layer.index} w2", f.w2, (d, n)), (f"layer {layer.index} b2", f.b2, (d,)),
                       (f"layer {layer.index} output ln", f.ln_weight, (d,))]
            if f.dim_keep is not None and tuple(f.dim_keep.shape) != (n,):
                out.append(f"layer {layer.index}: dim_keep length {f.dim_keep.shape[0]} != {n} dims")
    if ir.mux is not None:
        v = ir.mux.instance_embedding
        shape = (ir.mux.num_instances, d, d) if ir.mux.variant == "random_ortho" else (ir.mux.num_instances, d)
        checks.append(("mux.instance_embedding", v, shape))
    if ir.demux is not None and not ir.demux.fused:
        t = ir.demux.tensors
        if ir.demux.variant == "index_pos":
            checks.append(("demux.demux_instance_embedding", t["demux_instance_embedding"], (ir.num_instances, d)))
            checks.append(("demux.dense_1.weight", t["dense_1.weight"], (t["dense_1.weight"].shape[0], 2 * d)))
        elif ir.demux.variant == "index":
            checks.append(("demux.dense.weight", t["dense.weight"], (t["dense.weight"].shape[0], 2 * d)))
        elif ir.demux.variant == "mlp":
            for n in range(ir.num_instances):
                w = t[f"dense_{n}.weight"]
                checks.append((f"demux.dense_{n}.weight", w, (w.shape[0], d)))
    if ir.pooler is not None:
        checks.append(("pooler.weight", ir.pooler[0], (ir.pooler[0].shape[0], d)))
        if ir.classifier[0].shape[1] != ir.pooler[0].shape[0]:
            out.append("classifier input width != pooler output width")
    for name, t, shape in checks:
        p = _shape_problem(name, t, shape)
        if p:
            out.append(p)
    for name, t, _ in checks:
        # a sum is finite iff every element is (barring overflow, then the exact test decides); far cheaper
        if t.is_floating_point() and not math.isfinite(float(t.sum())) and not torch.isfinite(t).all():
            out.append(f"{name} holds NaN/Inf")
    return out
