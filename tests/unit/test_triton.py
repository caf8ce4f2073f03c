"""Unit tests of the Triton model-repository writer, validator, Python-backend model and CLI."""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from google.protobuf import text_format
from onnx import TensorProto
from tritonclient.grpc import model_config_pb2 as pb2

from prumux_compile.cli.main import cli
from prumux_compile.errors import InputError, TritonConfigError
from prumux_compile.triton import (
    TensorSpec,
    check_or_raise,
    check_plan_or_raise,
    read_onnx_interface,
    validate_config,
    validate_plan_config,
    write_repository,
)
from prumux_compile.triton.config import default_max_batch_size, default_preferred_batch_sizes

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest_triton import make_toy_onnx, toy_feeds, toy_reference  # noqa: E402

N = 2
META = {"prumux.num_instances": str(N)}


@pytest.fixture
def toy(tmp_path) -> Path:
    """Dynamic batch and sequence, N=2 in metadata, 3 labels."""
    return make_toy_onnx(tmp_path / "toy.onnx", metadata=META)


@pytest.fixture
def toy_fixed(tmp_path) -> Path:
    """Fixed sequence 16 (compiled length in metadata)."""
    return make_toy_onnx(tmp_path / "toy16.onnx", seq_len=16, metadata={**META, "prumux.seq_len": "16"})


def _read(model_dir: Path) -> pb2.ModelConfig:
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), pb2.ModelConfig())


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# ---------------------------------------------------------------------------------------------- writer


def test_written_config_parses_and_validates(tmp_path, toy):
    model_dir = write_repository(tmp_path / "repo", name="toy", model_path=toy)
    cfg = _read(model_dir)
    assert cfg.name == "toy" and cfg.platform == "onnxruntime_onnx" and cfg.backend == "onnxruntime"
    assert cfg.max_batch_size == 16  # 8 groups of N=2
    assert [(t.name, pb2.DataType.Name(t.data_type), list(t.dims)) for t in cfg.input] == [
        ("input_ids", "TYPE_INT64", [-1]),
        ("attention_mask", "TYPE_INT64", [-1]),
        ("token_type_ids", "TYPE_INT64", [-1]),
    ]
    assert [(t.name, pb2.DataType.Name(t.data_type), list(t.dims)) for t in cfg.output] == [("logits", "TYPE_FP32", [3])]
    assert list(cfg.dynamic_batching.preferred_batch_size) == [2, 4, 8, 16]
    assert cfg.instance_group[0].count == 1 and cfg.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_CPU
    assert cfg.parameters["prumux.num_instances"].string_value == "2"
    assert (model_dir / "1" / "model.onnx").read_bytes() == toy.read_bytes()
    assert validate_config(model_dir / "config.pbtxt", toy) == []
    check_or_raise(model_dir / "config.pbtxt", toy, num_instances=N)
    assert _listing(tmp_path / "repo") == ["toy", "toy/1", "toy/1/model.onnx", "toy/config.pbtxt"]


def test_text_is_protobuf_text_format(tmp_path, toy):
    model_dir = write_repository(tmp_path / "repo", name="toy", model_path=toy)
    text = (model_dir / "config.pbtxt").read_text()
    assert text_format.MessageToString(_read(model_dir)) == text


def test_fixed_sequence_dims(tmp_path, toy_fixed):
    model_dir = write_repository(tmp_path / "repo", name="fixed", model_path=toy_fixed)
    cfg = _read(model_dir)
    assert [list(t.dims) for t in cfg.input] == [[16], [16], [16]]
    assert validate_config(model_dir / "config.pbtxt", toy_fixed) == []


@pytest.mark.parametrize(
    "meta, kwargs, want_max, want_pref",
    [
        ({"prumux.num_instances": "2"}, {}, 16, [2, 4, 8, 16]),
        ({"prumux.num_instances": "4", "prumux.max_batch": "10"}, {}, 8, [4, 8]),  # rounded down to 2 groups
        ({"prumux.num_instances": "3"}, {"max_batch_size": 18}, 18, [3, 6, 12, 18]),
        ({}, {"num_instances": 2}, 16, [2, 4, 8, 16]),  # explicit N where the model has no metadata
        ({}, {"num_instances": 5, "preferred_batch_sizes": [10, 20]}, 40, [10, 20]),
    ],
)
def test_batch_defaults_and_overrides(tmp_path, meta, kwargs, want_max, want_pref):
    model = make_toy_onnx(tmp_path / "m.onnx", metadata=meta)
    cfg = _read(write_repository(tmp_path / "repo", name="m", model_path=model, **kwargs))
    assert cfg.max_batch_size == want_max
    assert list(cfg.dynamic_batching.preferred_batch_size) == want_pref


