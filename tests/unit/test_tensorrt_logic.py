"""TensorRT builder logic without TensorRT: profiles (F14 in docs/field-faults.md), option checks, error mapping (F10), F17, with a fake
``tensorrt`` module standing in for the library."""
from __future__ import annotations

import types

import onnx
import pytest
from onnx import TensorProto, helper

from prumux_compile.engines.tensorrt import (Profile, TensorRTBackend, TensorRTBuildError, TrtOptions,
                                             blamed_profiles, build_plan, compute_profiles, select_profile)
from prumux_compile.errors import EngineBuildError, InputError

NAMES = ("input_ids", "attention_mask", "token_type_ids")


# ------------------------------------------------------------------------------------------ profiles
@pytest.mark.parametrize("sizes,n,seq,max_batch,expected", [
    # (opt batch, shared max) per profile; every min batch is 1
    ([16], 1, 128, None, [(16, 16)]),
    ([8, 32], 1, 128, None, [(8, 32), (32, 32)]),          # F14 in docs/field-faults.md: not 1..8 and 9..32, both 1..32
    ([32, 8, 8], 1, 128, None, [(8, 32), (32, 32)]),       # sorted, deduplicated
    ([7], 2, 16, None, [(7, 8)]),                          # shared max rounded up to a multiple of N
    ([], 5, 128, None, [(40, 40)]),                        # default 8·N
    ([16, 128], 2, 128, 256, [(16, 256), (128, 256)]),     # explicit shared max
    ([16], 1, 128, 64, [(16, 64)]),                        # F10 in docs/field-faults.md example: min 1x.., opt 16x128, max 64x128
])
def test_compute_profiles(sizes, n, seq, max_batch, expected):
    profiles = compute_profiles(sizes, n, seq, max_batch=max_batch, input_names=NAMES)
    assert [(p.opt_batch, p.max_batch) for p in profiles] == expected
    assert [p.index for p in profiles] == list(range(len(expected)))
    for p in profiles:
        assert set(p.shapes) == set(NAMES)
        for lo, opt, hi in p.shapes.values():
            assert lo == (1, 1) and opt[1] == seq and hi[1] == seq


def test_profile_description_and_min_seq():
    (p,) = compute_profiles([16], 1, 128, max_batch=64, min_seq=16, input_names=NAMES)
    assert p.describe() == "profile 0 (min 1x16, opt 16x128, max 64x128)"


@pytest.mark.parametrize("kwargs,match", [
    (dict(batch_sizes=[0], num_instances=1, seq_len=8), "batch size 0"),
    (dict(batch_sizes=[64], num_instances=1, seq_len=8, max_batch=32), "shares one maximum"),
    (dict(batch_sizes=[4], num_instances=0, seq_len=8), "num_instances"),
    (dict(batch_sizes=[4], num_instances=1, seq_len=8, min_seq=9), "sequence range"),
    (dict(batch_sizes=[4], num_instances=1, seq_len=0), "sequence range"),
])
def test_compute_profiles_rejects(kwargs, match):
    with pytest.raises(InputError, match=match):
        compute_profiles(**kwargs)


@pytest.mark.parametrize("batch,expected", [(1, 0), (8, 0), (9, 1), (32, 1), (33, 2), (100, 2), (128, 2)])
def test_select_profile(batch, expected):
    profiles = compute_profiles([8, 32, 64], 2, 16, max_batch=128, input_names=NAMES)
    assert select_profile(profiles, batch) == expected


@pytest.mark.parametrize("batch", [0, 129])
def test_select_profile_out_of_range(batch):
    profiles = compute_profiles([8], 2, 16, max_batch=128, input_names=NAMES)
    with pytest.raises(InputError, match="1..128"):
        select_profile(profiles, batch)


@pytest.mark.parametrize("options,match", [
    (dict(precision="int8"), "precision"), (dict(batch_sizes=(0,)), "batch size"),
    (dict(batch_sizes=(64,), max_batch=32), "shares one maximum"), (dict(max_batch=0), "max_batch"),
    (dict(seq_len=0), "seq_len"), (dict(seq_len=16, min_seq=17), "min_seq"), (dict(workspace_mb=0), "workspace"),
    (dict(optimization_level=6), "optimization_level"),
])
def test_options_rejected(options, match):
    with pytest.raises(InputError, match=match):
        TrtOptions(**options).check()


def test_options_from_engine_config():
    from prumux_compile.engines.base import EngineConfig

    cfg = EngineConfig(precision="fp32", batch_sizes=(8, 32), max_batch=64, seq_len=96,
                       options={"workspace_mb": 512, "optimization_level": 5, "min_seq": 4})
    assert TrtOptions.from_config(cfg) == TrtOptions(precision="fp32", batch_sizes=(8, 32), max_batch=64, seq_len=96,
                                                     min_seq=4, workspace_mb=512, optimization_level=5)
    assert TensorRTBackend.default_precision == "fp16" and TensorRTBackend.precisions == ("fp32", "fp16")


