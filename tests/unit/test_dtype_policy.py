"""The compute-dtype policy of the one compact model (prumux_compile.kernels), checked on the CPU in bfloat16:
every GEMM of the encoder and demultiplexer runs in bf16; every LayerNorm, softmax and reduction sees float32;
the logits are float32 and within the bf16 criteria of the comparator against the float64 reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from prumux_compile.checkpoint import load, read_raw
from prumux_compile.export.inputs import realistic_inputs
from prumux_compile.export.spec import spec_for_ir
from prumux_compile.kernels import build_module
from prumux_compile.passes import compile_ir
from prumux_compile.validation import case_inputs, compare, criteria_for, reference_logits, validation_cases

SEQ, V = 16, 1024  # the index demux prefix uses ids up to 680
BASE = dict(vocab=V, max_pos=64, num_layers=3, hidden=32, heads=4, ffn=48, num_labels=3)
FAMILIES = {
    "index_pos": dict(family="prumux_compressed", num_instances=2, heads_kept=[[0, 2], [1], [3]],
                      ffn_kept=[list(range(20)), [], list(range(9))]),
    "index": dict(family="prumux_compressed", num_instances=3, demuxing_variant="index"),
    "mlp": dict(family="muxplm", num_instances=2, demuxing_variant="mlp"),
    "bert": dict(family="bert"),
}
_REDUCTIONS = {"layer_norm", "softmax", "sum", "mean", "var"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Record(TorchFunctionMode):
    """Records (op name, dtype of its first tensor argument) of every torch function called."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[str, torch.dtype, int | None]] = []  # (op, input dtype, id of a linear's weight)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if first is not None and first.is_floating_point():
            weight = args[1] if name == "linear" and len(args) > 1 else None
            self.seen.append((name, first.dtype, id(weight) if weight is not None else None))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_bf16_policy_on_cpu(name, synth_ckpt):
    path = synth_ckpt(name, **{**BASE, **FAMILIES[name]})
    ir, _ = compile_ir(load(path, seq_len=SEQ))
    model = build_module(ir, torch.bfloat16)
    head = {id(model.classifier_w)} | ({id(model.pooler_w)} if model.pooler_w is not None else set())
    feeds = realistic_inputs(5, 12, V, seed=2)
    x = [torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask", "token_type_ids")]
    rec = _Record()
    with torch.no_grad(), rec:
        out = model(*x)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()

    linears = [(dt, w) for op, dt, w in rec.seen if op == "linear"]
    gemms = [dt for dt, w in linears if w not in head]
    assert gemms and all(dt == torch.bfloat16 for dt in gemms)  # every encoder / demux GEMM in bf16
    assert [dt for dt, w in linears if w in head] == [torch.float32] * len(head)  # pooler, classifier: fp32
    reductions = [(op, dt) for op, dt, _ in rec.seen if op in _REDUCTIONS]
    assert {op for op, _ in reductions} >= {"layer_norm", "softmax"}
    assert all(dt == torch.float32 for _, dt in reductions), reductions

    # weights: GEMM weights stored in bf16, LayerNorm parameters in float32
    att = next(l.attention for l in model.layers if l.attention is not None)
    assert att.wq.dtype == torch.bfloat16 and att.ln.weight.dtype == torch.float32

    # numerics: the comparator's bf16 criteria against the float64 reference, on the standard cases
    raw = read_raw(path)
    spec = spec_for_ir(ir)
    crit = criteria_for("torch-cuda", "bf16")
    worst = 0.0
    for b, s in validation_cases(spec):
        f = case_inputs(spec, b, s)
        with torch.no_grad():
            got = model(*(torch.from_numpy(f[k]) for k in ("input_ids", "attention_mask", "token_type_ids")))
        c = compare(got.numpy(), reference_logits(raw, spec, f), crit)
        assert c.within, (b, s, c)
        worst = max(worst, c.max_abs_diff)
    assert 1e-4 < worst  # really bf16 (an fp32 model is within 1e-5)


def test_fp32_policy_is_the_exported_model(synth_ckpt):
    """With the default compute dtype no cast is added: the fp32 model equals the one before the policy existed
    (same ops, bit for bit against a model built with an explicit float32 policy)."""
    path = synth_ckpt("fp32", **{**BASE, **FAMILIES["index_pos"]})
    ir, _ = compile_ir(load(path, seq_len=SEQ))
    feeds = realistic_inputs(3, 12, V, seed=1)
    x = [torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask", "token_type_ids")]
    model = build_module(ir)
    rec = _Record()
    with torch.no_grad(), rec:
        a = model(*x)
    assert rec.seen and not any(op in ("to", "float", "type") for op, _, _ in rec.seen)
    with torch.no_grad():
        b = build_module(ir, torch.float32)(*x)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