@pytest.mark.parametrize("n, model_max, want", [(2, None, 16), (4, 10, 8), (3, 3, 3), (1, 7, 7)])
def test_default_max_batch_size(n, model_max, want):
    assert default_max_batch_size(n, model_max) == want


def test_default_max_batch_below_n_is_an_error():
    with pytest.raises(TritonConfigError, match="smaller than num_instances"):
        default_max_batch_size(4, 3)


@pytest.mark.parametrize("n, mbs, want", [(2, 16, [2, 4, 8, 16]), (3, 18, [3, 6, 12, 18]), (4, 4, [4]), (5, 20, [5, 10, 20])])
def test_default_preferred_batch_sizes(n, mbs, want):
    assert default_preferred_batch_sizes(n, mbs) == want


def test_python_backend_variant(tmp_path, toy):
    model_dir = write_repository(tmp_path / "repo", name="toy_py", model_path=toy, backend="python")
    cfg = _read(model_dir)
    assert cfg.backend == "python" and cfg.platform == ""
    assert cfg.parameters["prumux.isolate_requests"].string_value == "true"
    assert (model_dir / "1" / "model.py").is_file() and (model_dir / "1" / "model.onnx").is_file()
    assert "class TritonPythonModel" in (model_dir / "1" / "model.py").read_text()
    assert validate_config(model_dir / "config.pbtxt", toy) == []


@pytest.mark.parametrize("backend, kind, level, want_level, want_params", [
    # native ONNX Runtime backend: Triton's own fields (graph level 2 = every optimisation off)
    ("onnxruntime", "KIND_CPU", "disable_all", 2, {"intra_op_thread_count": "2", "inter_op_thread_count": "1"}),
    ("onnxruntime", "KIND_GPU", "all", 0, {"intra_op_thread_count": "2", "inter_op_thread_count": "1"}),
    # Python-backend variant: the same session settings as prumux.* parameters read by model.py
    ("python", "KIND_CPU", "disable_all", 0, {"prumux.graph_optimization_level": "disable_all",
                                              "prumux.intra_op_num_threads": "2",
                                              "prumux.inter_op_num_threads": "1"}),
])
def test_measured_session_settings_reach_the_config(tmp_path, toy, backend, kind, level, want_level, want_params):
    acc = ({"name": "cuda", "parameters": {"use_tf32": "0"}},) if kind == "KIND_GPU" else ()
    model_dir = write_repository(tmp_path / "repo", name="m", model_path=toy, backend=backend, instance_kind=kind,
                                 graph_optimization_level=level, intra_op_num_threads=2, inter_op_num_threads=1,
                                 gpu_accelerators=acc)
    cfg = _read(model_dir)
    assert cfg.optimization.graph.level == want_level
    assert {k: v.string_value for k, v in cfg.parameters.items() if k != "prumux.num_instances"
            and k != "prumux.isolate_requests"} == want_params
    got_acc = [(a.name, dict(a.parameters)) for a in cfg.optimization.execution_accelerators.gpu_execution_accelerator]
    assert got_acc == [(a["name"], a["parameters"]) for a in acc]
    assert cfg.instance_group[0].kind == pb2.ModelInstanceGroup.Kind.Value(kind)
    assert validate_config(model_dir / "config.pbtxt", toy) == []


def test_python_variant_refuses_a_gpu_artifact_and_unknown_levels(tmp_path, toy):
    with pytest.raises(TritonConfigError, match="Python-backend variant runs ONNX Runtime on the CPU"):
        write_repository(tmp_path / "repo", name="m", model_path=toy, backend="python", instance_kind="KIND_GPU")
    with pytest.raises(TritonConfigError, match="unknown graph optimization level 'fast'"):
        write_repository(tmp_path / "repo", name="m", model_path=toy, graph_optimization_level="fast")
    assert not (tmp_path / "repo").exists()


