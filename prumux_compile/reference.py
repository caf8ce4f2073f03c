"""The independent reference forward pass: upstream inference semantics on the stored weights.

This module is the project's ORACLE. It computes, in plain PyTorch and directly on the tensors of a
:class:`~prumux_compile.checkpoint.RawCheckpoint`, the logits that the upstream research code computes
at inference time for every checkpoint family of ``docs/checkpoint-formats.md`` (§1.1; forward semantics:
docs/checkpoint-formats.md §2.1–§2.9). The compiled model (``kernels/`` + ``passes/``) is validated against it,
so it deliberately shares no code with them and takes a different route wherever the compiler optimises:

* masks are applied by MULTIPLICATION into full-width weights, the way upstream ``update_params``
  does (docs/checkpoint-formats.md §2.9), never by slicing;
* hidden-dim pruning is computed at full width ``d`` with a masked LayerNorm whose statistics run over
  the kept dims only (CoFiLayerNorm, docs/checkpoint-formats.md §2.5) and whose output is held at exactly 0 on
  pruned dims;
* the double embedding pass, the unmasked encoder of multiplexed models, the demux layer choice and
  the other quirks of docs/checkpoint-formats.md §5 are reproduced as upstream has them (no algebraic folding of §3).

Semantic choices (documented here because they are decisions, not facts of the checkpoint):

* **Sublayer removal is static** (field fault F3 in docs/field-faults.md, docs/checkpoint-formats.md Q11/Q12). Upstream's masked forward skips a
  sublayer when its output sums to exactly 0 at run time; here an attention sublayer is removed iff no
  head has ``head_z * head_layer_z != 0``, an FFN sublayer iff no dim has ``intermediate_z * mlp_z != 0``
  (this is what upstream ``prune_model_with_z`` + ``evaluation.py`` computes). A removed sublayer is the
  identity on the residual stream: no bias, no LayerNorm. In compressed checkpoints a sublayer is
  present iff its weights are.
* **Absent mask keys are all ones, and the layer masks count only beside their finer masks** — upstream
  evaluation's rule (``update_params`` and ``prune_model_with_z``; docs/checkpoint-formats.md §1.5, §2.9):
  ``head_layer_z`` is applied only when ``head_z`` is present, ``mlp_z`` only when ``intermediate_z`` is; a
  ``zs.pt`` holding ``head_layer_z`` without ``head_z`` (or ``mlp_z`` without ``intermediate_z``) gives the logits
  of the same file without that layer mask. (Upstream's masked training forward would apply it; upstream's own
  L0 module never writes such a file, see the document.)
* **Hidden pruning for demux variants upstream never supported** (docs/checkpoint-formats.md Q8): ``mlp`` multiplies the
  input columns of every ``demux_module.dense_n`` by ``hidden_z``; ``index`` multiplies both input
  halves of ``demultiplexer.dense`` by ``[hidden_z ; hidden_z]`` (the same rule upstream applies to the
  residual-stream input of index_pos ``dense_1``). ``random_ortho``: ``instance_embedding * hidden_z``
  broadcast over the last (input) axis exactly as upstream's ``mul`` does, and the mux output is
  restricted to the kept dims; a compressed ``random_ortho`` checkpoint must store ``[N, d', d']``.
* **Batch padding of partial mux groups** (docs/checkpoint-formats.md §2.1 step 1, Q1, field fault F18 in docs/field-faults.md): see
  :func:`forward`.
* **config.json** (field fault F22 in docs/field-faults.md): the FFN activation is ``hidden_act``, each implemented name written here
  from its formula (:data:`_ACTIVATIONS`); the demultiplexer keeps the erf GELU and the pooler tanh that upstream
  hard-codes; ``layer_norm_eps`` is used by every LayerNorm. Values this module does not implement are refused by
  :func:`_config_checks` on its own, whatever the loader already checked.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from prumux_compile.checkpoint import RawCheckpoint
from prumux_compile.errors import CheckpointError, InputError

__all__ = ["forward", "PADDING_POLICIES", "PAD_TOKEN_ID", "CLS_TOKEN_ID"]

#: Batch-padding policies accepted by :func:`forward` (docs/checkpoint-formats.md Q1).
PADDING_POLICIES = ("repeat-last", "upstream")
#: [PAD] of bert-base-uncased; muxed inputs are right-padded with it to ``seq_len`` (docs/checkpoint-formats.md Q2).
PAD_TOKEN_ID = 0
#: [CLS] of bert-base-uncased; written into column 0 for index_pos / mlp demux (docs/checkpoint-formats.md §2.1 step 2).
CLS_TOKEN_ID = 101
#: Base token of the index-demux prefix: instance n gets ``680 - (n + 2)`` on the diagonal
#: (docs/checkpoint-formats.md §2.1 step 3).
_INDEX_PREFIX_FILL = 680

_MUXED_FAMILIES = ("prumux_compressed", "prumux_masked", "muxplm")
_SINGLE_FAMILIES = ("cofi_compressed", "cofi_masked", "bert")
_MASKED_FAMILIES = ("prumux_masked", "cofi_masked")
_EMB = "bert.embeddings."


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------
def _tensor(sd: dict[str, torch.Tensor], key: str, dtype: torch.dtype, path) -> torch.Tensor:
    """``sd[key]`` cast to ``dtype``; CheckpointError naming the key when it is missing."""
    if key not in sd:
        raise CheckpointError(f"{path}: missing tensor {key!r} needed by the reference forward pass")
    return sd[key].to(dtype)


def _expect_shape(name: str, t: torch.Tensor, expected: tuple[int, ...], path) -> None:
    if tuple(t.shape) != tuple(expected):
        raise CheckpointError(
            f"{path}: tensor {name} has shape {list(t.shape)}, expected {list(expected)}"
        )


def _gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact erf GELU ``x/2 · (1 + erf(x/√2))`` (HF ``"gelu"``; docs/checkpoint-formats.md E10: NOT the tanh approximation). The
    demultiplexer always uses it (upstream imports transformers' fixed ``gelu``, whatever ``hidden_act`` says)."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _sigmoid(x: torch.Tensor) -> torch.Tensor:
    return 1.0 / (1.0 + torch.exp(-x))


def _softplus(x: torch.Tensor) -> torch.Tensor:
    """``ln(1 + e^x)`` in the overflow-free form ``max(x, 0) + ln(1 + e^-|x|)``."""
    return torch.clamp(x, min=0.0) + torch.log1p(torch.exp(-torch.abs(x)))


def _gelu_tanh(x: torch.Tensor, c: float = math.sqrt(2.0 / math.pi)) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(c * (x + 0.044715 * x * x * x)))


def _relu(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, x, torch.zeros_like(x))


#: ``config.hidden_act`` -> the FFN activation, written from each formula of transformers' ``ACT2FN``
#: (``activations.py``), not from the kernels. Any other value is refused (field fault F22 in docs/field-faults.md).
_ACTIVATIONS = {
    "gelu": _gelu,
    "gelu_python": _gelu,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_python_tanh": _gelu_tanh,
    "gelu_accurate": _gelu_tanh,
    "gelu_fast": lambda x: 0.5 * x * (1.0 + torch.tanh(0.7978845608 * x * (1.0 + 0.044715 * x * x))),
    "gelu_10": lambda x: torch.clamp(_gelu(x), -10.0, 10.0),
    "quick_gelu": lambda x: x * _sigmoid(1.702 * x),
    "relu": _relu,
    "relu2": lambda x: _relu(x) ** 2,
    "relu6": lambda x: torch.clamp(_relu(x), max=6.0),
    "leaky_relu": lambda x: torch.where(x >= 0, x, 0.01 * x),
    "silu": lambda x: x * _sigmoid(x),
    "swish": lambda x: x * _sigmoid(x),
    "mish": lambda x: x * torch.tanh(_softplus(x)),
    "hardswish": lambda x: x * torch.clamp(x + 3.0, min=0.0, max=6.0) / 6.0,
    "tanh": torch.tanh,
    "sigmoid": _sigmoid,
    "linear": lambda x: x,
}


def _config_checks(raw: RawCheckpoint) -> tuple[Callable, float]:
    """The FFN activation and the LayerNorm epsilon of ``raw.config``, refusing every value of a field that changes
    the forward pass and that this reference does not implement (field fault F22 in docs/field-faults.md).

    Implemented: ``hidden_act`` (:data:`_ACTIVATIONS`), ``layer_norm_eps`` (positive; default 1e-12, BertConfig's),
    ``position_embedding_type`` absent or ``"absolute"``, ``is_decoder`` / ``add_cross_attention`` absent or false,
    ``model_type`` absent or ``"bert"``. Raises CheckpointError naming the field and its value.
    """
    cfg, path = raw.config, raw.path

    def refuse(field_name: str, why: str):
        raise CheckpointError(f"{path}: config.json {field_name}={cfg.get(field_name)!r}: {why}; the reference "
                              "forward pass does not implement it")

    act = cfg.get("hidden_act", "gelu")
    if not isinstance(act, str) or act not in _ACTIVATIONS:
        refuse("hidden_act", f"implemented activations: {', '.join(_ACTIVATIONS)}")
    eps = cfg.get("layer_norm_eps", 1e-12)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        refuse("layer_norm_eps", "must be a positive number")
    if "position_embedding_type" in cfg and cfg["position_embedding_type"] != "absolute":
        refuse("position_embedding_type", "only absolute position embeddings are implemented")
    for name in ("is_decoder", "add_cross_attention"):
        if cfg.get(name, False) is not False:
            refuse(name, "only the bidirectional encoder is implemented")
    if cfg.get("model_type", "bert") != "bert":
        refuse("model_type", "only BERT is implemented")
    return _ACTIVATIONS[act], float(eps)


def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float,
                keep: torch.Tensor | None) -> torch.Tensor:
    """LayerNorm over the last axis, or CoFiLayerNorm when ``keep`` is given (docs/checkpoint-formats.md §2.5, E7).

    Args:
        x: ``[..., d]``.
        w, b: affine ``[d]``.
        eps: variance epsilon (config ``layer_norm_eps``).
        keep: ``None`` (plain LayerNorm) or a 0/1 float mask ``[d]`` of kept hidden dims. Mean and
            (biased) variance are computed over the kept dims only, the affine is applied there, and the
            output is exactly 0 on pruned dims — at full width, without slicing.
    Returns:
        ``[..., d]``, same dtype as ``x``.
    """
    if keep is None:
        return F.layer_norm(x, (x.shape[-1],), w, b, eps)
    n = keep.sum()
    mean = (x * keep).sum(-1, keepdim=True) / n
    xc = (x - mean) * keep
    var = (xc * xc).sum(-1, keepdim=True) / n
    return (xc / torch.sqrt(var + eps) * w + b) * keep


def _squeezed(shape) -> tuple[int, ...]:
    return tuple(int(s) for s in shape if s != 1)


# --------------------------------------------------------------------------------------------------
# Masks (zs.pt, docs/checkpoint-formats.md §1.5)
# --------------------------------------------------------------------------------------------------
@dataclass
class _Masks:
    hidden_z: torch.Tensor  # [d]
    head_z: torch.Tensor  # [Lyr, H]
    head_layer_z: torch.Tensor  # [Lyr]
    intermediate_z: torch.Tensor  # [Lyr, F]
    mlp_z: torch.Tensor  # [Lyr]


def _read_masks(raw: RawCheckpoint, d: int, heads: int, ffn: int, layers: int,
                dtype: torch.dtype) -> _Masks:
    """The masks of ``raw.zs`` reshaped to compact form; absent keys are all ones, and ``head_layer_z`` /
    ``mlp_z`` are all ones too unless ``head_z`` / ``intermediate_z`` are given (upstream evaluation folds a layer
    mask only inside the loop over its finer mask; docs/checkpoint-formats.md §2.9).

    Accepted shapes are the upstream ones of docs/checkpoint-formats.md §1.5 (``head_z [Lyr,1,H,1,1]``, ``intermediate_z
    [Lyr,1,1,F]``, ``hidden_z [d]``, ``head_layer_z``/``mlp_z [Lyr]``) or any shape equal to them up to
    size-1 axes. Raises CheckpointError naming the mask, its shape and the expected shape.
    """
    expected = {
        "hidden_z": (d,),
        "head_z": (layers, 1, heads, 1, 1),
        "head_layer_z": (layers,),
        "intermediate_z": (layers, 1, 1, ffn),
        "mlp_z": (layers,),
    }
    compact = {
        "hidden_z": (d,),
        "head_z": (layers, heads),
        "head_layer_z": (layers,),
        "intermediate_z": (layers, ffn),
        "mlp_z": (layers,),
    }
    zs = raw.zs or {}
    out = {}
    for key, exp in expected.items():
        if key not in zs:
            out[key] = torch.ones(compact[key], dtype=dtype)
            continue
        t = torch.as_tensor(zs[key])
        if _squeezed(t.shape) != _squeezed(exp):
            raise CheckpointError(
                f"{raw.path}: mask {key} in zs.pt has shape {list(t.shape)}, expected {list(exp)} "
                "(from the weight shapes of this checkpoint)"
            )
        out[key] = t.detach().to(dtype).reshape(compact[key])
    # upstream update_params: the head_layer_z factor sits inside "if head_z in zs", the mlp_z factor inside
    # "if intermediate_z in zs"; prune_model_with_z likewise multiplies a layer mask only into its finer mask
    for layer_mask, finer in (("head_layer_z", "head_z"), ("mlp_z", "intermediate_z")):
        if finer not in zs:
            out[layer_mask] = torch.ones(compact[layer_mask], dtype=dtype)
    if not bool((out["hidden_z"] != 0).any()):
        raise CheckpointError(f"{raw.path}: mask hidden_z keeps no hidden dim (all zeros)")
    return _Masks(**out)


# --------------------------------------------------------------------------------------------------
# Trunk weights at full width with masks multiplied in (update_params, docs/checkpoint-formats.md §2.9)
# --------------------------------------------------------------------------------------------------
@dataclass
class _Attention:
    wq: torch.Tensor  # [h*dh, d]
    bq: torch.Tensor
    wk: torch.Tensor
    bk: torch.Tensor
    wv: torch.Tensor
    bv: torch.Tensor
    wo: torch.Tensor  # [d, h*dh]
    bo: torch.Tensor  # [d]
    ln_w: torch.Tensor
    ln_b: torch.Tensor
    heads: int
    head_keep: torch.Tensor | None  # [h] 0/1 (masked families) or None


@dataclass
class _Ffn:
    w1: torch.Tensor  # [f, d]
    b1: torch.Tensor
    w2: torch.Tensor  # [d, f]
    b2: torch.Tensor
    ln_w: torch.Tensor
    ln_b: torch.Tensor
    dim_keep: torch.Tensor | None  # [f] 0/1 (masked families) or None


@dataclass
class _Trunk:
    d: int  # residual width (d' for compressed, full d for masked)
    dh: int
    eps: float
    act: Callable  # FFN activation (config.hidden_act)
    word: torch.Tensor  # [V, d] (z-scaled in masked families)
    pos: torch.Tensor  # [P, d]
    types: torch.Tensor  # [T, d]
    emb_ln_w: torch.Tensor
    emb_ln_b: torch.Tensor
    layers: list[tuple[_Attention | None, _Ffn | None]]
    hidden_z: torch.Tensor | None  # [d] soft mask (masked families)
    keep: torch.Tensor | None  # [d] 0/1 kept hidden dims (masked families)


def _build_trunk(raw: RawCheckpoint, dtype: torch.dtype) -> tuple[_Trunk, _Masks | None]:
    sd, path = raw.state_dict, raw.path
    dh = raw.head_size
    act, eps = _config_checks(raw)
    word = _tensor(sd, _EMB + "word_embeddings.weight", dtype, path)
    d = int(word.shape[1])
    pos = _tensor(sd, _EMB + "position_embeddings.weight", dtype, path)
    types = _tensor(sd, _EMB + "token_type_embeddings.weight", dtype, path)
    emb_ln_w = _tensor(sd, _EMB + "LayerNorm.weight", dtype, path)
    emb_ln_b = _tensor(sd, _EMB + "LayerNorm.bias", dtype, path)
    for name, t in (("position_embeddings", pos), ("token_type_embeddings", types)):
        if t.shape[1] != d:
            raise CheckpointError(
                f"{path}: {_EMB}{name}.weight has width {t.shape[1]}, expected {d} (word_embeddings width)"
            )
    _expect_shape(_EMB + "LayerNorm.weight", emb_ln_w, (d,), path)
    _expect_shape(_EMB + "LayerNorm.bias", emb_ln_b, (d,), path)

    n_layers = raw.num_layers
    masked = raw.family in _MASKED_FAMILIES
    masks = None
    if masked:
        heads_full, ffn_full = _full_widths(raw, d, dh, n_layers)
        masks = _read_masks(raw, d, heads_full, ffn_full, n_layers, dtype)
        zh = masks.hidden_z
        keep = (zh != 0).to(dtype)
        # update_params: hidden_z into the columns (dims) of the three embedding tables.
        word, pos, types = word * zh, pos * zh, types * zh
    else:
        zh = keep = None

    layers = []
    for i in range(n_layers):
        layers.append((_build_attention(raw, i, d, dh, dtype, masks, zh),
                       _build_ffn(raw, i, d, dtype, masks, zh)))
    trunk = _Trunk(d, dh, eps, act, word, pos, types, emb_ln_w, emb_ln_b, layers, zh, keep)
    return trunk, masks


def _full_widths(raw: RawCheckpoint, d: int, dh: int, n_layers: int) -> tuple[int, int]:
    """(H, F) of a full + masks checkpoint, from the weight shapes (all layers must agree)."""
    sd = raw.state_dict
    heads = {sd[k].shape[0] // dh for k in sd if k.endswith("attention.self.query.weight")}
    ffn = {sd[k].shape[0] for k in sd if k.endswith("intermediate.dense.weight")}
    if len(heads) > 1 or len(ffn) > 1:
        raise CheckpointError(
            f"{raw.path}: full + zs checkpoint with layers of different widths (heads {sorted(heads)}, "
            f"FFN {sorted(ffn)}); a masked checkpoint must store every layer at full width"
        )
    h = heads.pop() if heads else int(raw.config["num_attention_heads"])
    f = ffn.pop() if ffn else int(raw.config.get("intermediate_size", 4 * d))
    return h, f


def _build_attention(raw, i, d, dh, dtype, masks: _Masks | None, zh) -> _Attention | None:
    sd, path = raw.state_dict, raw.path
    p = f"bert.encoder.layer.{i}.attention."
    if p + "output.dense.weight" not in sd:
        return None  # removed attention sublayer (compressed families, docs/checkpoint-formats.md §1.4)
    g = lambda k: _tensor(sd, p + k, dtype, path)  # noqa: E731
    wq, bq, wk, bk = g("self.query.weight"), g("self.query.bias"), g("self.key.weight"), g("self.key.bias")
    wv, bv, wo, bo = g("self.value.weight"), g("self.value.bias"), g("output.dense.weight"), g("output.dense.bias")
    ln_w, ln_b = g("output.LayerNorm.weight"), g("output.LayerNorm.bias")
    width = int(wo.shape[1])
    if width == 0 or width % dh:
        raise CheckpointError(
            f"{path}: {p}output.dense.weight has {width} input columns, not a positive multiple of the "
            f"head size {dh}"
        )
    heads = width // dh
    for name, t, shape in (
        ("self.query.weight", wq, (width, d)), ("self.key.weight", wk, (width, d)),
        ("self.value.weight", wv, (width, d)), ("self.query.bias", bq, (width,)),
        ("self.key.bias", bk, (width,)), ("self.value.bias", bv, (width,)),
        ("output.dense.weight", wo, (d, width)), ("output.dense.bias", bo, (d,)),
        ("output.LayerNorm.weight", ln_w, (d,)), ("output.LayerNorm.bias", ln_b, (d,)),
    ):
        _expect_shape(p + name, t, shape, path)
    head_keep = None
    if masks is not None:
        hz, hlz = masks.head_z[i], masks.head_layer_z[i]
        kept = hz * hlz != 0
        if not bool(kept.any()):
            return None  # every head removed: static sublayer removal (F3 in docs/field-faults.md, Q11/Q12 in docs/checkpoint-formats.md)
        hz_rows = torch.repeat_interleave(hz, dh)
        # update_params (docs/checkpoint-formats.md §2.9): head_z into rows of Wv and bv; head_layer_z into Wo and bo;
        # hidden_z into input columns of Wq, Wk, Wv and into rows of Wo AND bo.
        wq = wq * zh
        wk = wk * zh
        wv = wv * hz_rows[:, None] * zh
        bv = bv * hz_rows
        wo = wo * hlz * zh[:, None]
        bo = bo * hlz * zh
        head_keep = kept.to(dtype)
    return _Attention(wq, bq, wk, bk, wv, bv, wo, bo, ln_w, ln_b, heads, head_keep)


def _build_ffn(raw, i, d, dtype, masks: _Masks | None, zh) -> _Ffn | None:
    sd, path = raw.state_dict, raw.path
    p = f"bert.encoder.layer.{i}."
    if p + "output.dense.weight" not in sd:
        return None  # removed FFN sublayer (compressed families, docs/checkpoint-formats.md §1.4)
    g = lambda k: _tensor(sd, p + k, dtype, path)  # noqa: E731
    w1, b1 = g("intermediate.dense.weight"), g("intermediate.dense.bias")
    w2, b2 = g("output.dense.weight"), g("output.dense.bias")
    ln_w, ln_b = g("output.LayerNorm.weight"), g("output.LayerNorm.bias")
    f = int(w2.shape[1])
    if f == 0:
        return None
    for name, t, shape in (
        ("intermediate.dense.weight", w1, (f, d)), ("intermediate.dense.bias", b1, (f,)),
        ("output.dense.weight", w2, (d, f)), ("output.dense.bias", b2, (d,)),
        ("output.LayerNorm.weight", ln_w, (d,)), ("output.LayerNorm.bias", ln_b, (d,)),
    ):
        _expect_shape(p + name, t, shape, path)
    dim_keep = None
    if masks is not None:
        iz, mz = masks.intermediate_z[i], masks.mlp_z[i]
        kept = iz * mz != 0
        if not bool(kept.any()):
            return None  # every FFN dim removed: static sublayer removal (F3 in docs/field-faults.md, Q11/Q12 in docs/checkpoint-formats.md)
        # update_params (docs/checkpoint-formats.md §2.9): intermediate_z into columns of W2; mlp_z into W2 and b2;
        # hidden_z into input columns of W1 and rows of W2 but NOT into b2 (upstream asymmetry, Q9 in docs/checkpoint-formats.md).
        w1 = w1 * zh
        w2 = w2 * iz * mz * zh[:, None]
        b2 = b2 * mz
        dim_keep = kept.to(dtype)
    return _Ffn(w1, b1, w2, b2, ln_w, ln_b, dim_keep)


# --------------------------------------------------------------------------------------------------
# Encoder (CoFi BERT, post-LN, docs/checkpoint-formats.md §2.5)
# --------------------------------------------------------------------------------------------------
def _self_attention(x: torch.Tensor, a: _Attention, dh: int, add_mask: torch.Tensor | None) -> torch.Tensor:
    """Attention sublayer output before the residual add: ``[B, L, d] -> [B, L, d]``."""
    b, n, _ = x.shape
    h = a.heads
    q = F.linear(x, a.wq, a.bq).view(b, n, h, dh).transpose(1, 2)
    k = F.linear(x, a.wk, a.bk).view(b, n, h, dh).transpose(1, 2)
    v = F.linear(x, a.wv, a.bv).view(b, n, h, dh).transpose(1, 2)
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(dh)
    if add_mask is not None:
        scores = scores + add_mask
    probs = torch.softmax(scores, dim=-1)
    ctx = torch.matmul(probs, v)  # [B, h, L, dh]
    if a.head_keep is not None:
        ctx = ctx * a.head_keep.view(1, h, 1, 1)  # heads removed where head_z * head_layer_z == 0
    ctx = ctx.transpose(1, 2).reshape(b, n, h * dh)
    return F.linear(ctx, a.wo, a.bo)


def _encoder(x: torch.Tensor, t: _Trunk, add_mask: torch.Tensor | None) -> torch.Tensor:
    for att, ffn in t.layers:
        if att is not None:
            x = _layer_norm(x + _self_attention(x, att, t.dh, add_mask), att.ln_w, att.ln_b, t.eps, t.keep)
        if ffn is not None:
            u = t.act(F.linear(x, ffn.w1, ffn.b1))  # config.hidden_act
            if ffn.dim_keep is not None:
                u = u * ffn.dim_keep  # FFN dims removed where intermediate_z * mlp_z == 0
            x = _layer_norm(x + F.linear(u, ffn.w2, ffn.b2), ffn.ln_w, ffn.ln_b, t.eps, t.keep)
    return x


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------
def _as_2d(name: str, a, *, integer: bool) -> torch.Tensor:
    """A private CPU copy of a ``[B, S]`` tensor / array (int64 when ``integer``); the caller's object is
    never written."""
    if isinstance(a, torch.Tensor):
        t = a.detach().to("cpu").clone()
    else:
        try:
            t = torch.from_numpy(np.array(a, copy=True))
        except (TypeError, ValueError) as exc:
            raise InputError(f"{name}: cannot read as a [B, S] integer array ({exc})") from None
    if t.dim() != 2:
        raise InputError(f"{name}: expected a 2-D array [B, S], got shape {list(t.shape)}")
    if integer:
        if t.is_floating_point() or t.is_complex():
            raise InputError(f"{name}: expected integer token ids, got dtype {t.dtype}")
        return t.to(torch.int64)
    if t.is_complex():
        raise InputError(f"{name}: expected a real-valued array, got dtype {t.dtype}")
    return t


def _check_range(name: str, t: torch.Tensor, upper: int, what: str) -> None:
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= upper):
        raise InputError(
            f"{name}: values must lie in [0, {upper}) ({what}); got min {int(t.min())}, max {int(t.max())}"
        )


def _pad_batch(ids: torch.Tensor, n: int, padding: str, seed: int) -> torch.Tensor:
    """Append ``k = N - B mod N`` rows so that the batch divides into mux groups (docs/checkpoint-formats.md §2.1 step 1)."""
    b = ids.shape[0]
    k = (-b) % n
    if k == 0:
        return ids
    if padding == "repeat-last":
        idx = torch.full((k,), b - 1, dtype=torch.int64)
    else:  # "upstream": ids rows drawn with randint, then an independent draw for the mask rows
        gen = torch.Generator().manual_seed(int(seed))
        idx = torch.randint(0, b, (k,), generator=gen)
        torch.randint(0, b, (k,), generator=gen)  # upstream's attention-mask draw (unused by the logits)
    return torch.cat([ids, ids[idx]], dim=0)


# --------------------------------------------------------------------------------------------------
# Multiplexed families (A, B, C): docs/checkpoint-formats.md §2.1-2.7
# --------------------------------------------------------------------------------------------------
def _mux(raw: RawCheckpoint, e1: torch.Tensor, t: _Trunk, n: int, dtype) -> torch.Tensor:
    """Multiplexer (docs/checkpoint-formats.md §2.3): ``E1 [G*N, L, d] -> M [G, L, d]``."""
    v = _tensor(raw.state_dict, "instance_embedding", dtype, raw.path)
    g = e1.shape[0] // n
    e1 = e1.view(g, n, e1.shape[1], e1.shape[2])
    d = t.d
    if raw.muxing_variant == "random_ortho":
        _expect_shape("instance_embedding", v, (n, d, d), raw.path)
        if t.hidden_z is not None:
            v = v * t.hidden_z  # upstream update_params: mul broadcasts over the last (input) axis
        # row vector e -> (V_n e)^T = e V_n^T; sum over instances / sqrt(N)
        m = torch.einsum("gnld,ned->gle", e1, v) / math.sqrt(n)
        if t.keep is not None:
            m = m * t.keep  # output restricted to the kept dims (docs/checkpoint-formats.md Q8)
        return m
    _expect_shape("instance_embedding", v, (n, d), raw.path)
    if t.hidden_z is not None:
        v = v * t.hidden_z  # update_params: hidden_z into instance_embedding (docs/checkpoint-formats.md §2.9)
    return (e1 * v[None, :, None, :]).mean(dim=1)  # hadamard: mean, not sum


def _demux(raw: RawCheckpoint, x: torch.Tensor, t: _Trunk, n: int, dtype) -> torch.Tensor:
    """Demultiplexer (docs/checkpoint-formats.md §2.6): encoder output ``[G, L', d] -> [G*N, D]`` (row g*N + n =
    instance n)."""
    sd, path, eps = raw.state_dict, raw.path, t.eps
    g_ = lambda k: _tensor(sd, k, dtype, path)  # noqa: E731
    g, d = x.shape[0], t.d
    zh = t.hidden_z
    variant = raw.demuxing_variant
    if variant == "index_pos":
        e = g_("demux_module.demux_instance_embedding")  # NOT scaled by hidden_z (docs/checkpoint-formats.md §2.9)
        w1, b1 = g_("demux_module.dense_1.weight"), g_("demux_module.dense_1.bias")
        _expect_shape("demux_module.demux_instance_embedding", e, (n, d), path)
        if w1.dim() != 2 or w1.shape[1] != 2 * d:
            raise CheckpointError(
                f"{path}: tensor demux_module.dense_1.weight has shape {list(w1.shape)}, expected [D, {2 * d}]"
            )
        if zh is not None:
            w1 = w1 * torch.cat([zh, zh])  # both halves, as update_params
        h = x[:, 0, :]
        u = torch.cat([e[None].expand(g, n, d), h[:, None, :].expand(g, n, d)], dim=-1).reshape(g * n, 2 * d)
        pre_w, pre_b = g_("demultiplexer.pre_decoder.weight"), g_("demultiplexer.pre_decoder.bias")
        pln_w = g_("demultiplexer.pre_decoder_layer_norm.weight")
        pln_b = g_("demultiplexer.pre_decoder_layer_norm.bias")
        legacy = raw.config.get("legacy_demuxing", False)
        if not isinstance(legacy, bool):
            raise CheckpointError(f"{path}: config.json legacy_demuxing={legacy!r}: expected true or false")
        if legacy:
            y = F.layer_norm(_gelu(F.linear(u, w1, b1)), (w1.shape[0],),
                             g_("demux_module.layer_norm_1.weight"), g_("demux_module.layer_norm_1.bias"), eps)
        else:
            # upstream: `config.num_hidden_demux_layers if hasattr(config, ...) else 2` -> 2 only when ABSENT
            kd = raw.config["num_hidden_demux_layers"] if "num_hidden_demux_layers" in raw.config else 2
            if isinstance(kd, bool) or not isinstance(kd, int) or kd < 2:
                raise CheckpointError(
                    f"{path}: config.json num_hidden_demux_layers={kd!r}; the index_pos classifier demux needs an "
                    "integer >= 2 (it uses dense_1 .. dense_{Kd-1})"
                )
            y = _gelu(F.linear(u, w1, b1))  # dropout_1 where a LayerNorm was meant (Q5 in docs/checkpoint-formats.md): identity
            for k in range(2, kd):
                y = _gelu(F.linear(y, g_(f"demux_module.dense_{k}.weight"), g_(f"demux_module.dense_{k}.bias"))) + y
        z = F.layer_norm(_gelu(F.linear(y, pre_w, pre_b)), (pre_w.shape[0],), pln_w, pln_b, eps)
        return z + y
    if variant == "mlp":
        h = x[:, 0, :]
        outs = []
        for k in range(n):
            w = g_(f"demux_module.dense_{k}.weight")
            if w.dim() != 2 or w.shape[1] != d:
                raise CheckpointError(
                    f"{path}: tensor demux_module.dense_{k}.weight has shape {list(w.shape)}, expected [D, {d}]"
                )
            if zh is not None:
                w = w * zh  # extension of update_params to the mlp demux (Q8 in docs/checkpoint-formats.md)
            y = _gelu(F.linear(h, w, g_(f"demux_module.dense_{k}.bias")))
            outs.append(F.layer_norm(y, (w.shape[0],), g_(f"demux_module.layer_norm_{k}.weight"),
                                     g_(f"demux_module.layer_norm_{k}.bias"), eps))
        y = torch.stack(outs, dim=1).reshape(g * n, -1)
        wb = g_("demultiplexer.dense_before_out_proj.weight")
        y = _gelu(F.linear(y, wb, g_("demultiplexer.dense_before_out_proj.bias")))
        return F.layer_norm(y, (wb.shape[0],), g_("demultiplexer.layernorm.weight"),
                            g_("demultiplexer.layernorm.bias"), eps)
    if variant == "index":
        w = g_("demultiplexer.dense.weight")
        if w.dim() != 2 or w.shape[1] != 2 * d:
            raise CheckpointError(
                f"{path}: tensor demultiplexer.dense.weight has shape {list(w.shape)}, expected [D, {2 * d}]"
            )
        if zh is not None:
            w = w * torch.cat([zh, zh])  # extension of update_params to the index demux (Q8 in docs/checkpoint-formats.md)
        p = x[:, :n, :]  # prefix states p_n = H[n]
        hn = x[:, n, :]  # the prefix [CLS] at position N
        u = torch.cat([p, hn[:, None, :].expand(g, n, d)], dim=-1).reshape(g * n, 2 * d)
        y = _gelu(F.linear(u, w, g_("demultiplexer.dense.bias")))
        return F.layer_norm(y, (w.shape[0],), g_("demultiplexer.layer_norm.weight"),
                            g_("demultiplexer.layer_norm.bias"), eps)
    raise CheckpointError(f"{path}: unknown demuxing_variant {variant!r}")


def _forward_muxed(raw, t: _Trunk, ids: torch.Tensor, seq_len: int, padding: str, seed: int, dtype):
    n = raw.num_instances
    b, s = ids.shape
    if s > seq_len:
        raise InputError(
            f"input_ids: sequence length {s} exceeds seq_len={seq_len}; multiplexed models run at a fixed "
            "padded length (docs/checkpoint-formats.md Q2): truncate the input or pass a larger seq_len"
        )
    ids = F.pad(ids, (0, seq_len - s), value=PAD_TOKEN_ID)  # right-pad with [PAD] to exactly seq_len
    ids = _pad_batch(ids, n, padding, seed)
    rows = ids.shape[0]
    g = rows // n
    if raw.demuxing_variant == "index":
        prefix = torch.full((n, n + 1), _INDEX_PREFIX_FILL, dtype=torch.int64)
        ar = torch.arange(n)
        prefix[ar, ar] = _INDEX_PREFIX_FILL - (ar + 2)
        prefix[:, n] = CLS_TOKEN_ID
        ids = torch.cat([prefix.repeat(g, 1), ids], dim=1)  # L' = seq_len + N + 1
    else:
        ids[:, 0] = CLS_TOKEN_ID  # on our private copy (upstream writes the caller's tensor, Q18 in docs/checkpoint-formats.md)
    length = ids.shape[1]
    vocab = t.word.shape[0]
    if int(ids.max()) >= vocab:
        raise CheckpointError(
            f"{raw.path}: token id {int(ids.max())} (input or upstream special token) is outside the "
            f"vocabulary of {vocab} rows"
        )
    if length > t.pos.shape[0]:
        raise InputError(
            f"padded length {length} exceeds the {t.pos.shape[0]} position embeddings of the checkpoint"
        )
    pos = t.pos[:length]
    type0 = t.types[0]
    # Pass 1 (§2.2): per instance row; type 0 everywhere (token_type_ids ignored, Q3 in docs/checkpoint-formats.md).
    e1 = _layer_norm(t.word[ids] + type0 + pos, t.emb_ln_w, t.emb_ln_b, t.eps, t.keep)
    m = _mux(raw, e1, t, n, dtype)
    # Pass 2 (docs/checkpoint-formats.md §2.4): the SAME position/type tables and LayerNorm again.
    x = _layer_norm(m + type0 + pos, t.emb_ln_w, t.emb_ln_b, t.eps, t.keep)
    x = _encoder(x, t, None)  # no attention mask: PAD tokens are attended (Q2 in docs/checkpoint-formats.md)
    z = _demux(raw, x, t, n, dtype)
    wc = _tensor(raw.state_dict, "classifier.weight", dtype, raw.path)
    if wc.shape[1] != z.shape[1]:
        raise CheckpointError(
            f"{raw.path}: tensor classifier.weight has shape {list(wc.shape)}, expected [C, {z.shape[1]}]"
        )
    logits = F.linear(z, wc, _tensor(raw.state_dict, "classifier.bias", dtype, raw.path))
    return logits[:b]


# --------------------------------------------------------------------------------------------------
# N = 1 families (D, E, F): docs/checkpoint-formats.md §2.8
# --------------------------------------------------------------------------------------------------
def _forward_single(raw, t: _Trunk, ids, attention_mask, token_type_ids, dtype):
    b, s = ids.shape
    if attention_mask is None:
        mask = torch.ones(b, s, dtype=dtype)
    else:
        mask = _as_2d("attention_mask", attention_mask, integer=False).to(dtype)
        if tuple(mask.shape) != (b, s):
            raise InputError(f"attention_mask: shape {list(mask.shape)} differs from input_ids {[b, s]}")
    if token_type_ids is None:
        tt = torch.zeros(b, s, dtype=torch.int64)
    else:
        tt = _as_2d("token_type_ids", token_type_ids, integer=True)
        if tuple(tt.shape) != (b, s):
            raise InputError(f"token_type_ids: shape {list(tt.shape)} differs from input_ids {[b, s]}")
        _check_range("token_type_ids", tt, t.types.shape[0], "type vocabulary of the checkpoint")
    if s > t.pos.shape[0]:
        raise InputError(f"input_ids: sequence length {s} exceeds the {t.pos.shape[0]} position embeddings")
    x = _layer_norm(t.word[ids] + t.types[tt] + t.pos[:s], t.emb_ln_w, t.emb_ln_b, t.eps, t.keep)
    add_mask = ((1.0 - mask) * -10000.0)[:, None, None, :]  # transformers 4.17 extended mask
    x = _encoder(x, t, add_mask)
    sd, path = raw.state_dict, raw.path
    wp = _tensor(sd, "bert.pooler.dense.weight", dtype, path)
    if wp.dim() != 2 or wp.shape[1] != t.d:
        raise CheckpointError(
            f"{path}: tensor bert.pooler.dense.weight has shape {list(wp.shape)}, expected [D, {t.d}]"
        )
    if t.hidden_z is not None:
        wp = wp * t.hidden_z  # update_params: hidden_z into pooler input columns (docs/checkpoint-formats.md §2.9)
    pooled = torch.tanh(F.linear(x[:, 0], wp, _tensor(sd, "bert.pooler.dense.bias", dtype, path)))
    wc = _tensor(sd, "classifier.weight", dtype, path)
    if wc.shape[1] != pooled.shape[1]:
        raise CheckpointError(
            f"{path}: tensor classifier.weight has shape {list(wc.shape)}, expected [C, {pooled.shape[1]}]"
        )
    return F.linear(pooled, wc, _tensor(sd, "classifier.bias", dtype, path))


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------
def forward(raw: RawCheckpoint, input_ids, attention_mask=None, token_type_ids=None, *,
            seq_len: int = 128, padding: str = "repeat-last", seed: int = 0,
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Upstream inference logits of a checkpoint (``docs/checkpoint-formats.md`` §2.1–§2.9).

    Args:
        raw: a checkpoint read by :func:`prumux_compile.checkpoint.read_raw`; any family of
        docs/checkpoint-formats.md §1.1.
        input_ids: integer token ids ``[B, S]`` (torch tensor or numpy array; cast to int64). Never
            modified: upstream's in-place write of [CLS] into column 0 (Q18 in docs/checkpoint-formats.md) happens on a copy.
        attention_mask: ``[B, S]`` 0/1, or ``None`` (all ones). Used by the N = 1 families only.
        token_type_ids: ``[B, S]`` integers, or ``None`` (all zeros). Used by the N = 1 families only.
        seq_len: padded sequence length L of the multiplexed families (unused for N = 1).
        padding: batch-padding policy of the multiplexed families when ``B % N != 0`` (docs/checkpoint-formats.md §2.1
            step 1, Q1, field fault F18 in docs/field-faults.md): ``"repeat-last"`` (default, our deterministic policy) appends
            ``k = N - B % N`` copies of the LAST real row; ``"upstream"`` draws the ``k`` rows like
            upstream, ``torch.randint(0, B, (k,))``, from ``torch.Generator().manual_seed(seed)``
            (followed by upstream's second, independent draw for the mask rows, which does not affect
            the logits). The padded rows share the last mux group with real rows and therefore change
            those rows' logits; their own logits are dropped.
        seed: seed of the ``"upstream"`` policy.
        dtype: floating dtype of the whole computation (``torch.float64`` for a tight oracle).

    Semantics:
        * Multiplexed families (``prumux_compressed``, ``prumux_masked``, ``muxplm``; N =
          ``raw.num_instances``): ``input_ids`` are right-padded with [PAD] (0) to exactly ``seq_len``;
          the encoder sees no attention mask and attends PAD tokens (Q2 in docs/checkpoint-formats.md), so the logits depend on
          ``seq_len``; ``attention_mask`` and ``token_type_ids`` are ignored (Q3 in docs/checkpoint-formats.md). index_pos / mlp demux
          write [CLS] (101) into column 0; index demux prepends the ``N + 1`` token prefix (L' =
          seq_len + N + 1). Double embedding pass (docs/checkpoint-formats.md §2.4), mux (§2.3), post-LN encoder
          (docs/checkpoint-formats.md §2.5), demux (docs/checkpoint-formats.md §2.6: index_pos with
          ``num_hidden_demux_layers`` (default 2) and ``legacy_demuxing``, mlp,
          index), classifier (docs/checkpoint-formats.md §2.7).
        * N = 1 families (``cofi_compressed``, ``cofi_masked``, ``bert``): standard BERT at the given
          length S with attention mask (additive ``(1 - mask) * -10000``) and token types, pooler tanh
          and classifier (docs/checkpoint-formats.md §2.8).
        * Masked families (``prumux_masked``, ``cofi_masked``): masks multiplied into full-width weights
          as upstream ``update_params`` (docs/checkpoint-formats.md §2.9), LayerNorm statistics over the kept hidden
          dims only,
          pruned hidden dims held at 0, sublayer removal decided statically from the masks (module
          docstring: field fault F3 in docs/field-faults.md).
        * Compressed families: every width from the weight shapes (docs/checkpoint-formats.md §1.4); head size
        ``raw.head_size``.
        * LayerNorm eps = config ``layer_norm_eps`` (default 1e-12) in every LayerNorm, the demultiplexer's
          included; the FFN activation is ``config.hidden_act`` (default the exact erf GELU; each implemented
          name is written from its formula), the demultiplexer always uses the erf GELU and the pooler tanh.

    Returns:
        logits ``[B, C]`` of ``dtype`` (C = rows of ``classifier.weight``), one row per input row.

    Raises:
        InputError: ``input_ids`` not a 2-D integer array, ``B == 0``, ids outside the vocabulary,
            ``S > seq_len`` (multiplexed families), a length beyond the position table, mismatched
            ``attention_mask``/``token_type_ids`` shapes, an unknown ``padding``, ``seq_len < 1``.
        CheckpointError: a missing tensor, a tensor or mask of the wrong shape (the message names it,
            its shape and the expected shape), a ``hidden_z`` that keeps nothing, an unknown family, a
            ``config.json`` value this reference does not implement (``hidden_act``, ``layer_norm_eps``,
            ``position_embedding_type``, ``is_decoder``, ``add_cross_attention``, ``model_type``,
            ``num_hidden_demux_layers``, ``legacy_demuxing``; field fault F22 in docs/field-faults.md).
    """
    if padding not in PADDING_POLICIES:
        raise InputError(f"padding={padding!r}: expected one of {', '.join(PADDING_POLICIES)}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise InputError(f"dtype={dtype!r}: expected a floating torch dtype")
    if int(seq_len) < 1:
        raise InputError(f"seq_len={seq_len}: must be >= 1")
    ids = _as_2d("input_ids", input_ids, integer=True)
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        raise InputError(f"input_ids: empty batch or sequence (shape {list(ids.shape)})")
    with torch.no_grad():
        trunk, _ = _build_trunk(raw, dtype)
        _check_range("input_ids", ids, trunk.word.shape[0], "vocabulary of the checkpoint")
        if raw.family in _MUXED_FAMILIES:
            return _forward_muxed(raw, trunk, ids, int(seq_len), padding, seed, dtype)
        if raw.family in _SINGLE_FAMILIES:
            return _forward_single(raw, trunk, ids, attention_mask, token_type_ids, dtype)
    raise CheckpointError(f"{raw.path}: unknown checkpoint family {raw.family!r}")
