"""ONNX export: structure, interface, metadata, parity with the reference, batching, refusals, determinism.

Parity is checked here with a plain ``onnxruntime.InferenceSession`` and the shared ``make_inputs`` of
``tests/conftest.py``, not with the project's own runner / validator, so that the export is checked by code
that did not produce it.
"""
from __future__ import annotations

import hashlib
import re
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from prumux_compile import reference
from prumux_compile.checkpoint import read_raw
from prumux_compile.engines import registry
from prumux_compile.errors import InputError
from prumux_compile.export_job import export_into
from prumux_compile.export.spec import ExportSpec, make_spec
from prumux_compile.validation import validation_cases
from prumux_compile.demo.synthetic import SynthSpec, write_checkpoint
from tests.conftest import make_inputs

SEQ = 32
BASE = dict(num_layers=3, hidden=32, heads=4, ffn=48, vocab=128, max_pos=64, num_labels=3)
#: name -> (SynthSpec fields, family written into metadata, N)
CKPTS = {
    "bert": (dict(family="bert"), "bert", 1),
    "mux2-index_pos": (dict(family="prumux_compressed", num_instances=2, heads_kept=[[0, 1, 2, 3], [1, 3], []],
                            ffn_kept=[list(range(48)), [], list(range(16))]), "prumux_compressed", 2),
    "mux3-index": (dict(family="prumux_compressed", num_instances=3, demuxing_variant="index", vocab=700,
                        heads_kept=[[0], [1, 2], [0, 1, 2, 3]]), "prumux_compressed", 3),
    "mux2-mlp-masked": (dict(family="prumux_masked", num_instances=2, demuxing_variant="mlp", soft_masks=True,
                             heads_kept=[[1, 2], [0, 1, 2, 3], [3]], ffn_kept=[list(range(30)), [], list(range(48))]),
                        "prumux_masked", 2),
}
META_KEYS = ("prumux.num_instances", "prumux.family", "prumux.num_labels", "prumux.id2label", "prumux.tool_version")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (checkpoint dir, export dir, ExportResult); each checkpoint exported once per module."""
    cache = {}

    def get(name):
        if name not in cache:
            fields, _, _ = CKPTS[name]
            root = tmp_path_factory.mktemp(name)
            write_checkpoint(root / "ckpt", SynthSpec(**{**BASE, **fields}))
            (root / "out").mkdir()
            result = export_into(root / "ckpt", root / "out", seq_len=SEQ, threads=1)
            cache[name] = (root / "ckpt", root / "out", result)
        return cache[name]

    return get


def _session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _feeds(ids, mask, tt):
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt}


@pytest.mark.parametrize("name", list(CKPTS))
def test_graph_is_standard_onnx_without_control_flow(name, exported):
    _, out, _ = exported(name)
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    model = onnx.load(str(out / "model.onnx"))
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
    assert min(o.version for o in model.opset_import) >= 17
    assert not any(n.op_type in ("If", "Loop") for n in model.graph.node)
    assert len(model.functions) == 0


@pytest.mark.parametrize("name", list(CKPTS))
def test_interface_axes_are_symbolic(name, exported):
    _, out, _ = exported(name)
    model = onnx.load(str(out / "model.onnx"))

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    assert [(v.name, v.type.tensor_type.elem_type, dims(v)) for v in model.graph.input] == [
        (n, onnx.TensorProto.INT64, ["batch", "sequence"]) for n in ("input_ids", "attention_mask", "token_type_ids")]
    assert [(v.name, v.type.tensor_type.elem_type, dims(v)) for v in model.graph.output] == [
        ("logits", onnx.TensorProto.FLOAT, ["batch", 3])]


@pytest.mark.parametrize("name", list(CKPTS))
def test_metadata(name, exported):
    ckpt, out, _ = exported(name)
    _, family, n = CKPTS[name]
    meta = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert all(k in meta for k in META_KEYS)
    assert meta["prumux.family"] == family
    assert meta["prumux.num_instances"] == str(n)
    assert meta["prumux.num_labels"] == "3"
    config = json.loads((ckpt / "config.json").read_text())
    assert json.loads(meta["prumux.id2label"]) == {str(k): v for k, v in config["id2label"].items()}
    assert meta.get("prumux.seq_len") == (str(SEQ) if n > 1 else None)
    assert meta["prumux.tool_version"]


@pytest.mark.parametrize("name", list(CKPTS))
@pytest.mark.parametrize("artifact", ["model.onnx", "model.ort.onnx"])
def test_onnxruntime_matches_reference(name, artifact, exported):
    ckpt, out, _ = exported(name)
    n = CKPTS[name][2]
    vocab = CKPTS[name][0].get("vocab", BASE["vocab"])
    raw = read_raw(ckpt)
    sess = _session(out / artifact)
    lengths = (SEQ, 16, 7) if n > 1 else (7, 16, 33)
    for b in sorted({1, n - 1, n, 2 * n + 1} - {0}):
        for s in lengths:
            ids, mask, tt = make_inputs(b, s, vocab, seed=b * 100 + s)
            got = sess.run(["logits"], _feeds(ids, mask, tt))[0]
            want = reference.forward(raw, ids, mask, tt, seq_len=SEQ).numpy()
            assert got.shape == (b, 3)
            assert np.abs(got - want).max() <= 1e-4, (b, s)


@pytest.mark.parametrize("name", list(CKPTS))
def test_ignored_inputs_are_ignored_and_used_inputs_used(name, exported):
    _, out, result = exported(name)
    n = CKPTS[name][2]
    sess = _session(out / "model.onnx")
    ids, mask, tt = make_inputs(2 * n + 1, 16, CKPTS[name][0].get("vocab", BASE["vocab"]), seed=5)
    base = sess.run(["logits"], _feeds(ids, mask, tt))[0]
    other = sess.run(["logits"], _feeds(ids, np.ones_like(mask), np.zeros_like(tt)))[0]
    if n > 1:
        assert result.spec.ignored_inputs == ("attention_mask", "token_type_ids")
        np.testing.assert_array_equal(base, other)
    else:
        assert result.spec.ignored_inputs == ()
        assert np.abs(base - other).max() > 1e-3


@pytest.mark.parametrize("name", list(CKPTS))
def test_validation_json_records_every_case(name, exported):
    _, out, _ = exported(name)
    n = CKPTS[name][2]
    doc = json.loads((out / "validation.json").read_text())
    batches = sorted({1, n - 1, n, 2 * n + 1} - {0})
    # N = 1: also the benchmarked length (128, the export default) and the position table, both clipped to 64
    lengths = [7, 16, SEQ] if n > 1 else [7, 16, 33, BASE["max_pos"]]
    expected = [[b, s] for b in batches for s in lengths]
    assert doc["passed"] is True
    assert set(doc["artifacts"]) == {"model.onnx", "model.ort.onnx", "model.optimized.onnx"}
    assert (doc["backend"], doc["precision"], doc["reference"]) == (
        "ort-cpu", "fp32", "prumux_compile.reference.forward (float64)")
    for art in doc["artifacts"].values():
        assert [[c["batch"], c["seq"]] for c in art["cases"]] == expected
        assert all(c["passed"] and c["max_abs_diff"] <= 1e-4 and c["argmax_agreement"] == 1.0 for c in art["cases"])
        assert art["criteria"]["atol"] == 1e-4 and art["criteria"]["rtol"] == 0.0


@pytest.mark.parametrize("name, too_long", [("mux2-index_pos", SEQ + 1), ("bert", BASE["max_pos"] + 1)])
def test_runner_refuses_sequences_beyond_the_limit(name, too_long, exported):
    _, out, result = exported(name)
    backend = registry.get("ort-cpu")
    ids, mask, tt = make_inputs(2, too_long, BASE["vocab"], seed=1)
    with backend.load(result.artifact) as runner:
        with pytest.raises(InputError, match=f"sequence length {too_long} exceeds"):
            runner.run(_feeds(ids, mask, tt))
        ok = runner.run(_feeds(ids[:, :too_long - 1], mask[:, :too_long - 1], tt[:, :too_long - 1]))
    assert ok["logits"].shape == (2, 3)


def test_partial_mux_group_is_deterministic_and_inputs_untouched(exported):
    """F18 in docs/field-faults.md: batch 7 with N = 3 gives 7 rows, twice the same, and the caller's arrays are not written."""
    _, _, result = exported("mux3-index")
    ids, mask, tt = make_inputs(7, 16, 700, seed=9)
    ids[:, 0] = 5  # upstream would overwrite column 0 in place (Q18 in docs/checkpoint-formats.md); the index demux prepends instead
    copies = [a.copy() for a in (ids, mask, tt)]
    with registry.get("ort-cpu").load(result.artifact) as runner:
        first = runner.run(_feeds(ids, mask, tt))["logits"]
        second = runner.run(_feeds(ids, mask, tt))["logits"]
    assert first.shape == (7, 3)
    np.testing.assert_array_equal(first, second)
    for a, c in zip((ids, mask, tt), copies):
        np.testing.assert_array_equal(a, c)