def test_external_data_is_copied(tmp_path):
    src = make_toy_onnx(tmp_path / "src.onnx", metadata=META)
    ext_dir = tmp_path / "ext"
    ext_dir.mkdir()
    model = onnx.load(str(src))
    onnx.save(model, str(ext_dir / "m.onnx"), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    model_dir = write_repository(tmp_path / "repo", name="ext", model_path=ext_dir / "m.onnx")
    assert (model_dir / "1" / "m.onnx.data").read_bytes() == (ext_dir / "m.onnx.data").read_bytes()


def test_existing_model_dir_is_refused_then_overwritten(tmp_path, toy):
    repo = tmp_path / "repo"
    write_repository(repo, name="toy", model_path=toy)
    with pytest.raises(TritonConfigError, match="exists"):
        write_repository(repo, name="toy", model_path=toy, max_batch_size=4)
    assert _read(repo / "toy").max_batch_size == 16
    write_repository(repo, name="toy", model_path=toy, max_batch_size=4, overwrite=True)
    assert _read(repo / "toy").max_batch_size == 4
    assert _listing(repo) == ["toy", "toy/1", "toy/1/model.onnx", "toy/config.pbtxt"]  # no temp dirs left


def test_failed_overwrite_keeps_previous_entry(tmp_path, toy):
    repo = tmp_path / "repo"
    write_repository(repo, name="toy", model_path=toy)
    with pytest.raises(TritonConfigError):
        write_repository(repo, name="toy", model_path=toy, max_batch_size=5, overwrite=True)
    assert _read(repo / "toy").max_batch_size == 16
    assert _listing(repo) == ["toy", "toy/1", "toy/1/model.onnx", "toy/config.pbtxt"]


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"name": "../evil"}, TritonConfigError, "invalid Triton model name"),
        ({"name": ".hidden"}, TritonConfigError, "invalid Triton model name"),
        ({"platform": "pytorch_libtorch"}, TritonConfigError, "unknown platform"),
        ({"backend": "tensorrt"}, TritonConfigError, "served by backend 'onnxruntime'"),
        ({"instance_kind": "KIND_TPU"}, TritonConfigError, "unknown instance kind"),
        ({"instance_count": 0}, TritonConfigError, "instance_count"),
        ({"num_instances": 0}, TritonConfigError, "num_instances must be >= 1"),
    ],
)
def test_bad_writer_options(tmp_path, toy, kwargs, exc, match):
    args = {"name": "toy", "model_path": toy, **kwargs}
    with pytest.raises(exc, match=match):
        write_repository(tmp_path / "repo", **args)
    assert not (tmp_path / "repo").exists()


def test_unknown_n_and_bad_metadata(tmp_path):
    no_n = make_toy_onnx(tmp_path / "no_n.onnx")
    with pytest.raises(InputError, match="num_instances"):
        write_repository(tmp_path / "repo", name="m", model_path=no_n)
    bad = make_toy_onnx(tmp_path / "bad.onnx", metadata={"prumux.num_instances": "two"})
    with pytest.raises(InputError, match="not an integer"):
        read_onnx_interface(bad)
    assert not (tmp_path / "repo").exists()


def test_interface_reads_metadata_and_dims(tmp_path):
    path = make_toy_onnx(
        tmp_path / "m.onnx", seq_len=32, num_labels=5,
        metadata={"prumux.num_instances": "10", "prumux.seq_len": "32", "prumux.max_batch": "40"},
    )
    iface = read_onnx_interface(path)
    assert (iface.num_instances, iface.seq_len, iface.max_batch) == (10, 32, 40)
    assert [t.shape for t in iface.inputs] == [(None, 32)] * 3
    assert iface.outputs == (TensorSpec("logits", "float32", (None, 5)),)


# ---------------------------------------------------------------------------------------------- validator

def _set_dims(tensor, dims):
    del tensor.dims[:]
    tensor.dims.extend(dims)


def _mut_batch_in_dims(cfg):
    _set_dims(cfg.input[0], [-1, -1])


def _mut_output_batch_in_dims(cfg):
    _set_dims(cfg.output[0], [-1, 3])


