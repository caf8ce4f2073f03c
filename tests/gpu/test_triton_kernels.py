"""Fused Triton multiplexer / demultiplexer vs their PyTorch forms (the oracle).

``gpu``-marked tests need CUDA and the ``triton`` package and are skipped without them. The unmarked tests
check the PyTorch forms themselves against the compiled model's modules (so the oracle is right) and the
argument checks.
"""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from prumux_compile.checkpoint import load
from prumux_compile.errors import InputError
from prumux_compile.kernels.mux import MuxEmbedding
from prumux_compile.kernels.triton_demux import demux_first_torch, demux_first_triton
from prumux_compile.kernels.triton_mux import mux_embed_torch, mux_embed_triton, triton_available
from prumux_compile.passes import ALL_PASSES, compile_ir

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device (torch.cuda.is_available() is False)")
SEQ, V = 16, 1024


def _compiled(synth_ckpt, n, **extra):
    path = synth_ckpt(f"k{n}", vocab=V, max_pos=64, num_layers=2, hidden=32, heads=4, ffn=48,
                      family="prumux_compressed", num_instances=n, **extra)
    return compile_ir(load(path, seq_len=SEQ))[0]


# ------------------------------------------------------------------------------------------------ CPU
@pytest.mark.parametrize("n", [2, 5])
def test_mux_torch_form_equals_compiled_module(n, synth_ckpt):
    ir = _compiled(synth_ckpt, n)
    module = MuxEmbedding(ir.embeddings, ir.mux, ir.eps, SEQ)
    assert module.fused
    ids = torch.randint(0, V, (3 * n, SEQ), generator=torch.Generator().manual_seed(n))
    with torch.no_grad():
        want = module(ids)
    got = mux_embed_torch(ids, ir.embeddings.word, module.const, ir.mux.fused_scale, ir.mux.fused_shift, ir.eps,
                          (ir.embeddings.ln_weight, ir.embeddings.ln_bias))
    assert got.shape == (3, SEQ, 32) and (got - want).abs().max().item() <= 1e-5
    m_only = mux_embed_torch(ids.int(), ir.embeddings.word, module.const, ir.mux.fused_scale, ir.mux.fused_shift,
                             ir.eps, out_dtype=torch.float16)
    assert m_only.dtype == torch.float16 and not torch.allclose(m_only.float(), got, atol=1e-2)


@pytest.mark.parametrize("n", [2, 3])
def test_demux_torch_form_equals_unfused_first_layer(n, synth_ckpt):
    """gelu(shared·h + const_n) == gelu(dense_1([e_n ; h])) of the IR before fuse-demux (docs/checkpoint-formats.md E4)."""
    path = synth_ckpt(f"d{n}", vocab=V, max_pos=64, num_layers=2, hidden=32, heads=4, ffn=48,
                      family="prumux_compressed", num_instances=n)
    before = load(path, seq_len=SEQ)
    after, _ = ALL_PASSES["fuse-demux"]().run(before)
    t0, t1 = before.demux.tensors, after.demux.tensors
    h = torch.randn(7, 32, generator=torch.Generator().manual_seed(1))
    e = t0["demux_instance_embedding"]
    u = torch.cat([e[None].expand(7, n, 32), h[:, None].expand(7, n, 32)], -1)
    want = F.gelu(F.linear(u, t0["dense_1.weight"], t0["dense_1.bias"]))
    got = demux_first_torch(h, t1["dense_1.shared"], t1["dense_1.const"])
    assert got.shape == (7, n, want.shape[-1]) and (got - want).abs().max().item() <= 1e-5


@pytest.mark.parametrize("args,match", [
    (dict(ids=torch.zeros(5, 4, dtype=torch.long)), "not a multiple of N"),
    (dict(ids=torch.zeros(4, 4)), "int64/int32"),
    (dict(const=torch.zeros(3, 8)), "widths disagree"),
    (dict(ln2=(torch.zeros(7), torch.zeros(8))), "pass-2 LayerNorm"),
])
def test_mux_argument_checks(args, match):
    base = dict(ids=torch.zeros(4, 4, dtype=torch.long), word=torch.zeros(10, 8), const=torch.zeros(4, 8),
                scale=torch.zeros(2, 8), shift=torch.zeros(8), eps=1e-12, ln2=None)
    base.update(args)
    with pytest.raises(InputError, match=match):
        mux_embed_torch(**base)