def test_export_twice_gives_identical_graphs_and_outputs(exported, tmp_path):
    ckpt, out, _ = exported("mux2-index_pos")
    again = tmp_path / "again"
    again.mkdir()
    export_into(ckpt, again, seq_len=SEQ, threads=1, prefer="plain")
    for f in ("model.onnx", "model.ort.onnx"):
        assert hashlib.sha256((out / f).read_bytes()).digest() == hashlib.sha256((again / f).read_bytes()).digest()
    ids, mask, tt = make_inputs(5, 20, BASE["vocab"], seed=11)
    a = _session(out / "model.onnx").run(["logits"], _feeds(ids, mask, tt))[0]
    b = _session(again / "model.onnx").run(["logits"], _feeds(ids, mask, tt))[0]
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------- spec (no export)
@pytest.mark.parametrize("n, seq_len, example_batch, example_seq", [
    (1, None, 3, 16), (2, 128, 5, 16), (5, 128, 11, 16), (2, 8, 5, 7), (3, 3, 7, 2), (2, 2, 5, 2),
])
def test_example_shapes_never_specialise(n, seq_len, example_batch, example_seq):
    family = "bert" if n == 1 else "prumux_compressed"
    spec = make_spec(family=family, num_instances=n, num_labels=2, id2label={0: "a", 1: "b"}, seq_len=seq_len,
                     max_seq_len=seq_len or 512, vocab_size=30522, head_size=64, layer_heads=[(0, 12)])
    assert (spec.example_batch, spec.example_seq) == (example_batch, example_seq)
    assert spec.dynamic_axes == {"input_ids": {0: "batch", 1: "sequence"},
                                 "attention_mask": {0: "batch", 1: "sequence"},
                                 "token_type_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch"}}


