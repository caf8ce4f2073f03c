"""Tests of the reference forward pass (``prumux_compile.reference``), docs/checkpoint-formats.md §2.1-2.9.

Every checkpoint is built here from seeded random tensors (config.json + pytorch_model.bin (+ zs.pt)
written to tmp_path and read back with ``read_raw``). Values are checked against independent
computations: transformers' BertForSequenceClassification, a per-group numpy float64 implementation
of the multiplexed forward written below, and compressed checkpoints built in this file by applying
upstream ``update_params`` (docs/checkpoint-formats.md §2.9) and slicing.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from prumux_compile.checkpoint import read_raw
from prumux_compile.errors import CheckpointError, InputError
from prumux_compile.reference import forward

VOCAB = 700  # the index demux prefix uses token ids up to 680
MAX_POS = 24


# --------------------------------------------------------------------------------------------------
# Checkpoint builders
# --------------------------------------------------------------------------------------------------
def _write(path, config, sd, zs=None):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    torch.save({k: v.contiguous() for k, v in sd.items()}, path / "pytorch_model.bin")
    if zs is not None:
        torch.save(zs, path / "zs.pt")
    return read_raw(path)


def _rand(g, *shape, scale=0.3):
    return torch.randn(*shape, generator=g) * scale


def _ln(sd, g, key, width):
    sd[key + ".weight"] = 1.0 + _rand(g, width, scale=0.1)
    sd[key + ".bias"] = _rand(g, width, scale=0.1)


def _linear(sd, g, key, out, inp):
    sd[key + ".weight"] = _rand(g, out, inp)
    sd[key + ".bias"] = _rand(g, out, scale=0.1)


def _trunk(g, *, d, heads, dh, ffn, layers, classes=3, pooler=True):
    sd = {
        "bert.embeddings.word_embeddings.weight": _rand(g, VOCAB, d, scale=1.0),
        "bert.embeddings.position_embeddings.weight": _rand(g, MAX_POS, d, scale=0.5),
        "bert.embeddings.token_type_embeddings.weight": _rand(g, 2, d, scale=0.5),
    }
    _ln(sd, g, "bert.embeddings.LayerNorm", d)
    for i in range(layers):
        p = f"bert.encoder.layer.{i}."
        for name in ("query", "key", "value"):
            _linear(sd, g, p + f"attention.self.{name}", heads * dh, d)
        _linear(sd, g, p + "attention.output.dense", d, heads * dh)
        _ln(sd, g, p + "attention.output.LayerNorm", d)
        _linear(sd, g, p + "intermediate.dense", ffn, d)
        _linear(sd, g, p + "output.dense", d, ffn)
        _ln(sd, g, p + "output.LayerNorm", d)
    if pooler:
        _linear(sd, g, "bert.pooler.dense", d, d)
    _linear(sd, g, "classifier", classes, d)
    return sd


def _instance_embedding(g, mux, n, d):
    if mux == "gaussian_hadamard":
        return torch.randn(n, d, generator=g)
    if mux == "binary_hadamard":
        v = torch.zeros(n, d)
        chunk = d // n
        for k in range(n):
            v[k, k * chunk: d if k == n - 1 else (k + 1) * chunk] = 1.0
        return v
    return torch.stack([torch.linalg.qr(torch.randn(d, d, generator=g))[0] for _ in range(n)])


def _mux_sd(g, *, n, mux, demux, kd=3, d=8, heads=2, dh=4, ffn=12, layers=1, classes=3):
    """A full-width multiplexed checkpoint (family C layout; pooler included as PruMUX saves it)."""
    sd = _trunk(g, d=d, heads=heads, dh=dh, ffn=ffn, layers=layers, classes=classes)
    sd["instance_embedding"] = _instance_embedding(g, mux, n, d)
    if demux == "index_pos":
        sd["demux_module.demux_instance_embedding"] = torch.randn(n, d, generator=g)
        _linear(sd, g, "demux_module.dense_1", d, 2 * d)
        for k in range(2, kd + 1):
            _linear(sd, g, f"demux_module.dense_{k}", d, d)
        for k in range(1, kd + 1):
            _ln(sd, g, f"demux_module.layer_norm_{k}", d)
        _linear(sd, g, "demultiplexer.pre_decoder", d, d)
        _ln(sd, g, "demultiplexer.pre_decoder_layer_norm", d)
    elif demux == "mlp":
        for k in range(n):
            _linear(sd, g, f"demux_module.dense_{k}", d, d)
            _ln(sd, g, f"demux_module.layer_norm_{k}", d)
        _linear(sd, g, "demultiplexer.dense_before_out_proj", d, d)
        _ln(sd, g, "demultiplexer.layernorm", d)
    else:
        _linear(sd, g, "demultiplexer.dense", d, 2 * d)
        _ln(sd, g, "demultiplexer.layer_norm", d)
    return sd


def _config(*, d, heads, layers, ffn, n=None, mux=None, demux=None, kd=3, legacy=False, eps=1e-12):
    cfg = {
        "hidden_size": d, "num_attention_heads": heads, "num_hidden_layers": layers,
        "intermediate_size": ffn, "layer_norm_eps": eps, "hidden_act": "gelu",
        "vocab_size": VOCAB, "max_position_embeddings": MAX_POS, "type_vocab_size": 2,
    }
    if n is not None:
        cfg.update(num_instances=n, muxing_variant=mux, demuxing_variant=demux, legacy_demuxing=legacy)
        if kd is not None:
            cfg["num_hidden_demux_layers"] = kd
    return cfg


def _ids(g, b, s):
    ids = torch.randint(1, VOCAB, (b, s), generator=g)
    ids[:, 0] = 7  # not [CLS]: the reference must write 101 on its own copy
    return ids


# --------------------------------------------------------------------------------------------------
# Independent numpy float64 implementation of the multiplexed forward (no masks), docs/checkpoint-formats.md §2.1-2.7
# --------------------------------------------------------------------------------------------------
_erf = np.vectorize(math.erf)


def _np(sd):
    return {k: v.double().numpy() for k, v in sd.items()}


def _np_ln(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _np_gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _np_lin(w, key, x):
    return x @ w[key + ".weight"].T + w[key + ".bias"]


def _naive_muxed(sd, cfg, ids, seq_len):
    """Per-group, per-instance, per-head loops; B must be a multiple of N."""
    w = _np(sd)
    n, eps, dh = cfg["num_instances"], cfg["layer_norm_eps"], cfg["hidden_size"] // cfg["num_attention_heads"]
    ids = ids.numpy()
    b, s = ids.shape
    assert b % n == 0
    emb = "bert.embeddings."
    out = []
    for grp in range(b // n):
        e1 = []
        for k in range(n):
            row = list(ids[grp * n + k]) + [0] * (seq_len - s)
            if cfg["demuxing_variant"] == "index":
                prefix = [680] * n + [101]
                prefix[k] = 678 - k
                row = prefix + row
            else:
                row[0] = 101
            length = len(row)
            y = w[emb + "word_embeddings.weight"][row] + w[emb + "token_type_embeddings.weight"][0] \
                + w[emb + "position_embeddings.weight"][:length]
            e1.append(_np_ln(y, w[emb + "LayerNorm.weight"], w[emb + "LayerNorm.bias"], eps))
        if cfg["muxing_variant"] == "random_ortho":
            m = sum((w["instance_embedding"][k] @ e1[k].T).T for k in range(n)) / math.sqrt(n)
        else:
            m = sum(e1[k] * w["instance_embedding"][k] for k in range(n)) / n
        x = _np_ln(m + w[emb + "token_type_embeddings.weight"][0] + w[emb + "position_embeddings.weight"][:length],
                   w[emb + "LayerNorm.weight"], w[emb + "LayerNorm.bias"], eps)
        for i in range(cfg["num_hidden_layers"]):
            p = f"bert.encoder.layer.{i}."
            q, kk, v = (_np_lin(w, p + f"attention.self.{t}", x) for t in ("query", "key", "value"))
            ctx = []
            for h in range(q.shape[1] // dh):
                sl = slice(h * dh, (h + 1) * dh)
                sc = q[:, sl] @ kk[:, sl].T / math.sqrt(dh)
                pr = np.exp(sc - sc.max(-1, keepdims=True))
                pr /= pr.sum(-1, keepdims=True)
                ctx.append(pr @ v[:, sl])
            a = _np_lin(w, p + "attention.output.dense", np.concatenate(ctx, axis=1))
            x = _np_ln(x + a, w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], eps)
            u = _np_gelu(_np_lin(w, p + "intermediate.dense", x))
            x = _np_ln(x + _np_lin(w, p + "output.dense", u), w[p + "output.LayerNorm.weight"],
                       w[p + "output.LayerNorm.bias"], eps)
        for k in range(n):
            if cfg["demuxing_variant"] == "index_pos":
                u = np.concatenate([w["demux_module.demux_instance_embedding"][k], x[0]])
                if cfg.get("legacy_demuxing"):
                    y = _np_ln(_np_gelu(_np_lin(w, "demux_module.dense_1", u)),
                               w["demux_module.layer_norm_1.weight"], w["demux_module.layer_norm_1.bias"], eps)
                else:
                    y = _np_gelu(_np_lin(w, "demux_module.dense_1", u))
                    for j in range(2, cfg.get("num_hidden_demux_layers", 2)):
                        y = y + _np_gelu(_np_lin(w, f"demux_module.dense_{j}", y))
                z = y + _np_ln(_np_gelu(_np_lin(w, "demultiplexer.pre_decoder", y)),
                               w["demultiplexer.pre_decoder_layer_norm.weight"],
                               w["demultiplexer.pre_decoder_layer_norm.bias"], eps)
            elif cfg["demuxing_variant"] == "mlp":
                y = _np_ln(_np_gelu(_np_lin(w, f"demux_module.dense_{k}", x[0])),
                           w[f"demux_module.layer_norm_{k}.weight"], w[f"demux_module.layer_norm_{k}.bias"], eps)
                z = _np_ln(_np_gelu(_np_lin(w, "demultiplexer.dense_before_out_proj", y)),
                           w["demultiplexer.layernorm.weight"], w["demultiplexer.layernorm.bias"], eps)
            else:
                u = np.concatenate([x[k], x[n]])
                z = _np_ln(_np_gelu(_np_lin(w, "demultiplexer.dense", u)),
                           w["demultiplexer.layer_norm.weight"], w["demultiplexer.layer_norm.bias"], eps)
            out.append(_np_lin(w, "classifier", z))
    return np.stack(out)


# --------------------------------------------------------------------------------------------------
# update_params + slicing (docs/checkpoint-formats.md §2.9), written independently of the reference, to build family
# A / D
# --------------------------------------------------------------------------------------------------
def _compress(sd, zs, *, d, heads, dh, layers, demux=None, mux=None):
    zh = zs["hidden_z"].reshape(d)
    K = torch.nonzero(zh).reshape(-1)
    hz = zs["head_z"].reshape(layers, heads)
    hlz = zs["head_layer_z"].reshape(layers)
    iz = zs["intermediate_z"].reshape(layers, -1)
    mz = zs["mlp_z"].reshape(layers)
    out = {}
    emb = "bert.embeddings."
    for t in ("word", "position", "token_type"):
        out[emb + f"{t}_embeddings.weight"] = (sd[emb + f"{t}_embeddings.weight"] * zh)[:, K]
    for t in ("weight", "bias"):
        out[emb + f"LayerNorm.{t}"] = sd[emb + f"LayerNorm.{t}"][K]
    for i in range(layers):
        p = f"bert.encoder.layer.{i}."
        kept_heads = [h for h in range(heads) if float(hz[i, h] * hlz[i]) != 0.0]
        if kept_heads:
            rows = torch.cat([torch.arange(h * dh, (h + 1) * dh) for h in kept_heads])
            hrow = hz[i].repeat_interleave(dh)
            for t in ("query", "key"):
                out[p + f"attention.self.{t}.weight"] = (sd[p + f"attention.self.{t}.weight"] * zh)[rows][:, K]
                out[p + f"attention.self.{t}.bias"] = sd[p + f"attention.self.{t}.bias"][rows]
            wv = sd[p + "attention.self.value.weight"] * hrow[:, None] * zh
            out[p + "attention.self.value.weight"] = wv[rows][:, K]
            out[p + "attention.self.value.bias"] = (sd[p + "attention.self.value.bias"] * hrow)[rows]
            wo = sd[p + "attention.output.dense.weight"] * hlz[i] * zh[:, None]
            out[p + "attention.output.dense.weight"] = wo[K][:, rows]
            out[p + "attention.output.dense.bias"] = (sd[p + "attention.output.dense.bias"] * hlz[i] * zh)[K]
            for t in ("weight", "bias"):
                out[p + f"attention.output.LayerNorm.{t}"] = sd[p + f"attention.output.LayerNorm.{t}"][K]
        else:  # upstream keeps the unused [d] attention LayerNorm of a removed attention (Q14 in docs/checkpoint-formats.md)
            for t in ("weight", "bias"):
                out[p + f"attention.output.LayerNorm.{t}"] = sd[p + f"attention.output.LayerNorm.{t}"].clone()
        fk = torch.nonzero(iz[i] * mz[i]).reshape(-1)
        if len(fk):
            out[p + "intermediate.dense.weight"] = (sd[p + "intermediate.dense.weight"] * zh)[fk][:, K]
            out[p + "intermediate.dense.bias"] = sd[p + "intermediate.dense.bias"][fk]
            w2 = sd[p + "output.dense.weight"] * iz[i] * mz[i] * zh[:, None]
            out[p + "output.dense.weight"] = w2[K][:, fk]
            out[p + "output.dense.bias"] = (sd[p + "output.dense.bias"] * mz[i])[K]  # b2 NOT scaled by zH
        for t in ("weight", "bias"):
            out[p + f"output.LayerNorm.{t}"] = sd[p + f"output.LayerNorm.{t}"][K]
    if "bert.pooler.dense.weight" in sd:
        out["bert.pooler.dense.weight"] = (sd["bert.pooler.dense.weight"] * zh)[:, K]
        out["bert.pooler.dense.bias"] = sd["bert.pooler.dense.bias"].clone()
    for key, v in sd.items():  # mux / demux / classifier: copy, then override below
        if not key.startswith("bert."):
            out[key] = v.clone()
    if mux in ("gaussian_hadamard", "binary_hadamard"):
        out["instance_embedding"] = (sd["instance_embedding"] * zh)[:, K]
    elif mux == "random_ortho":
        out["instance_embedding"] = (sd["instance_embedding"] * zh)[:, K][:, :, K]
    both = torch.cat([K, K + d])
    if demux == "index_pos":
        out["demux_module.demux_instance_embedding"] = sd["demux_module.demux_instance_embedding"][:, K]
        out["demux_module.dense_1.weight"] = (sd["demux_module.dense_1.weight"] * torch.cat([zh, zh]))[:, both]
    elif demux == "index":
        out["demultiplexer.dense.weight"] = (sd["demultiplexer.dense.weight"] * torch.cat([zh, zh]))[:, both]
    elif demux == "mlp":
        for key in [k for k in sd if k.startswith("demux_module.dense_") and k.endswith(".weight")]:
            out[key] = (sd[key] * zh)[:, K]
    return out


def _masks(g, *, d, heads, ffn, soft):
    """4 layers: L0 partial heads + partial FFN; L1 head_z all 0 with head_layer_z 1 (Q12 in docs/checkpoint-formats.md) and mlp_z 0
    (whole layer removed, F2 in docs/field-faults.md); L2 head_layer_z 0 (attention removed), full FFN; L3 all heads, FFN dims
    all 0 with mlp_z 1 (FFN removed)."""
    layers = 4
    hidden = torch.ones(d)
    hidden[[1, 6, 11 % d]] = 0.0
    head = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 0, 1], [1, 1, 1, 1]], dtype=torch.float32)[:, :heads]
    head_layer = torch.tensor([1.0, 1.0, 0.0, 1.0])
    inter = (torch.rand(layers, ffn, generator=g) > 0.4).float()
    inter[2] = 1.0
    inter[3] = 0.0
    mlp = torch.tensor([1.0, 0.0, 1.0, 1.0])
    if soft:  # kept entries in (0.2, 1.0), pruned entries exactly 0 (docs/checkpoint-formats.md §1.5)
        s = lambda t: t * (0.2 + 0.8 * torch.rand(t.shape, generator=g))  # noqa: E731
        hidden, head, head_layer, inter, mlp = s(hidden), s(head), s(head_layer), s(inter), s(mlp)
    return {
        "hidden_z": hidden,
        "head_z": head.reshape(layers, 1, heads, 1, 1),
        "head_layer_z": head_layer,
        "intermediate_z": inter.reshape(layers, 1, 1, ffn),
        "mlp_z": mlp,
    }


# --------------------------------------------------------------------------------------------------
# N = 1: plain BERT equals transformers
# --------------------------------------------------------------------------------------------------
def test_bert_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_attention_heads=4, num_hidden_layers=2, intermediate_size=24,
        max_position_embeddings=MAX_POS, type_vocab_size=2, num_labels=3, hidden_act="gelu", layer_norm_eps=1e-12,
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial LayerNorm affines and biases
        for name, prm in model.named_parameters():
            prm.add_(_rand(g, *prm.shape, scale=0.2))
    raw = _write(tmp_path / "bert", cfg.to_dict(), dict(model.state_dict()))
    assert raw.family == "bert"
    ids = torch.randint(0, VOCAB, (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.int64)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    types = torch.zeros(3, 9, dtype=torch.int64)
    types[:, 4:] = 1
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    got = forward(raw, ids, mask, types)
    assert got.shape == (3, 3) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(forward(raw, ids.numpy(), mask.float().numpy(), types.numpy()), got, atol=0, rtol=0)
    # the mask and the token types are real inputs for N = 1
    assert not torch.allclose(forward(raw, ids), got, atol=1e-3)
    assert not torch.allclose(forward(raw, ids, mask), got, atol=1e-3)


# --------------------------------------------------------------------------------------------------
# Multiplexed: equals the hand-written per-group computation
# --------------------------------------------------------------------------------------------------
MUXED_CASES = [
    # (mux, demux, num_hidden_demux_layers (None = absent -> 2), legacy, N)
    ("gaussian_hadamard", "index_pos", 3, False, 2),
    ("gaussian_hadamard", "index_pos", None, False, 2),
    ("gaussian_hadamard", "index_pos", 3, True, 2),
    ("binary_hadamard", "index_pos", 4, False, 3),
    ("random_ortho", "index_pos", 3, False, 2),
    ("gaussian_hadamard", "mlp", None, False, 2),
    ("gaussian_hadamard", "index", None, False, 2),
    ("random_ortho", "index", None, False, 3),
]


@pytest.mark.parametrize("mux,demux,kd,legacy,n", MUXED_CASES)
def test_muxed_matches_handwritten(tmp_path, mux, demux, kd, legacy, n):
    g = torch.Generator().manual_seed(2)
    sd = _mux_sd(g, n=n, mux=mux, demux=demux, kd=kd or 2)
    cfg = _config(d=8, heads=2, layers=1, ffn=12, n=n, mux=mux, demux=demux, kd=kd, legacy=legacy, eps=1e-6)
    raw = _write(tmp_path / "mux", cfg, sd)
    ids = _ids(g, 2 * n, 5)
    want = _naive_muxed(sd, cfg, ids, seq_len=8)
    got64 = forward(raw, ids, seq_len=8, dtype=torch.float64)
    assert got64.dtype == torch.float64 and got64.shape == (2 * n, 3)
    np.testing.assert_allclose(got64.numpy(), want, atol=1e-10, rtol=0)
    np.testing.assert_allclose(forward(raw, ids, seq_len=8).numpy(), want, atol=1e-5, rtol=0)


def test_muxed_ignores_mask_and_types_and_pads_to_seq_len(tmp_path):
    g = torch.Generator().manual_seed(3)
    cfg = _config(d=8, heads=2, layers=2, ffn=12, n=2, mux="gaussian_hadamard", demux="index_pos")
    raw = _write(tmp_path / "mux", cfg, _mux_sd(g, n=2, mux="gaussian_hadamard", demux="index_pos", layers=2))
    ids = _ids(g, 4, 5)
    base = forward(raw, ids, seq_len=8)
    mask = torch.zeros(4, 5, dtype=torch.int64)
    types = torch.ones(4, 5, dtype=torch.int64)
    torch.testing.assert_close(forward(raw, ids, mask, types, seq_len=8), base, atol=0, rtol=0)
    # right-padding with [PAD] = 0 to seq_len is what the reference does itself
    padded = torch.cat([ids, torch.zeros(4, 3, dtype=torch.int64)], dim=1)
    torch.testing.assert_close(forward(raw, padded, seq_len=8), base, atol=1e-6, rtol=0)
    # PAD tokens are attended (no encoder mask, Q2 in docs/checkpoint-formats.md): the padded length changes the logits
    assert not torch.allclose(forward(raw, ids, seq_len=10), base, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# Masks: all-ones zs == no zs; binary and soft zs == compressed-by-slicing (docs/checkpoint-formats.md §2.9)
# --------------------------------------------------------------------------------------------------
FAMILY_CASES = [
    # (N or None for CoFi/BERT, mux, demux)
    (2, "gaussian_hadamard", "index_pos"),
    (3, "binary_hadamard", "mlp"),
    (2, "random_ortho", "index"),
    (None, None, None),
]


def _family_ckpt(g, n, mux, demux, *, d=16, heads=4, ffn=12, layers=4):
    if n is None:
        sd = _trunk(g, d=d, heads=heads, dh=4, ffn=ffn, layers=layers)
        return sd, _config(d=d, heads=heads, layers=layers, ffn=ffn)
    sd = _mux_sd(g, n=n, mux=mux, demux=demux, d=d, heads=heads, dh=4, ffn=ffn, layers=layers)
    return sd, _config(d=d, heads=heads, layers=layers, ffn=ffn, n=n, mux=mux, demux=demux)


@pytest.mark.parametrize("n,mux,demux", FAMILY_CASES)
def test_all_ones_masks_equal_no_masks(tmp_path, n, mux, demux):
    g = torch.Generator().manual_seed(4)
    sd, cfg = _family_ckpt(g, n, mux, demux)
    ones = {k: torch.ones_like(v) for k, v in _masks(g, d=16, heads=4, ffn=12, soft=False).items()}
    masked = _write(tmp_path / "masked", cfg, sd, ones)
    plain = _write(tmp_path / "plain", cfg, sd)
    assert masked.family == ("cofi_masked" if n is None else "prumux_masked")
    ids = _ids(g, 4 if n != 3 else 6, 6)
    torch.testing.assert_close(forward(masked, ids, seq_len=8), forward(plain, ids, seq_len=8), atol=1e-5, rtol=0)
    f64 = dict(seq_len=8, dtype=torch.float64)
    torch.testing.assert_close(forward(masked, ids, **f64), forward(plain, ids, **f64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("soft", [False, True], ids=["binary_z", "soft_z"])
@pytest.mark.parametrize("n,mux,demux", FAMILY_CASES)
def test_masked_equals_sliced(tmp_path, n, mux, demux, soft):
    g = torch.Generator().manual_seed(5)
    d, heads, dh, layers = 16, 4, 4, 4
    sd, cfg = _family_ckpt(g, n, mux, demux, d=d, heads=heads, layers=layers)
    zs = _masks(g, d=d, heads=heads, ffn=12, soft=soft)
    masked = _write(tmp_path / "masked", cfg, sd, zs)
    small = _compress(sd, zs, d=d, heads=heads, dh=dh, layers=layers, demux=demux, mux=mux)
    compressed = _write(tmp_path / "compressed", cfg, small)
    assert masked.family == ("cofi_masked" if n is None else "prumux_masked")
    assert compressed.family == ("cofi_compressed" if n is None else "prumux_compressed")
    assert compressed.state_dict["bert.embeddings.word_embeddings.weight"].shape[1] == d - 3
    rows = 2 * (n or 2)
    ids = _ids(g, rows, 7)
    types = (torch.arange(7) >= 4).long().expand(rows, 7)
    mask = torch.ones(rows, 7, dtype=torch.int64)
    mask[0, 5:] = 0
    a = forward(masked, ids, mask, types, seq_len=9)
    b = forward(compressed, ids, mask, types, seq_len=9)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    a64 = forward(masked, ids, mask, types, seq_len=9, dtype=torch.float64)
    b64 = forward(compressed, ids, mask, types, seq_len=9, dtype=torch.float64)
    # binary z: the sliced weights are the stored ones (exact); soft z: they are fp32 products,
    # rounded when the compressed checkpoint was saved, so fp64 agreement is at that level only
    torch.testing.assert_close(a64, b64, atol=1e-6 if soft else 1e-10, rtol=0)
    # the masks matter: the same weights without zs give other logits
    plain = _write(tmp_path / "plain", cfg, sd)
    assert not torch.allclose(forward(plain, ids, mask, types, seq_len=9), a, atol=1e-3)


def test_hidden_pruned_dims_and_removed_sublayers_are_static(tmp_path):
    """A masked checkpoint whose removed sublayers hold huge weights gives the same logits (F1/F2/F3 in docs/field-faults.md)."""
    g = torch.Generator().manual_seed(6)
    sd, cfg = _family_ckpt(g, 2, "gaussian_hadamard", "index_pos")
    zs = _masks(g, d=16, heads=4, ffn=12, soft=True)
    ref = forward(_write(tmp_path / "a", cfg, sd, zs), _ids(torch.Generator().manual_seed(0), 4, 6), seq_len=8)
    poisoned = dict(sd)
    for key in ("attention.output.dense.bias", "attention.output.LayerNorm.bias"):
        poisoned[f"bert.encoder.layer.1.{key}"] = torch.full_like(sd[f"bert.encoder.layer.1.{key}"], 1e3)
    b2 = "bert.encoder.layer.3.output.dense.bias"
    poisoned[b2] = torch.full_like(sd[b2], 1e3)
    got = forward(_write(tmp_path / "b", cfg, poisoned, zs), _ids(torch.Generator().manual_seed(0), 4, 6), seq_len=8)
    torch.testing.assert_close(got, ref, atol=0, rtol=0)


# --------------------------------------------------------------------------------------------------
# Batch padding (§2.1 step 1, Q1 in docs/checkpoint-formats.md, F18 in docs/field-faults.md)
# --------------------------------------------------------------------------------------------------
@pytest.fixture
def mux_raw(tmp_path):
    g = torch.Generator().manual_seed(7)

    def make(n):
        cfg = _config(d=8, heads=2, layers=1, ffn=12, n=n, mux="gaussian_hadamard", demux="index_pos")
        return _write(tmp_path / f"mux{n}", cfg, _mux_sd(g, n=n, mux="gaussian_hadamard", demux="index_pos"))

    return make


@pytest.mark.parametrize("n", [2, 5])
def test_batch_padding_repeat_last(mux_raw, n):
    raw = mux_raw(n)
    ids = _ids(torch.Generator().manual_seed(8), 7, 6)
    as_numpy = ids.numpy().copy()
    before_t, before_np = ids.clone(), as_numpy.copy()
    out = forward(raw, ids, seq_len=8)
    assert out.shape == (7, 3) and torch.isfinite(out).all()
    torch.testing.assert_close(forward(raw, as_numpy, seq_len=8), out, atol=0, rtol=0)  # numpy input, same call
    torch.testing.assert_close(forward(raw, ids, seq_len=8), out, atol=0, rtol=0)  # deterministic
    assert torch.equal(ids, before_t) and np.array_equal(as_numpy, before_np)  # caller arrays untouched (Q18 in docs/checkpoint-formats.md)
    full = (7 // n) * n
    # complete groups are unaffected by the padding; the last group is completed with copies of row 6
    torch.testing.assert_close(out[:full], forward(raw, ids[:full], seq_len=8), atol=1e-6, rtol=0)
    completed = torch.cat([ids, ids[6:7].expand(full + n - 7, 6)])
    torch.testing.assert_close(out[full:], forward(raw, completed, seq_len=8)[full:7], atol=1e-6, rtol=0)


def test_batch_padding_upstream_mode_is_seeded(mux_raw):
    raw = mux_raw(2)
    ids = _ids(torch.Generator().manual_seed(9), 7, 6)
    a = forward(raw, ids, seq_len=8, padding="upstream", seed=3)
    torch.testing.assert_close(forward(raw, ids, seq_len=8, padding="upstream", seed=3), a, atol=0, rtol=0)
    assert a.shape == (7, 3)
    # documented draw: torch.randint(0, B, (k,)) from torch.Generator().manual_seed(seed)
    j = int(torch.randint(0, 7, (1,), generator=torch.Generator().manual_seed(3)))
    completed = torch.cat([ids, ids[j:j + 1]])
    torch.testing.assert_close(a, forward(raw, completed, seq_len=8)[:7], atol=1e-6, rtol=0)
    # different seeds may pick different rows; the first three groups never change
    b = forward(raw, ids, seq_len=8, padding="upstream", seed=4)
    torch.testing.assert_close(a[:6], b[:6], atol=0, rtol=0)


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key,shape", [
    ("head_z", (4, 1, 3, 1, 1)),
    ("hidden_z", (15,)),
    ("intermediate_z", (4, 1, 1, 13)),
    ("mlp_z", (3,)),
    ("head_layer_z", (5,)),
])
def test_mask_of_wrong_shape_is_rejected(tmp_path, key, shape):
    g = torch.Generator().manual_seed(10)
    sd, cfg = _family_ckpt(g, 2, "gaussian_hadamard", "index_pos")
    zs = _masks(g, d=16, heads=4, ffn=12, soft=False)
    zs[key] = torch.ones(shape)
    raw = _write(tmp_path / "bad", cfg, sd, zs)
    with pytest.raises(CheckpointError, match=rf"{key}.*{list(shape)}".replace("[", r"\[").replace("]", r"\]")):
        forward(raw, _ids(g, 2, 4), seq_len=8)


def test_input_errors(mux_raw):
    raw = mux_raw(2)
    ids = _ids(torch.Generator().manual_seed(11), 2, 9)
    with pytest.raises(InputError, match="seq_len"):
        forward(raw, ids, seq_len=8)
    with pytest.raises(InputError, match="padding"):
        forward(raw, ids, seq_len=16, padding="random")
    with pytest.raises(InputError, match="vocabulary"):
        forward(raw, torch.full((2, 4), VOCAB), seq_len=8)
    with pytest.raises(InputError, match="2-D"):
        forward(raw, torch.ones(4, dtype=torch.int64), seq_len=8)
    with pytest.raises(InputError, match="integer"):
        forward(raw, torch.ones(2, 4), seq_len=8)