def test_demux_argument_checks():
    with pytest.raises(InputError, match="widths disagree"):
        demux_first_torch(torch.zeros(3, 8), torch.zeros(16, 9), torch.zeros(2, 16))
    with pytest.raises(InputError, match="one dtype"):
        demux_first_torch(torch.zeros(3, 8), torch.zeros(16, 8, dtype=torch.float64), torch.zeros(2, 16))


def test_triton_forms_refuse_cpu_tensors():
    ok, why = triton_available("cpu")
    assert not ok and why
    with pytest.raises(RuntimeError, match="mux_embed_triton"):
        mux_embed_triton(torch.zeros(4, 4, dtype=torch.long), torch.zeros(10, 8), torch.zeros(4, 8),
                         torch.zeros(2, 8), torch.zeros(8), 1e-12)
    with pytest.raises(RuntimeError, match="demux_first_triton"):
        demux_first_triton(torch.zeros(3, 8), torch.zeros(16, 8), torch.zeros(2, 16))


# ------------------------------------------------------------------------------------------------ GPU
MUX_CASES = [  # (N, d', groups, L, fuse pass-2 LN, output dtype)
    (2, 32, 3, 16, True, torch.float32), (5, 768, 4, 128, True, torch.float32), (10, 700, 2, 33, True, torch.float32),
    (2, 768, 8, 128, False, torch.float32), (5, 768, 4, 64, True, torch.float16), (10, 768, 4, 64, True, torch.bfloat16),
]
OUT_TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("n,d,groups,length,fuse,dtype", MUX_CASES)
def test_mux_triton_matches_torch(n, d, groups, length, fuse, dtype):
    pytest.importorskip("triton")
    gen = torch.Generator().manual_seed(n * 1000 + d)
    dev = "cuda"
    word = (torch.randn(3000, d, generator=gen) * 0.2).to(dev)
    const = (torch.randn(length, d, generator=gen) * 0.2).to(dev)
    scale = (torch.randn(n, d, generator=gen) / n).to(dev)
    shift = (torch.randn(d, generator=gen) * 0.1).to(dev)
    ln2 = ((1 + 0.1 * torch.randn(d, generator=gen)).to(dev), (0.1 * torch.randn(d, generator=gen)).to(dev)) if fuse else None
    ids = torch.randint(0, 3000, (groups * n, length), generator=gen).to(dev)
    want = mux_embed_torch(ids, word, const, scale, shift, 1e-12, ln2, out_dtype=dtype)
    got = mux_embed_triton(ids, word, const, scale, shift, 1e-12, ln2, out_dtype=dtype)
    assert got.dtype == dtype and got.shape == (groups, length, d)
    assert torch.isfinite(got.float()).all()
    assert (got.float() - want.float()).abs().max().item() <= OUT_TOL[dtype]
    got32 = mux_embed_triton(ids.int(), word, const, scale, shift, 1e-12, ln2, out_dtype=dtype)
    assert torch.equal(got32, got)  # int32 ids give the same result


DEMUX_CASES = [  # (groups, d', D, N, dtype)
    (1, 32, 32, 2, torch.float32), (37, 700, 768, 5, torch.float32), (128, 768, 768, 10, torch.float32),
    (128, 768, 768, 2, torch.float16), (37, 700, 768, 10, torch.float16), (64, 768, 768, 5, torch.bfloat16),
]
DEMUX_TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 6e-2}


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("groups,k,d,n,dtype", DEMUX_CASES)
def test_demux_triton_matches_torch(groups, k, d, n, dtype):
    pytest.importorskip("triton")
    gen = torch.Generator().manual_seed(groups + k + n)
    h = torch.randn(groups, k, generator=gen).to("cuda", dtype)
    shared = (torch.randn(d, k, generator=gen) / k ** 0.5).to("cuda", dtype)
    const = torch.randn(n, d, generator=gen).cuda()
    want = demux_first_torch(h, shared, const)
    got = demux_first_triton(h, shared, const)
    assert got.dtype == dtype and got.shape == (groups, n, d)
    # float64 ground truth: Triton (fp32 accumulate, fp32 epilogue) must be at least as close as the torch form
    exact = F.gelu((h.double() @ shared.double().T)[:, None, :] + const.double()[None])
    assert (got.double() - exact).abs().max().item() <= DEMUX_TOL[dtype]
    assert (got.float() - want.float()).abs().max().item() <= DEMUX_TOL[dtype]