@pytest.mark.parametrize("log,expected", [
    (["[ERROR] Error Code 4: Internal Error (optimization profile 1 has min > max)"], [1]),
    (["[ERROR] profile index: 2 is invalid", "[WARNING] profile 0 slow"], [2]),
    (["[INFO] building profile 0", "[ERROR] out of memory"], [0, 1, 2]),   # none named in an error -> all
    ([], [0, 1, 2]),
])
def test_blamed_profiles(log, expected):
    profiles = compute_profiles([1, 8, 64], 1, 16, input_names=NAMES)
    assert [p.index for p in blamed_profiles(log, profiles)] == expected


# ------------------------------------------------------------------------------------------ fake library
class _Severity:
    def __init__(self, name):
        self.name = name


class FakeTRT:
    """Just enough of the ``tensorrt`` module for :func:`build_plan`; records every call."""

    def __init__(self, *, version="11.0.0", parse_ok=True, plan=b"PLAN", fail_log=(), raise_in_build=None,
                 inputs=NAMES, profile_index=None):
        fake = self
        self.__version__ = version
        self.calls: list = []
        self.cache_blob_in = None

        class ILogger:
            def __init__(self):
                pass

        self.ILogger = ILogger
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")

        class Network:
            num_inputs = len(inputs)

            def get_input(self, i):
                return types.SimpleNamespace(name=inputs[i])

        class Parser:
            def __init__(self, network, logger):
                self.num_errors = 0 if parse_ok else 1

            def parse_from_file(self, path):
                fake.calls.append(("parse", path))
                return parse_ok

            def get_error(self, i):
                return "In node 3 (Gelu): unsupported operator"

        class Cache:
            def __init__(self, blob):
                self.blob = blob

            def serialize(self):
                return self.blob + b"+new"

        class Config:
            builder_optimization_level = None

            def __init__(self):
                self.cache = None
                self.profiles = []

            def set_memory_pool_limit(self, pool, size):
                fake.calls.append(("workspace", pool, size))

            def create_timing_cache(self, blob):
                fake.cache_blob_in = blob
                return Cache(blob)

            def set_timing_cache(self, cache, ignore_mismatch):
                self.cache = cache
                fake.calls.append(("timing_cache", ignore_mismatch))

            def get_timing_cache(self):
                return self.cache

            def add_optimization_profile(self, prof):
                self.profiles.append(prof)
                idx = len(self.profiles) - 1
                return -1 if profile_index is not None and idx == profile_index else idx

        class OptProfile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, lo, opt, hi):
                self.shapes[name] = (lo, opt, hi)

        class Builder:
            def __init__(self, logger):
                self.logger = logger

            def create_network(self, flags):
                fake.calls.append(("network", flags))
                return Network()

            def create_builder_config(self):
                fake.config = Config()
                return fake.config

            def create_optimization_profile(self):
                return OptProfile()

            def build_serialized_network(self, network, config):
                fake.calls.append(("build", config.builder_optimization_level))
                for line in fail_log:
                    self.logger.log(_Severity("ERROR"), line)
                if raise_in_build:
                    raise raise_in_build
                return None if fail_log else plan

        self.Builder, self.OnnxParser = Builder, Parser


