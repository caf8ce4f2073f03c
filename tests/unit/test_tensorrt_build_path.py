"""``build --backend tensorrt`` through the same driver path as every backend, with a stand-in ``tensorrt`` module
that records every call (TensorRT cannot be installed on these machines).

The stand-in builds a "plan" that embeds the ONNX graph its parser read, and its runtime runs that graph with ONNX
Runtime on the CPU, reading and writing the tensors at the addresses the runner sets (CPU torch buffers). So the
test checks the real contract end to end: the plan is built from the fp16 graph because the config asked for fp16,
the runner reads nothing but ``model.plan``, every setter's return value is used, output shape and dtype come from
the engine, validation applies the fp16 criteria, and the Triton repository serves that plan (same hash) as
``tensorrt_plan`` on ``KIND_GPU``.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import types

import numpy as np
import onnxruntime as ort
import pytest

from prumux_compile.driver import BuildOptions, build
from prumux_compile.engines import registry
from prumux_compile.engines.tensorrt import TensorRTBackend, process_logger
from prumux_compile.demo.synthetic import SynthSpec, write_checkpoint
from prumux_compile.validation import criteria_for

PREFIX = b"STAND-IN TENSORRT PLAN\n"
_NP = {"FLOAT": np.float32, "HALF": np.float16, "INT64": np.int64}


class StandInTRT:
    """Just enough of ``tensorrt`` (10.x API) to build, deserialise and run; ``calls`` records everything."""

    __version__ = "10.9.0"

    def __init__(self):
        fake = self
        self.calls: list[tuple] = []
        self.loggers: list = []
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        self.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
        self.DataType = types.SimpleNamespace(FLOAT="FLOAT", HALF="HALF", INT64="INT64")

        class ILogger:
            def __init__(self):
                pass

        self.ILogger = ILogger

        class Network:
            def __init__(self):
                self.inputs = []
                self.model_bytes = None

            @property
            def num_inputs(self):
                return len(self.inputs)

            def get_input(self, i):
                return types.SimpleNamespace(name=self.inputs[i])

        class Parser:
            def __init__(self, network, logger):
                fake.loggers.append(logger)
                self.network = network
                self.num_errors = 0

            def parse_from_file(self, path):
                fake.calls.append(("parse", path))
                self.network.model_bytes = open(path, "rb").read()
                sess = ort.InferenceSession(self.network.model_bytes, providers=["CPUExecutionProvider"])
                self.network.inputs = [i.name for i in sess.get_inputs()]
                return True

        class Config:
            builder_optimization_level = None

            def __init__(self):
                self.profiles = []

            def set_memory_pool_limit(self, pool, size):
                fake.calls.append(("workspace", size))

            def add_optimization_profile(self, prof):
                self.profiles.append(prof)
                return len(self.profiles) - 1

        class OptProfile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, lo, opt, hi):
                self.shapes[name] = (lo, opt, hi)

        class Builder:
            def __init__(self, logger):
                fake.loggers.append(logger)

            def create_network(self, flags):
                fake.calls.append(("network", flags))
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return OptProfile()

            def build_serialized_network(self, network, config):
                fake.calls.append(("build", [p.shapes for p in config.profiles]))
                return PREFIX + network.model_bytes

        class Context:
            def __init__(self, session):
                self.session = session
                self.shapes, self.addresses = {}, {}

            def set_optimization_profile_async(self, index, stream):
                fake.calls.append(("profile", index, stream))
                return True

            def set_input_shape(self, name, shape):
                fake.calls.append(("shape", name, tuple(shape)))
                self.shapes[name] = tuple(shape)
                return True

            def set_tensor_address(self, name, ptr):
                self.addresses[name] = ptr
                return True

            def get_tensor_shape(self, name):
                fake.calls.append(("get_shape", name))
                b = self.shapes["input_ids"][0]
                return (b, self.session.get_outputs()[0].shape[1])

            def execute_async_v3(self, stream):
                fake.calls.append(("execute", stream))
                feeds = {}
                for name, shape in self.shapes.items():
                    n = int(np.prod(shape))
                    feeds[name] = np.ctypeslib.as_array((ctypes.c_int64 * n).from_address(self.addresses[name])
                                                        ).reshape(shape).copy()
                (out,) = self.session.run(["logits"], feeds)
                dst = np.ctypeslib.as_array((ctypes.c_float * out.size).from_address(self.addresses["logits"]))
                dst[:] = out.astype(np.float32).ravel()
                return True

        class Engine:
            def __init__(self, model_bytes):
                self.session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
                self.names = [i.name for i in self.session.get_inputs()] + ["logits"]

            @property
            def num_io_tensors(self):
                return len(self.names)

            def get_tensor_name(self, i):
                return self.names[i]

            def get_tensor_mode(self, name):
                return "OUTPUT" if name == "logits" else "INPUT"

            def get_tensor_dtype(self, name):
                fake.calls.append(("dtype", name))
                return "FLOAT" if name == "logits" else "INT64"

            def create_execution_context(self):
                return Context(self.session)

        class Runtime:
            def __init__(self, logger):
                fake.loggers.append(logger)

            def deserialize_cuda_engine(self, data):
                fake.calls.append(("deserialize", hashlib.sha256(data).hexdigest()))
                assert data.startswith(PREFIX), "the runtime was given something other than a plan"
                return Engine(data[len(PREFIX):])

        self.Builder, self.OnnxParser, self.Runtime = Builder, Parser, Runtime

    @staticmethod
    def nptype(dtype):
        return _NP[dtype]


@pytest.fixture
def standin(monkeypatch):
    trt = StandInTRT()
    monkeypatch.setattr(registry, "_TARGETS", dict(registry._TARGETS))
    registry.register("tensorrt", lambda: TensorRTBackend(trt=trt, device="cpu"))
    return trt


def test_build_with_tensorrt_goes_through_the_driver(standin, tmp_path):
    ckpt = tmp_path / "ckpt"
    write_checkpoint(ckpt, SynthSpec(family="prumux_compressed", num_instances=2, num_layers=2, hidden=32, heads=4,
                                     ffn=32, vocab=256, max_pos=64, num_labels=3,
                                     heads_kept=[[0, 1, 3], [2]], ffn_kept=[list(range(20)), list(range(7))]))
    out = tmp_path / "out"
    report = build([ckpt], BuildOptions(out=out, backends=("tensorrt",), backends_explicit=True, precisions=("fp16",),
                                        seq_len=16,
                                        batch_sizes=(6,), rounds=1, warmup=0, threads=1, min_accuracy=0.0,
                                        cache=False, agreement_samples=12))
    (cand,) = report["candidates"]
    cdir = out / "candidates" / cand["id"]
    art = cand["artifact"]

    # the precision asked for (fp16, the backend default), judged by the fp16 criteria, not labelled fp32
    assert cand["precision"] == "fp16" and art["precision"] == "fp16" and cand["device"] == "cpu"
    fp16 = criteria_for("tensorrt", "fp16")
    assert art["criteria"] == fp16.to_dict() and cand["validation"]["criteria"] == fp16.to_dict()
    doc = json.loads((cdir / "validation.json").read_text())
    assert (doc["backend"], doc["precision"], doc["passed"]) == ("tensorrt", "fp16", True)
    assert list(doc["artifacts"]) == ["model.plan"]  # the plan, nothing else, was validated
    assert doc["artifacts"]["model.plan"]["criteria"]["min_agreement"] == 0.995
    assert 0 < doc["artifacts"]["model.plan"]["max_abs_diff"] <= fp16.atol  # really fp16, within the bound

    # built from the fp16 graph; the runtime only ever saw the bytes of model.plan
    parsed = [c[1] for c in standin.calls if c[0] == "parse"]
    assert [p.split("/")[-1] for p in parsed] == ["model.trt.fp16.onnx"]
    plan_hash = hashlib.sha256((cdir / "model.plan").read_bytes()).hexdigest()
    assert art["path"] == "model.plan" and art["sha256"] == plan_hash
    assert {c[1] for c in standin.calls if c[0] == "deserialize"} == {plan_hash}
    assert ("network", 1) in standin.calls  # strongly typed
    (profiles,) = [c[1] for c in standin.calls if c[0] == "build"]
    assert profiles == [{k: ((1, 1), (6, 16), (6, 16)) for k in ("input_ids", "attention_mask", "token_type_ids")}]
    assert ("dtype", "logits") in standin.calls and ("get_shape", "logits") in standin.calls
    assert all(c[-1] == 0 for c in standin.calls if c[0] in ("execute", "profile"))  # CPU stand-in: stream 0

    # one process-wide logger for builder, parser and every runtime
    assert len({id(x) for x in standin.loggers}) == 1 and standin.loggers[0] is process_logger(standin)

    # benchmarked on the artifact's device against eager PyTorch on the same device
    assert all(b["device"] == "cpu" for b in cand["benchmark"]) and cand["speedup_vs_eager"] > 0

    # the repository serves that plan
    repo = out / report["model_repository"]
    assert hashlib.sha256((repo / "1" / "model.plan").read_bytes()).hexdigest() == plan_hash
    config = (repo / "config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in config and "KIND_GPU" in config and "max_batch_size: 6" in config


def test_tensorrt_runner_checks_setter_results(standin, tmp_path):
    """A refused setter (here: the input shape) is an error naming the call, never a silent wrong run."""
    from prumux_compile.engines.base import Compiled, EngineConfig
    from prumux_compile.errors import EngineBuildError
    from prumux_compile.export.onnx_export import export_onnx
    from prumux_compile.export.spec import spec_for_ir
    from prumux_compile.kernels import build_module
    from prumux_compile.checkpoint import load
    from prumux_compile.passes import compile_ir

    write_checkpoint(tmp_path / "c", SynthSpec(family="bert", num_layers=1, hidden=32, heads=4, ffn=32, vocab=256,
                                               max_pos=64, num_labels=2))
    ir, _ = compile_ir(load(tmp_path / "c"))
    spec = spec_for_ir(ir)
    export_onnx(build_module(ir), spec, tmp_path / "model.onnx")
    backend = registry.get("tensorrt")
    art = backend.build(Compiled(tmp_path / "model.onnx", spec, ir), EngineConfig(precision="fp32", seq_len=32,
                                                                                  batch_sizes=(4,)))
    assert art.precision == "fp32" and art.criteria == criteria_for("tensorrt", "fp32")
    assert [c[1].split("/")[-1] for c in standin.calls if c[0] == "parse"] == ["model.trt.onnx"]
    with backend.load(art) as runner:
        ok = runner.run({"input_ids": np.full((3, 9), 150)})["logits"]
        assert ok.shape == (3, 2) and ok.dtype == np.float32
        runner._context.set_input_shape = lambda name, shape: False
        with pytest.raises(EngineBuildError, match=r"TensorRT refused input shape input_ids\[3, 9\]"):
            runner.run({"input_ids": np.full((3, 9), 150)})
    with pytest.raises(Exception, match="loads only its plan"):
        backend.load(art.using("trt"))
