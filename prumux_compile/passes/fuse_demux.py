"""``fuse-demux``: restructure the demultiplexer's first dense layer (docs/checkpoint-formats.md E4).

* index_pos: ``dense_1([e_n ; h]) = (W1[:, :d'] e_n + b1) + W1[:, d':] h`` — a per-instance constant
  ``[N, D]`` plus ONE shared GEMM per mux group (G rows instead of G*N).
* mlp: the N per-instance ``dense_n`` stacked into one ``[N*D, d']`` GEMM; their LayerNorm affines stacked.
* index: ``dense([p_n ; h_N]) = W[:, :d'] p_n + W[:, d':] h_N + b`` (the shared half once per group).
Exact up to float reassociation.
"""
from __future__ import annotations

import torch

from prumux_compile.ir import ModelIR
from prumux_compile.passes.base import Pass


class FuseDemux(Pass):
    name = "fuse-demux"

    def applies(self, ir: ModelIR) -> bool:
        return ir.demux is not None and not ir.demux.fused and ir.hidden_keep is None

    def apply(self, ir: ModelIR) -> tuple[str, dict]:
        dm = ir.demux
        t = dm.tensors
        d = ir.hidden
        n = ir.num_instances
        if dm.variant == "index_pos":
            w1 = t.pop("dense_1.weight")
            b1 = t.pop("dense_1.bias")
            e = t.pop("demux_instance_embedding")
            t["dense_1.const"] = e @ w1[:, :d].T + b1
            t["dense_1.shared"] = w1[:, d:].contiguous()
            how = "dense_1 split into a per-instance constant and one shared GEMM per group"
        elif dm.variant == "mlp":
            t["dense_all.weight"] = torch.cat([t.pop(f"dense_{i}.weight") for i in range(n)])
            t["dense_all.bias"] = torch.cat([t.pop(f"dense_{i}.bias") for i in range(n)])
            t["ln_all.weight"] = torch.stack([t.pop(f"layer_norm_{i}.weight") for i in range(n)])
            t["ln_all.bias"] = torch.stack([t.pop(f"layer_norm_{i}.bias") for i in range(n)])
            how = f"{n} instance dense layers stacked into one GEMM"
        else:
            w = t.pop("dense.weight")
            t["dense.left"] = w[:, :d].contiguous()
            t["dense.right"] = w[:, d:].contiguous()
            how = "dense split into prefix and [CLS] halves"
        dm.fused = True
        return f"{dm.variant} demultiplexer: {how}", {"variant": dm.variant, "num_instances": n}
