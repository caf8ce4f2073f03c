"""The served model checks what the package's runners check, and a repository entry never replaces its source.

* ONNX ``Gather`` wraps negative indices, so a served graph answers ``input_ids = -1`` with the logits of the
  vocabulary's last token. The Python-backend ``model.py`` refuses ids outside the tables named in the ONNX
  metadata (field fault F20 in docs/field-faults.md), as :func:`prumux_compile.engines.base.prepare_feeds` does; multiplexed families,
  which ignore ``token_type_ids`` upstream, accept any segment id.
* ``write_repository(..., overwrite=True)`` into the folder that holds the model file is refused (it deleted the
  candidate folder it was written from).
"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import json_format

from prumux_compile.errors import InputError
from prumux_compile.triton import write_repository
from prumux_compile.triton.config import load_config

VOCAB, TYPES = 128, 2


def _pb_utils():
    mod = types.ModuleType("triton_python_backend_utils")
    mod.Tensor = lambda name, array: types.SimpleNamespace(name=name, array=array)
    mod.InferenceResponse = lambda output_tensors, error=None: types.SimpleNamespace(tensors=output_tensors,
                                                                                     error=error)
    mod.TritonError = lambda msg: msg
    mod.get_input_tensor_by_name = lambda req, name: (types.SimpleNamespace(as_numpy=lambda: req[name])
                                                      if name in req else None)
    mod.triton_string_to_numpy = lambda s: {"TYPE_FP32": np.float32}[s]
    return mod


@pytest.fixture(scope="module", params=["bert", "prumux_compressed"])
def served(request, tmp_path_factory, one_torch_thread):
    """(model.py instance, ONNX Runtime session of the same file, family) for a compiled tiny checkpoint."""
    from prumux_compile.checkpoint import load
    from prumux_compile.export.onnx_export import export_onnx
    from prumux_compile.export.spec import spec_for_ir
    from prumux_compile.kernels import build_module
    from prumux_compile.passes import compile_ir
    from prumux_compile.demo.synthetic import SynthSpec, write_checkpoint

    root = tmp_path_factory.mktemp(request.param)
    n = 2 if request.param == "prumux_compressed" else 1
    write_checkpoint(root / "ckpt", SynthSpec(family=request.param, num_instances=n, vocab=VOCAB, max_pos=32,
                                              num_layers=1, hidden=16, heads=2, ffn=16, type_vocab_size=TYPES))
    ir, _ = compile_ir(load(root / "ckpt", seq_len=8))
    export_onnx(build_module(ir), spec_for_ir(ir), root / "model.onnx")
    model_dir = write_repository(root / "repo", name="m", model_path=root / "model.onnx", backend="python")
    mp = pytest.MonkeyPatch()
    mp.setitem(sys.modules, "triton_python_backend_utils", _pb_utils())
    spec = importlib.util.spec_from_file_location(f"served_{request.param}", model_dir / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    cfg = json_format.MessageToJson(load_config(model_dir / "config.pbtxt"), preserving_proto_field_name=True)
    model.initialize({"model_config": cfg, "model_version": "1"})
    yield model, ort.InferenceSession(str(root / "model.onnx"), providers=["CPUExecutionProvider"]), request.param
    mp.undo()


def _feeds(ids=None, types_=None):
    base = np.array([[101, 5, 6, 7, 102, 0], [101, 9, 10, 102, 0, 0]], dtype=np.int64)
    ids = base if ids is None else ids
    return {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64),
            "token_type_ids": np.zeros_like(ids) if types_ is None else types_}


@pytest.mark.parametrize("edit, name, words", [
    (lambda f: f["input_ids"].__setitem__((0, 2), -1), "input_ids", ["[0, 128)", "min -1"]),
    (lambda f: f["input_ids"].__setitem__((1, 1), VOCAB), "input_ids", ["[0, 128)", "max 128"]),
    (lambda f: f["token_type_ids"].__setitem__((0, 3), -1), "token_type_ids", ["[0, 2)", "token-type table"]),
    (lambda f: f["token_type_ids"].__setitem__((0, 3), 2), "token_type_ids", ["[0, 2)", "max 2"]),
])
def test_served_model_refuses_ids_outside_the_tables(served, edit, name, words):
    model, session, family = served
    good, bad = _feeds(), _feeds()
    edit(bad)
    responses = model.execute([good, bad])
    want = session.run(["logits"], good)[0]
    np.testing.assert_array_equal(responses[0].tensors[0].array, want)  # the good request is answered as before
    if name == "token_type_ids" and family == "prumux_compressed":
        # multiplexed families ignore segment ids (upstream semantics): answered, equal to segment ids 0
        assert responses[1].error is None
        np.testing.assert_array_equal(responses[1].tensors[0].array, want)
        return
    assert responses[1].tensors == [] and responses[1].error.startswith(f"{name}: ids must lie in")
    for w in words:
        assert w in responses[1].error


def test_overwriting_the_entry_that_holds_the_source_is_refused(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest_triton import make_toy_onnx

    source_dir = tmp_path / "candidates" / "c1"  # e.g. a build's candidate folder written as REPO/NAME
    source_dir.mkdir(parents=True)
    model = make_toy_onnx(source_dir / "model.onnx", metadata={"prumux.num_instances": "2"})
    (source_dir / "candidate.json").write_text("{}")
    before = sorted(p.name for p in source_dir.iterdir())
    with pytest.raises(InputError, match="lies inside the output"):
        write_repository(tmp_path / "candidates", name="c1", model_path=model, overwrite=True)
    assert sorted(p.name for p in source_dir.iterdir()) == before
    entry = write_repository(tmp_path / "repo", name="c1", model_path=model)  # elsewhere: fine, and again
    again = write_repository(tmp_path / "repo", name="c1", model_path=model, overwrite=True)
    assert again == entry
    assert (again / "1" / "model.onnx").read_bytes() == model.read_bytes()
    with pytest.raises(InputError, match="lies inside the output"):  # its own served copy as the source
        write_repository(tmp_path / "repo", name="c1", model_path=again / "1" / "model.onnx", overwrite=True)
    assert (again / "1" / "model.onnx").read_bytes() == model.read_bytes()


def test_max_batch_size_beyond_the_config_field_is_a_usage_error(tmp_path):
    from click.testing import CliRunner

    from prumux_compile.cli.main import cli

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest_triton import make_toy_onnx

    model = make_toy_onnx(tmp_path / "m.onnx", metadata={"prumux.num_instances": "2"})
    res = CliRunner().invoke(cli, ["triton", str(model), "-o", str(tmp_path / "repo"), "--name", "m",
                                   "--max-batch-size", str(10**11)])
    assert res.exit_code == 2 and "--max-batch-size" in res.output and "internal error" not in res.output
    assert not (tmp_path / "repo").exists()
