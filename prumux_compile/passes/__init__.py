"""IR passes, one per file, and the default pipeline.

Order: fold-masks -> prune-hidden -> prune-heads -> prune-ffn -> drop-empty-sublayers
(the *pruning* stage: the physically pruned model, what upstream's evaluation.py runs eagerly) ->
fuse-mux -> fuse-demux -> fold-attention-scale -> trim-last-layer (the *fusion* stage) -> [align-dims]
(GPU engines only).
"""
from __future__ import annotations

from prumux_compile.ir import ModelIR
from prumux_compile.passes.align_dims import AlignDims
from prumux_compile.passes.base import Pass, PassManager, PassReport
from prumux_compile.passes.drop_empty_sublayers import DropEmptySublayers
from prumux_compile.passes.fold_attention_scale import FoldAttentionScale
from prumux_compile.passes.fold_masks import FoldMasks
from prumux_compile.passes.fuse_demux import FuseDemux
from prumux_compile.passes.fuse_mux import FuseMux
from prumux_compile.passes.prune_ffn import PruneFFN
from prumux_compile.passes.prune_heads import PruneHeads
from prumux_compile.passes.prune_hidden import PruneHidden
from prumux_compile.passes.trim_last_layer import TrimLastLayer

PRUNING_PASSES = (FoldMasks, PruneHidden, PruneHeads, PruneFFN, DropEmptySublayers)
FUSION_PASSES = (FuseMux, FuseDemux, FoldAttentionScale, TrimLastLayer)
#: Every pass by name; ``align-dims`` (zero-pad heads / FFN dims for GPU GEMMs, docs/checkpoint-formats.md E9) is opt-in.
ALL_PASSES = {cls.name: cls for cls in PRUNING_PASSES + FUSION_PASSES + (AlignDims,)}


def default_passes(stage: str = "all") -> list[Pass]:
    """The passes of ``stage``: ``"pruning"`` (physically pruned, unfused) or ``"all"``."""
    classes = PRUNING_PASSES if stage == "pruning" else PRUNING_PASSES + FUSION_PASSES
    return [cls() for cls in classes]


def compile_ir(ir: ModelIR, stage: str = "all") -> tuple[ModelIR, list[PassReport]]:
    """Run the default pipeline up to ``stage`` (see :func:`default_passes`)."""
    return PassManager(default_passes(stage)).run(ir)


__all__ = ["Pass", "PassManager", "PassReport", "compile_ir", "default_passes", "ALL_PASSES"]