def test_spec_metadata_round_trip_and_unknown_family():
    spec = make_spec(family="muxplm", num_instances=5, num_labels=3, id2label={0: "x", 1: "y", 2: "z"},
                     seq_len=128, max_seq_len=128, vocab_size=30522, head_size=64, layer_heads=[(0, 12), (2, 3)])
    meta = spec.metadata("9.9")
    assert meta["prumux.seq_len"] == "128" and meta["prumux.layer_heads"] == "[[0, 12], [2, 3]]"
    assert ExportSpec.from_metadata(meta) == spec
    with pytest.raises(InputError, match="supported: prumux_compressed, prumux_masked, muxplm"):
        make_spec(family="distilbert", num_instances=1, num_labels=2, id2label={}, seq_len=None, max_seq_len=512,
                  vocab_size=10, head_size=64, layer_heads=[])
    with pytest.raises(InputError, match="not exported by prumux-compile"):
        ExportSpec.from_metadata({})


@pytest.mark.parametrize("n, seq_len, max_seq, bench, expected", [
    # N = 1: {7, 16, 33} + the benchmarked length (default 128) + the position table (capped at 512)
    (1, None, 512, None, [(b, s) for b in (1, 3) for s in (7, 16, 33, 128, 512)]),
    (1, None, 512, 64, [(b, s) for b in (1, 3) for s in (7, 16, 33, 64, 512)]),
    (1, None, 4096, 300, [(b, s) for b in (1, 3) for s in (7, 16, 33, 300, 512)]),
    (1, None, 20, None, [(1, 7), (1, 16), (1, 20), (3, 7), (3, 16), (3, 20)]),
    (1, None, 64, 16, [(b, s) for b in (1, 3) for s in (7, 16, 33, 64)]),
    # multiplexed: the compiled length is the benchmarked and the longest accepted one
    (2, 32, 32, None, [(b, s) for b in (1, 2, 5) for s in (7, 16, 32)]),
    (2, 32, 32, 32, [(b, s) for b in (1, 2, 5) for s in (7, 16, 32)]),
    (3, 128, 128, None, [(b, s) for b in (1, 2, 3, 7) for s in (7, 16, 128)]),
])
def test_validation_cases(n, seq_len, max_seq, bench, expected):
    family = "bert" if n == 1 else "prumux_compressed"
    spec = make_spec(family=family, num_instances=n, num_labels=2, id2label={}, seq_len=seq_len,
                     max_seq_len=max_seq, vocab_size=200, head_size=8, layer_heads=[])
    assert validation_cases(spec, bench) == expected


def test_a_full_disk_during_the_export_is_the_users_location_not_an_engine_failure(tmp_path, monkeypatch):
    """docs/field-faults.md F27: an exporter that cannot write (ENOSPC in TMPDIR) is an input error (exit 2) naming
    the path and the OS reason; any other exporter failure stays an engine error."""
    import errno

    import torch

    from prumux_compile.checkpoint import load
    from prumux_compile.errors import EngineBuildError
    from prumux_compile.export.onnx_export import export_onnx
    from prumux_compile.kernels import build_module
    from prumux_compile.passes import compile_ir

    write_checkpoint(tmp_path / "ckpt", SynthSpec(**{**BASE, "family": "bert"}))
    ir, _ = compile_ir(load(tmp_path / "ckpt", seq_len=SEQ))
    spec = make_spec(family="bert", num_instances=1, num_labels=3, id2label={}, seq_len=SEQ, max_seq_len=64,
                     vocab_size=128, head_size=8, layer_heads=[])
    for raised, error, text in ((OSError(errno.ENOSPC, "No space left on device"), InputError,
                                 "No space left on device [ENOSPC]"),
                                (RuntimeError("unsupported op"), EngineBuildError, "RuntimeError: unsupported op")):
        def _fail(*a, raised=raised, **k):
            raise raised
        monkeypatch.setattr(torch.onnx, "export", _fail)
        with pytest.raises(error, match=re.escape(text)):
            export_onnx(build_module(ir), spec, tmp_path / "model.onnx")