def _mut_dtype(cfg):
    cfg.input[1].data_type = pb2.TYPE_INT32


def _mut_out_dtype(cfg):
    cfg.output[0].data_type = pb2.TYPE_FP16


def _mut_max_batch(cfg):
    cfg.max_batch_size = 15


def _mut_max_batch_zero(cfg):
    cfg.max_batch_size = 0


def _mut_fixed_where_dynamic(cfg):
    _set_dims(cfg.input[2], [128])


def _mut_labels(cfg):
    _set_dims(cfg.output[0], [4])


def _mut_pref_not_multiple(cfg):
    cfg.dynamic_batching.preferred_batch_size.append(3)


def _mut_pref_over_max(cfg):
    cfg.dynamic_batching.preferred_batch_size.append(32)


def _mut_name(cfg):
    cfg.input[0].name = "ids"


def _mut_extra_input(cfg):
    extra = cfg.input.add()
    extra.CopyFrom(cfg.input[0])
    extra.name = "position_ids"


def _mut_missing_output(cfg):
    del cfg.output[:]


def _mut_platform(cfg):
    cfg.platform = "tensorrt_plan"
    cfg.backend = ""


def _mut_param_n(cfg):
    cfg.parameters["prumux.num_instances"].string_value = "4"


def _mut_instances(cfg):
    cfg.instance_group[0].count = 0


CORRUPTIONS = [
    ("batch dim in input dims", _mut_batch_in_dims, "include the batch axis"),
    ("batch dim in output dims", _mut_output_batch_in_dims, "include the batch axis"),
    ("input dtype", _mut_dtype, "data_type TYPE_INT32, model has TYPE_INT64"),
    ("output dtype", _mut_out_dtype, "data_type TYPE_FP16, model has TYPE_FP32"),
    ("max batch not multiple of N", _mut_max_batch, "max_batch_size=15 is not a multiple of num_instances=2"),
    ("max batch zero", _mut_max_batch_zero, "must be > 0"),
    ("fixed dim where graph dynamic", _mut_fixed_where_dynamic, "axis 1 is dynamic in the model but fixed to 128"),
    ("label count", _mut_labels, "axis 1 is fixed to 3 in the model but dims say 4"),
    ("preferred not multiple of N", _mut_pref_not_multiple, "preferred_batch_size 3 is not a multiple"),
    ("preferred over max", _mut_pref_over_max, "preferred_batch_size 32 exceeds max_batch_size=16"),
    ("input name", _mut_name, "config input 'ids' is not a model input"),
    ("extra input", _mut_extra_input, "config input 'position_ids' is not a model input"),
    ("missing output", _mut_missing_output, "output 'logits' of the model is missing"),
    ("wrong platform", _mut_platform, "needs platform 'onnxruntime_onnx'"),
    ("N parameter disagrees", _mut_param_n, "disagrees with num_instances=2"),
    ("instance count", _mut_instances, "count=0 must be >= 1"),
]


