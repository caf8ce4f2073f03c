"""The OpenAI-Triton multiplexer / first-demux kernels run in CI, on the CPU, under Triton's interpreter
(``TRITON_INTERPRET=1``, set before ``triton`` is imported, hence a subprocess): against their PyTorch forms at
awkward widths and every precision, and inside the CUDA runtime (kernel choice ``"triton"``) judged by the
comparator against the float64 reference. Skipped when the ``triton`` wheel (``dev`` extra) is missing.

Not checkable here: the demux kernel in bfloat16. Triton 3.9.0's interpreter computes ``tl.dot`` on bfloat16
operands wrongly (a 16x16 bf16 ``tl.dot`` is off by ~1e10 under the interpreter; numpy has no bfloat16), so the
bf16 GEMM path runs only on a GPU (``tests/gpu/test_triton_kernels.py``). bfloat16 loads and stores do work and are
checked through the multiplexer."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="the 'triton' wheel is not installed (pip install '.[dev]')")

_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    torch.set_num_threads(1)
    from prumux_compile.kernels.triton_mux import mux_embed_torch, mux_embed_triton, triton_available
    from prumux_compile.kernels.triton_demux import demux_first_torch, demux_first_triton
    out = {"available": triton_available("cpu"), "mux": [], "demux": []}
    g = torch.Generator().manual_seed(0)
    V = 300
    for n, d, L, ln2, dt in [(2, 48, 7, True, torch.float32), (5, 32, 5, False, torch.float32),
                             (3, 40, 4, True, torch.float16), (2, 32, 6, True, torch.bfloat16)]:
        ids = torch.randint(0, V, (2 * n, L), generator=g)
        args = (ids, torch.randn(V, d, generator=g).to(dt), torch.randn(L, d, generator=g),
                torch.randn(n, d, generator=g) / n, torch.randn(d, generator=g), 1e-12,
                (1 + 0.1 * torch.randn(d, generator=g), 0.1 * torch.randn(d, generator=g)) if ln2 else None)
        a, b = mux_embed_torch(*args, out_dtype=dt), mux_embed_triton(*args, out_dtype=dt)
        out["mux"].append([n, d, str(dt), list(b.shape), str(b.dtype), (a.float() - b.float()).abs().max().item()])
    for n, d, k, dt in [(2, 48, 40, torch.float32), (4, 64, 32, torch.float16), (3, 24, 56, torch.float16)]:
        h = torch.randn(5, k, generator=g).to(dt)
        shared = (torch.randn(d, k, generator=g) / k ** 0.5).to(dt)
        const = torch.randn(n, d, generator=g)
        a, b = demux_first_torch(h, shared, const), demux_first_triton(h, shared, const)
        out["demux"].append([n, d, str(dt), list(b.shape), str(b.dtype), (a.float() - b.float()).abs().max().item()])

    # the CUDA runtime with both Triton kernels chosen, on the CPU, judged by the comparator
    from prumux_compile.checkpoint import load, read_raw
    from prumux_compile.engines.base import Compiled, EngineConfig
    from prumux_compile.engines.torch_cuda import CudaOptions, TorchCudaBackend
    from prumux_compile.export.spec import spec_for_ir
    from prumux_compile.passes import compile_ir
    from prumux_compile.validation import validate
    ir, _ = compile_ir(load(sys.argv[1], seq_len=16))
    backend = TorchCudaBackend(CudaOptions(device="cpu", graph_mode="eager", mux_kernel="triton",
                                           demux_kernel="triton"))
    art = backend.build(Compiled(sys.argv[2] + "/model.onnx", spec_for_ir(ir), ir),
                        EngineConfig(out_dir=sys.argv[2], batch_sizes=(2,)))  # one mux group: the timing is interpreted
    with backend.load(art) as runner:
        res = validate({"e": runner}, read_raw(sys.argv[1]), art.spec, art.criteria, cases=[(1, 16), (5, 7)])["e"]
        out["runtime"] = {"kernels": runner.model.kernels, "passed": res.passed, "max_abs_diff": res.max_abs_diff,
                          "build_kernels": art.report["kernel_choice"],
                          "mux_diff": art.report["kernels"]["mux"]["max_abs_diff"]}
    print(json.dumps(out))
""")


def test_triton_kernels_under_the_interpreter(tmp_path):
    from prumux_compile.demo.synthetic import SynthSpec, write_checkpoint

    write_checkpoint(tmp_path / "ckpt", SynthSpec(family="prumux_compressed", num_instances=2, num_layers=2,
                                                  hidden=32, heads=4, ffn=32, vocab=256, max_pos=64, num_labels=3))
    (tmp_path / "engine").mkdir()
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path / "ckpt"), str(tmp_path / "engine")],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["available"][0] is True and "interpreter" in out["available"][1]
    bound = {"torch.float32": 1e-5, "torch.float16": 2e-2, "torch.bfloat16": 5e-2}
    for kind in ("mux", "demux"):
        for n, d, dt, shape, got_dt, diff in out[kind]:
            assert shape[-1] == d and shape[0] in (2, 5), (kind, n, d)
            if kind == "demux":
                assert shape[1] == n and got_dt == dt
            assert diff <= bound[dt], (kind, n, d, dt, diff)
    rt = out["runtime"]
    assert rt["kernels"] == {"mux": "triton", "demux": "triton", "attention": "sdpa"} == rt["build_kernels"]
    assert rt["passed"] and rt["max_abs_diff"] <= 1e-4 and rt["mux_diff"] <= 1e-5
