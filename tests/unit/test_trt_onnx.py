"""``model.trt.onnx`` and its fp16 form: standard ops only (F17 in docs/field-faults.md), fp32 islands (F8), run with ONNX Runtime CPU
and judged by the one comparator with TensorRT's criteria."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from prumux_compile.checkpoint import load, read_raw
from prumux_compile.engines.onnxruntime import OrtRunner
from prumux_compile.engines.trt_onnx import FP32_OPS, check_standard_ops, write_trt_onnx, write_trt_onnx_fp16
from prumux_compile.errors import EngineBuildError, InputError, ValidationError
from prumux_compile.export.onnx_export import export_onnx
from prumux_compile.export.spec import spec_for_ir
from prumux_compile.kernels import build_module
from prumux_compile.passes import compile_ir
from prumux_compile.demo.synthetic import SynthSpec, write_checkpoint
from prumux_compile.validation import criteria_for, require_passed, validate, validation_cases

SEQ, V = 16, 1024
MODELS = {
    "mux-n3": dict(family="prumux_compressed", num_instances=3, heads_kept=[[0, 2], [1], [3]],
                   ffn_kept=[list(range(20)), [], list(range(9))]),
    "cofi": dict(family="cofi_compressed", heads_kept=[[1], [], [0, 1, 2, 3]], ffn_kept=[[], list(range(30)), [2]]),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (raw checkpoint, model.trt.onnx path, fp16 report, fp32 report); one export per model."""
    out = {}
    for name, fields in MODELS.items():
        root = tmp_path_factory.mktemp(name)
        write_checkpoint(root / "ckpt", SynthSpec(vocab=V, max_pos=64, num_layers=3, hidden=32, heads=4, ffn=48,
                                                  **fields))
        ir, _ = compile_ir(load(root / "ckpt", seq_len=SEQ))
        export_onnx(build_module(ir), spec_for_ir(ir), root / "model.onnx")
        rep32 = write_trt_onnx(root / "model.onnx")
        rep16 = write_trt_onnx_fp16(rep32["path"])
        out[name] = (read_raw(root / "ckpt"), root, rep16, rep32, spec_for_ir(ir))
    return out


def _validate(path, raw, spec, precision):
    with OrtRunner(path, spec, threads=1) as runner:
        res = validate({"g": runner}, raw, spec, criteria_for("tensorrt", precision))
    require_passed(res)
    return res["g"]


@pytest.mark.parametrize("name", list(MODELS))
def test_fp32_graph_matches_reference(name, exported):
    raw, root, _, rep32, spec = exported[name]
    assert rep32["path"].endswith("model.trt.onnx") and "LayerNormalization" in rep32["ops"]
    res = _validate(rep32["path"], raw, spec, "fp32")
    assert res.max_abs_diff <= 1e-4 and res.argmax_agreement == 1.0
    assert [(c.batch, c.seq) for c in res.cases] == validation_cases(spec)


@pytest.mark.parametrize("name", list(MODELS))
def test_fp16_graph_matches_reference(name, exported):
    raw, root, rep16, _, spec = exported[name]
    res = _validate(rep16["path"], raw, spec, "fp16")
    assert res.criteria.min_agreement == 0.995 and res.argmax_agreement >= 0.995
    assert 0 < res.max_abs_diff <= 5e-2  # really fp16 (not bit-equal to fp32), within the fp16 bound
    assert rep16["fp16_initializers"] > 0 and rep16["casts"] > 0


@pytest.mark.parametrize("name", list(MODELS))
def test_fp16_keeps_norm_softmax_reductions_in_fp32(name, exported):
    _, _, rep16, _, _ = exported[name]
    model = onnx.shape_inference.infer_shapes(onnx.load(rep16["path"]))
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    checked = 0
    for node in model.graph.node:
        if node.op_type in FP32_OPS and types.get(node.input[0]) != TensorProto.INT64:  # (int Div: index math)
            assert types.get(node.input[0]) == TensorProto.FLOAT, (node.op_type, node.name)
            checked += 1
        if node.op_type == "MatMul":
            assert types.get(node.input[1]) == TensorProto.FLOAT16  # the GEMMs really run in fp16
    assert checked >= 6
    # interface unchanged: int64 inputs, float32 logits
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [TensorProto.INT64] * 3
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT


def _tiny_model(domain: str, op: str) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    node = helper.make_node(op, ["x"], ["y"], domain=domain)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=opsets)


def test_refuses_com_microsoft_ops(tmp_path):
    onnx.save(_tiny_model("com.microsoft", "FastGelu"), tmp_path / "model.ort.onnx")
    with pytest.raises(EngineBuildError, match=r"com\.microsoft::FastGelu x1.*F17"):  # docs/field-faults.md
        write_trt_onnx(tmp_path / "model.ort.onnx", tmp_path / "model.trt.onnx")
    assert not (tmp_path / "model.trt.onnx").exists()
    assert check_standard_ops(_tiny_model("", "Relu")) == {"Relu": 1}


def test_refuses_overwriting_input(tmp_path):
    onnx.save(_tiny_model("", "Relu"), tmp_path / "model.trt.onnx")
    with pytest.raises(InputError, match="overwrite"):
        write_trt_onnx(tmp_path / "model.trt.onnx", tmp_path / "model.trt.onnx")


def test_nan_logits_fail_validation(exported, tmp_path):
    raw, _, _, rep32, spec = exported["mux-n3"]
    model = onnx.load(rep32["path"])
    # poison the classifier bias (the only [C] initializer) with +inf: every logit becomes inf
    c = 3
    target = next(t for t in model.graph.initializer if list(t.dims) == [c])
    arr = onnx.numpy_helper.to_array(target).copy()
    arr[:] = np.inf
    target.CopyFrom(onnx.numpy_helper.from_array(arr, target.name))
    onnx.save(model, tmp_path / "poisoned.onnx")
    with pytest.raises(ValidationError, match="NaN/Inf"):
        _validate(tmp_path / "poisoned.onnx", raw, spec, "fp32")