@pytest.mark.parametrize("label, mutate, expected", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_corrupted_config_is_rejected(tmp_path, toy, label, mutate, expected):
    model_dir = write_repository(tmp_path / "repo", name="toy", model_path=toy)
    cfg = _read(model_dir)
    mutate(cfg)
    problems = validate_config(cfg, toy, num_instances=N)
    assert any(expected in p for p in problems), problems
    # the same corruption in a file on disk: check_or_raise exits 6
    path = tmp_path / "bad.pbtxt"
    path.write_text(text_format.MessageToString(cfg))
    with pytest.raises(TritonConfigError) as info:
        check_or_raise(path, toy, num_instances=N)
    assert info.value.exit_code == 6 and expected in str(info.value)


@pytest.mark.parametrize("platform, backend", [("onnxruntime_onnx", ""), ("", "onnxruntime"), ("onnxruntime_onnx", "onnxruntime")])
def test_equivalent_onnxruntime_spellings_are_valid(tmp_path, toy, platform, backend):
    cfg = _read(write_repository(tmp_path / "repo", name="toy", model_path=toy))
    cfg.platform, cfg.backend = platform, backend
    assert validate_config(cfg, toy) == []


def test_fixed_graph_dim_needs_fixed_config_dim(tmp_path, toy_fixed):
    cfg = _read(write_repository(tmp_path / "repo", name="f", model_path=toy_fixed))
    _set_dims(cfg.input[0], [-1])
    assert validate_config(cfg, toy_fixed) == ["input 'input_ids': axis 1 is fixed to 16 in the model but dims say -1"]


def test_unparsable_config_is_one_problem(tmp_path, toy):
    path = tmp_path / "config.pbtxt"
    path.write_text('name: "x"\nmax_batch_size: "eight"\n')
    problems = validate_config(path, toy)
    assert len(problems) == 1 and "not a valid Triton ModelConfig" in problems[0]


@pytest.mark.parametrize(
    "model_kwargs, expected",
    [
        ({"batch": 4}, "batch axis is fixed to 4"),  # F13 in docs/field-faults.md: graph batch axis not dynamic
        ({"input_dtype": TensorProto.INT32}, "needs int64 (TYPE_INT64)"),
        ({"output_name": "scores"}, "model has no 'logits' output"),
        ({"input_names": ("input_ids", "attention_mask", "segment_ids")}, "'segment_ids' is not one of"),
        ({"seq_len": 8, "metadata": {**META, "prumux.seq_len": "16"}}, "fixed sequence 8 but metadata prumux.seq_len=16"),
    ],
)
def test_models_breaking_the_interface_are_refused(tmp_path, model_kwargs, expected):
    kwargs = {"metadata": META, **model_kwargs}
    model = make_toy_onnx(tmp_path / "m.onnx", **kwargs)
    with pytest.raises(TritonConfigError, match="invalid Triton config") as info:
        write_repository(tmp_path / "repo", name="m", model_path=model)
    assert expected in str(info.value)
    assert not (tmp_path / "repo").exists()


# ---------------------------------------------------------------------------------------------- plans

PLAN_IN = [TensorSpec.of(n, "int64", [-1, -1]) for n in ("input_ids", "attention_mask", "token_type_ids")]
PLAN_OUT = [TensorSpec.of("logits", "float32", [-1, 3])]


def _profile(lo, opt, hi, seq=(16, 128, 128)):
    return {t.name: ((lo, seq[0]), (opt, seq[1]), (hi, seq[2])) for t in PLAN_IN}


def _write_plan(tmp_path, profiles, **kw):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not-a-real-engine")
    return write_repository(
        tmp_path / "repo", name="trt", model_path=plan, platform="tensorrt_plan", num_instances=N,
        instance_kind="KIND_GPU", plan_inputs=PLAN_IN, plan_outputs=PLAN_OUT, plan_profiles=profiles, **kw,
    )


def test_plan_repository(tmp_path):
    model_dir = _write_plan(tmp_path, [_profile(1, 16, 32), _profile(1, 4, 32, seq=(1, 16, 64))])
    cfg = _read(model_dir)
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 32
    assert list(cfg.dynamic_batching.preferred_batch_size) == [2, 4, 8, 16, 32]
    assert (model_dir / "1" / "model.plan").read_bytes() == b"not-a-real-engine"
    problems = validate_plan_config(
        model_dir / "config.pbtxt", inputs=PLAN_IN, outputs=PLAN_OUT, profiles=[_profile(1, 16, 32)], num_instances=N
    )
    assert problems == []


PLAN_FAULTS = [
    ("F14 split profiles",  # docs/field-faults.md
     [_profile(1, 4, 8), _profile(9, 16, 32)], {}, "min batch 9; every profile must start at batch 1"),
    ("profiles disagree on max", [_profile(1, 4, 8), _profile(1, 16, 32)], {"max_batch_size": 32}, "disagree on the max batch [8, 32]"),
    ("max batch differs from profile", [_profile(1, 16, 32)], {"max_batch_size": 16}, "max_batch_size=16 differs from the plan profiles' max batch 32"),
    ("profile max not multiple of N", [_profile(1, 4, 7)], {"max_batch_size": 7}, "is not a multiple of num_instances=2"),
    ("min > opt", [_profile(1, 16, 32, seq=(64, 16, 128))], {}, "need 1 <= min <= opt <= max"),
    ("no profile", [], {"max_batch_size": 8}, "no optimization profile"),
]


@pytest.mark.parametrize("label, profiles, kw, expected", PLAN_FAULTS, ids=[f[0] for f in PLAN_FAULTS])
def test_plan_faults(tmp_path, label, profiles, kw, expected):
    with pytest.raises(TritonConfigError) as info:
        _write_plan(tmp_path, profiles, **kw)
    assert info.value.exit_code == 6 and expected in str(info.value)
    assert _listing(tmp_path / "repo") == []


def test_plan_fixed_binding_dim_must_match_profile(tmp_path):
    inputs = [TensorSpec.of(t.name, "int64", [-1, 128]) for t in PLAN_IN]
    cfg = pb2.ModelConfig(name="trt", platform="tensorrt_plan", max_batch_size=8)
    for t in inputs:
        cfg.input.add(name=t.name, data_type=pb2.TYPE_INT64, dims=[128])
    cfg.output.add(name="logits", data_type=pb2.TYPE_FP32, dims=[3])
    profile = {t.name: ((1, 64), (4, 128), (8, 128)) for t in inputs}
    problems = validate_plan_config(cfg, inputs=inputs, outputs=PLAN_OUT, profiles=[profile], num_instances=N)
    assert "profile 0 input 'input_ids' axis 1 is fixed to 128 but the profile says 64/128/128" in problems
    with pytest.raises(TritonConfigError):
        check_plan_or_raise(cfg, inputs=inputs, outputs=PLAN_OUT, profiles=[profile], num_instances=N)


# ---------------------------------------------------------------------------------------------- CLI

def _cli(args):
    return CliRunner().invoke(cli, ["triton", *map(str, args)])


def test_cli_writes_repository(tmp_path, toy):
    result = _cli([toy, "-o", tmp_path / "repo", "--name", "toy", "--num-instances", 2, "--backend", "python",
                   "--instance-count", 2])
    assert result.exit_code == 0, result.output
    cfg = _read(tmp_path / "repo" / "toy")
    assert cfg.backend == "python" and cfg.instance_group[0].count == 2


CLI_FAULTS = [
    ("max batch not multiple of N", {}, ["--max-batch-size", 7], 6, "max_batch_size=7 is not a multiple"),
    ("preferred not multiple of N", {}, ["--preferred-batch-sizes", "2,3"], 6, "preferred_batch_size 3"),
    ("preferred over max", {}, ["--max-batch-size", 8, "--preferred-batch-sizes", "16"], 6, "exceeds max_batch_size=8"),
    ("graph batch fixed", {"batch": 4}, [], 6, "batch axis is fixed to 4"),
    ("graph dtype", {"input_dtype": TensorProto.INT32}, [], 6, "is int32, the interface needs int64"),
    ("bad name", {}, ["--name", "a/b"], 6, "invalid Triton model name"),
    ("no N", {"metadata": {}}, [], 2, "no prumux.num_instances"),
]


@pytest.mark.parametrize("label, model_kwargs, extra, code, expected", CLI_FAULTS, ids=[f[0] for f in CLI_FAULTS])
def test_cli_faults_exit_with_code_and_write_nothing(tmp_path, label, model_kwargs, extra, code, expected):
    model = make_toy_onnx(tmp_path / "m.onnx", **{"metadata": META, **model_kwargs})
    repo = tmp_path / "repo"
    args = [model, "-o", repo, "--name", "m", *extra]
    result = _cli(args)
    assert result.exit_code == code, result.output
    assert expected in result.output
    assert result.output.count("\n") == 1 and result.output.startswith("error: ")
    assert _listing(repo) == []


def test_cli_missing_model_is_exit_2(tmp_path):
    result = _cli([tmp_path / "nope.onnx", "-o", tmp_path / "repo", "--name", "m"])
    assert result.exit_code == 2 and "model file not found" in result.output


# ---------------------------------------------------------------------------------------------- model.py

class _FakeTensor:
    def __init__(self, name, array):
        self._name, self._array = name, array

    def as_numpy(self):
        return self._array

    def name(self):
        return self._name


class _FakeResponse:
    def __init__(self, output_tensors, error=None):
        self.output_tensors, self.error = output_tensors, error


def _fake_pb_utils():
    mod = types.ModuleType("triton_python_backend_utils")
    mod.Tensor = _FakeTensor
    mod.InferenceResponse = _FakeResponse
    mod.TritonError = lambda msg: msg
    mod.get_input_tensor_by_name = lambda req, name: _FakeTensor(name, req[name]) if name in req else None
    mod.triton_string_to_numpy = lambda s: {"TYPE_FP32": np.float32}[s]
    return mod


@pytest.fixture
def python_model(tmp_path, toy, monkeypatch):
    """The emitted model.py, loaded with a fake triton_python_backend_utils; records ORT batch sizes."""
    import json

    model_dir = write_repository(tmp_path / "repo", name="toy", model_path=toy, backend="python")
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    spec = importlib.util.spec_from_file_location("emitted_model", model_dir / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from google.protobuf import json_format

    cfg_json = json_format.MessageToJson(_read(model_dir), preserving_proto_field_name=True)
    model = module.TritonPythonModel()
    model.initialize({"model_config": cfg_json, "model_version": "1"})
    calls: list[int] = []
    run = model.session.run

    def recording_run(names, feeds):
        calls.append(next(iter(feeds.values())).shape[0])
        return run(names, feeds)

    model.session = types.SimpleNamespace(run=recording_run)
    assert json.loads(cfg_json)["parameters"]["prumux.num_instances"]["string_value"] == "2"
    return model, calls


@pytest.mark.parametrize(
    "isolate, sizes, want_calls",
    [
        (True, [2, 1, 4, 3], [6, 1, 3]),  # multiples of N=2 run together; 1 and 3 run alone
        (False, [2, 1, 4, 3], [10]),
        (True, [1], [1]),
    ],
)
def test_python_model_batches_requests(python_model, isolate, sizes, want_calls):
    model, calls = python_model
    model.isolate = isolate
    feeds = [toy_feeds(b, 7, seed=i) for i, b in enumerate(sizes)]
    responses = model.execute(feeds)
    assert calls == want_calls
    for f, r in zip(feeds, responses):
        assert r.error is None
        np.testing.assert_allclose(r.output_tensors[0].as_numpy(), toy_reference(f), atol=1e-5, rtol=0)


def test_python_model_groups_by_sequence_length_and_reports_bad_requests(python_model):
    model, calls = python_model
    good_a, good_b = toy_feeds(2, 5, seed=1), toy_feeds(2, 9, seed=2)
    bad = {k: v.astype(np.int32) for k, v in toy_feeds(2, 5, seed=3).items()}
    missing = {k: v for k, v in toy_feeds(2, 5, seed=4).items() if k != "token_type_ids"}
    responses = model.execute([good_a, bad, good_b, missing])
    assert calls == [2, 2]
    assert "must be int64" in responses[1].error and "no input 'token_type_ids'" in responses[3].error
    for f, r in ((good_a, responses[0]), (good_b, responses[2])):
        np.testing.assert_allclose(r.output_tensors[0].as_numpy(), toy_reference(f), atol=1e-5, rtol=0)


def test_explicit_n_contradicting_the_model_is_refused(tmp_path):
    """An N that disagrees with the model's prumux.num_instances would break the multiples-of-N guarantee."""
    from prumux_compile.errors import TritonConfigError
    from prumux_compile.triton import write_repository

    model = make_toy_onnx(tmp_path / "m.onnx", metadata={"prumux.num_instances": "5"})
    with pytest.raises(TritonConfigError, match="contradicts"):
        write_repository(tmp_path / "repo", name="m", model_path=model, num_instances=2)
    assert not (tmp_path / "repo" / "m").exists()


def test_python_model_opens_the_measured_session(tmp_path, toy, monkeypatch):
    """model.py applies the session settings the artifact was measured under (graph level, thread pools)."""
    import onnxruntime as ort
    from google.protobuf import json_format

    model_dir = write_repository(tmp_path / "repo", name="toy", model_path=toy, backend="python",
                                 graph_optimization_level="disable_all", intra_op_num_threads=2, inter_op_num_threads=1)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    spec = importlib.util.spec_from_file_location("emitted_model_session", model_dir / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize({"model_config": json_format.MessageToJson(_read(model_dir), preserving_proto_field_name=True),
                      "model_version": "1"})
    opts = model.session.get_session_options()
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (2, 1)
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