@pytest.fixture
def graph(tmp_path):
    """A tiny standard-only ONNX file (build_plan reads it to refuse non-standard ops first)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "model.trt.onnx"
    onnx.save(model, path)
    return path


def test_build_plan_success(graph, tmp_path):
    trt = FakeTRT()
    profiles = compute_profiles([16, 64], 2, 128, input_names=NAMES)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    opts = TrtOptions(precision="fp16", workspace_mb=512, optimization_level=4, timing_cache=str(cache))
    report = build_plan(graph, tmp_path / "model.plan", profiles, opts, trt=trt)
    assert (tmp_path / "model.plan").read_bytes() == b"PLAN" and report["bytes"] == 4
    assert ("network", 1) in trt.calls                      # 1 << STRONGLY_TYPED
    assert ("workspace", "WORKSPACE", 512 * 2**20) in trt.calls
    assert ("build", 4) in trt.calls and ("timing_cache", False) in trt.calls
    assert trt.cache_blob_in == b"old" and cache.read_bytes() == b"old+new"
    shapes = [p.shapes for p in trt.config.profiles]
    assert shapes[0]["input_ids"] == ((1, 1), (16, 128), (64, 128))
    assert shapes[1]["token_type_ids"] == ((1, 1), (64, 128), (64, 128))
    assert report["strongly_typed"] and report["profiles"][1] == "profile 1 (min 1x1, opt 64x128, max 64x128)"


def test_build_plan_without_cache_file_starts_empty(graph, tmp_path):
    trt = FakeTRT()
    cache = tmp_path / "new.cache"
    build_plan(graph, tmp_path / "p.plan", compute_profiles([4], 1, 8, input_names=NAMES),
               TrtOptions(timing_cache=str(cache)), trt=trt)
    assert trt.cache_blob_in == b"" and cache.read_bytes() == b"+new"


def test_build_failure_names_profile_and_keeps_log(graph, tmp_path):
    trt = FakeTRT(fail_log=["Error Code 2: OutOfMemory (optimization profile 1 needs 9 GiB)"])
    profiles = compute_profiles([16, 64], 1, 128, input_names=NAMES)
    with pytest.raises(TensorRTBuildError) as info:
        build_plan(graph, tmp_path / "model.plan", profiles, TrtOptions(), trt=trt)
    err = info.value
    assert err.exit_code == 4 and isinstance(err, EngineBuildError)
    assert "profile 1 (min 1x1, opt 64x128, max 64x128)" in str(err) and "profile 0" not in str(err)
    assert err.profiles == ["profile 1 (min 1x1, opt 64x128, max 64x128)"]
    assert err.log == ["[ERROR] Error Code 2: OutOfMemory (optimization profile 1 needs 9 GiB)"]
    assert not (tmp_path / "model.plan").exists()


def test_build_failure_without_profile_in_log_names_all(graph, tmp_path):
    trt = FakeTRT(fail_log=["Error Code 10: Could not find any implementation"])
    profiles = compute_profiles([1, 16], 1, 16, input_names=NAMES)
    with pytest.raises(TensorRTBuildError, match=r"profile 0 .*; profile 1 .*Could not find any implementation"):
        build_plan(graph, tmp_path / "model.plan", profiles, TrtOptions(), trt=trt)


def test_builder_exception_is_mapped(graph, tmp_path):
    trt = FakeTRT(raise_in_build=RuntimeError("CUDA error 2"))
    with pytest.raises(TensorRTBuildError, match="raised RuntimeError: CUDA error 2"):
        build_plan(graph, tmp_path / "m.plan", compute_profiles([4], 1, 8, input_names=NAMES), TrtOptions(), trt=trt)


def test_parser_error(graph, tmp_path):
    trt = FakeTRT(parse_ok=False)
    with pytest.raises(TensorRTBuildError, match=r"parser rejected model\.trt\.onnx: In node 3 \(Gelu\)") as info:
        build_plan(graph, tmp_path / "m.plan", compute_profiles([4], 1, 8, input_names=NAMES), TrtOptions(), trt=trt)
    assert info.value.log[-1] == "[PARSER] In node 3 (Gelu): unsupported operator"


def test_refused_profile(graph, tmp_path):
    trt = FakeTRT(profile_index=1)
    with pytest.raises(TensorRTBuildError, match=r"refused profile 1 \(min 1x1, opt 8x8, max 8x8\)"):
        build_plan(graph, tmp_path / "m.plan", compute_profiles([4, 8], 1, 8, input_names=NAMES), TrtOptions(),
                   trt=trt)


def test_profile_missing_an_input(graph, tmp_path):
    trt = FakeTRT()
    profiles = compute_profiles([4], 1, 8, input_names=("input_ids",))
    with pytest.raises(TensorRTBuildError, match="attention_mask"):
        build_plan(graph, tmp_path / "m.plan", profiles, TrtOptions(), trt=trt)


def test_refuses_ort_ops_before_touching_tensorrt(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    node = helper.make_node("SkipLayerNormalization", ["x"], ["x2"], domain="com.microsoft")
    model = helper.make_model(helper.make_graph([node], "g", [x], [helper.make_tensor_value_info(
        "x2", TensorProto.FLOAT, [2, 4])]), opset_imports=[helper.make_opsetid("", 17),
                                                           helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, tmp_path / "model.ort.onnx")
    trt = FakeTRT()
    with pytest.raises(EngineBuildError, match="com.microsoft::SkipLayerNormalization"):
        build_plan(tmp_path / "model.ort.onnx", tmp_path / "m.plan", compute_profiles([4], 1, 8), TrtOptions(),
                   trt=trt)
    assert trt.calls == []


def test_old_tensorrt_refused(graph, tmp_path):
    with pytest.raises(EngineBuildError, match="too old"):
        build_plan(graph, tmp_path / "m.plan", compute_profiles([4], 1, 8), TrtOptions(), trt=FakeTRT(version="8.6.1"))


def test_unavailable_here_with_reason():
    pytest.importorskip("torch")
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed on this machine")
    ok, reason = TensorRTBackend().available()
    assert not ok and "'tensorrt' is not installed" in reason
    from prumux_compile.engines import registry

    backend = registry.get("tensorrt")
    assert backend.available()[0] is False
    with pytest.raises(EngineBuildError, match="tensorrt is unavailable"):
        backend.build("model.onnx")


def test_profile_roundtrip_matches_artifact_report():
    (p,) = compute_profiles([16], 2, 32, input_names=NAMES)
    again = Profile(p.index, {k: tuple(tuple(s) for s in [list(x) for x in v]) for k, v in p.shapes.items()})
    assert again == p
