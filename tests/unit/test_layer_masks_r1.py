"""A layer mask without its finer mask (finding 17d): ``head_layer_z`` without ``head_z``, ``mlp_z`` without
``intermediate_z``.

Upstream evaluation (``update_params`` then ``prune_model_with_z``; docs/checkpoint-formats.md §1.5, §2.9) folds a
layer mask only together with its finer mask, so such a layer mask has no effect there. Both the reference and the
compiled model follow that rule; the expected logits are built without the rule under test:

* N = 1: with only layer masks in ``zs.pt`` upstream evaluation runs the unpruned model, i.e. transformers'
  ``BertForSequenceClassification`` on the stored weights (no project code);
* N = 2 and soft masks: the same checkpoint whose ``zs.pt`` lacks the layer mask.

A control shows the masks would matter if they were applied (``head_z`` of ones beside the same ``head_layer_z``).
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from prumux_compile.checkpoint import load, read_raw
from prumux_compile.kernels import build_module
from prumux_compile.passes import compile_ir
from prumux_compile.reference import forward
from prumux_compile.demo.synthetic import SynthSpec, write_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZES = dict(num_layers=2, hidden=32, heads=4, ffn=48, vocab=128, max_pos=32, num_labels=3)
SEQ = 12


def _with_zs(src, dst, zs: dict) -> object:
    shutil.copytree(src, dst)
    torch.save(zs, dst / "zs.pt")
    return dst


def _inputs(n_rows: int, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(103, SIZES["vocab"], (n_rows, SEQ), generator=g)
    ids[:, 0] = 101
    mask = torch.ones(n_rows, SEQ, dtype=torch.int64)
    mask[1, 8:] = 0
    types = torch.zeros(n_rows, SEQ, dtype=torch.int64)
    types[:, 6:] = 1
    return ids, mask, types


def _compiled(path, seq_len: int = SEQ):
    ir, reports = compile_ir(load(path, seq_len=seq_len), "all")
    fold = next(r for r in reports if r.name == "fold-masks")
    return build_module(ir), fold


def test_layer_masks_alone_give_the_unpruned_model_as_transformers_computes_it(tmp_path):
    transformers = pytest.importorskip("transformers")
    base = tmp_path / "base"
    write_checkpoint(base, SynthSpec(family="cofi_masked", **SIZES))
    # attention of layer 1 and FFN of layer 0 "off" by their layer masks, soft values elsewhere; no finer masks
    zs = {"head_layer_z": torch.tensor([0.7, 0.0]), "mlp_z": torch.tensor([0.0, 0.4])}
    ckpt = _with_zs(base, tmp_path / "layer_only", zs)

    cfg = transformers.BertConfig(**{k: v for k, v in json.loads((ckpt / "config.json").read_text()).items()
                                     if k not in ("architectures", "pruned_heads")})
    cfg._attn_implementation = "eager"
    hf = transformers.BertForSequenceClassification(cfg).eval()
    sd = torch.load(ckpt / "pytorch_model.bin", weights_only=True)
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert [k for k in missing if not k.endswith("position_ids")] == []
    # docs/checkpoint-formats.md §1.4
    assert all(k.startswith("layer_transformation.") or k.endswith("position_ids") for k in unexpected)
    ids, mask, types = _inputs(3)
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits.double()

    got = forward(read_raw(ckpt), ids, mask, types, dtype=torch.float64)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=2e-5, rtol=0)

    module, fold = _compiled(ckpt)
    with torch.no_grad():
        compiled = module(ids, mask, types)
    np.testing.assert_allclose(compiled.double().numpy(), want.numpy(), atol=2e-5, rtol=0)
    assert fold.details["ignored_masks"] == ["head_layer_z", "mlp_z"] and fold.details["masks"] == []

    # control: beside finer masks (all ones) the same layer masks are applied and change the logits
    applied = _with_zs(base, tmp_path / "applied", {**zs, "head_z": torch.ones(2, 1, 4, 1, 1),
                                                    "intermediate_z": torch.ones(2, 1, 1, 48)})
    assert np.abs(forward(read_raw(applied), ids, mask, types, dtype=torch.float64).numpy()
                  - want.numpy()).max() > 1e-2


@pytest.mark.parametrize("family, drop, finer", [
    ("prumux_masked", "head_layer_z", "head_z"),
    ("prumux_masked", "mlp_z", "intermediate_z"),
    ("cofi_masked", "head_layer_z", "head_z"),
])
def test_a_layer_mask_without_its_finer_mask_is_the_file_without_it(tmp_path, family, drop, finer):
    """Soft masks of every other kind stay: only the orphaned layer mask is ignored, by both sides."""
    base = tmp_path / "base"
    n = 2 if family == "prumux_masked" else 1
    write_checkpoint(base, SynthSpec(family=family, num_instances=n, soft_masks=True, hidden_kept=list(range(28)),
                                     heads_kept=[[0, 2, 3], [1, 2]], ffn_kept=[list(range(30)), list(range(40))],
                                     **SIZES))
    zs = torch.load(base / "zs.pt", weights_only=True)
    zs[drop] = torch.tensor([0.0, 0.6])  # would remove layer 0's sublayer if applied
    orphan = _with_zs(base, tmp_path / "orphan", {k: v for k, v in zs.items() if k != finer})
    expected = _with_zs(base, tmp_path / "expected", {k: v for k, v in zs.items() if k not in (finer, drop)})
    applied = _with_zs(base, tmp_path / "applied", zs)  # the finer mask present: the layer mask counts
    ids, mask, types = _inputs(2 * n + 1)

    def ref(path):
        return forward(read_raw(path), ids, mask, types, seq_len=SEQ, dtype=torch.float64).numpy()

    want = ref(expected)
    np.testing.assert_array_equal(ref(orphan), want)
    assert np.abs(ref(applied) - want).max() > 1e-2  # the dropped layer mask matters when it counts

    module, fold = _compiled(orphan)
    with torch.no_grad():
        got = module(ids, mask, types).double().numpy()
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)
    assert fold.details["ignored_masks"] == [drop] and drop not in fold.details["masks"]
    assert f"ignored {drop}: zs.pt has no {finer}" in fold.summary
