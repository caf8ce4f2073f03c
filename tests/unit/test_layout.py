"""Package layout: the top-level subpackages of prumux_compile import each other without a cycle (function-level
imports included), and the engines that do not need ``onnx`` import and run without it."""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "prumux_compile"


def _unit(module: str) -> str:
    """``prumux_compile.engines.base`` -> ``engines``; ``prumux_compile`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def import_graph() -> dict[str, set[str]]:
    """Top-level unit -> units it imports (every ``import`` / ``from`` statement anywhere in its files)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_init = parts[-1] == "__init__"
        if is_init:
            parts = parts[:-1]
        module = ".".join(parts)
        src = _unit(module)
        graph[src]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = parts if is_init else parts[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    targets = [".".join(base + ([node.module] if node.module else []))]
                elif node.module == "prumux_compile":
                    targets = [f"prumux_compile.{a.name}" for a in node.names]
                elif node.module:
                    targets = [node.module]
            for t in targets:
                if t.startswith("prumux_compile.") and _unit(t) != src:
                    graph[src].add(_unit(t))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of units (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state:
                found = visit(w)
                if found:
                    return found
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state:
            found = visit(v)
            if found:
                return found
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_subpackages():
    graph = import_graph()
    assert {"engines", "export", "kernels", "validation", "driver", "export_job"} <= set(graph)
    assert find_cycle(graph) is None
    # the data flow: export below engines, the two jobs above both
    assert "engines" not in graph["export"] and "export" in graph["engines"]
    assert {"engines", "export", "validation"} <= graph["driver"] and {"engines", "export"} <= graph["export_job"]
    assert "driver" not in graph["engines"] and "export_job" not in graph["engines"]


def test_kernels_is_the_only_model_definition():
    """No module outside kernels/ defines an attention, FFN, layer, multiplexer or demultiplexer module."""
    words = ("attention", "feedforward", "ffn", "layer", "mux", "demux", "compactmodel")
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "kernels" in path.relative_to(PACKAGE).parts or path.name == "reference.py":
            continue  # reference.py is the independent oracle, by design a separate formula-level forward
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                    getattr(b, "attr", getattr(b, "id", "")) == "Module" for b in node.bases):
                if any(w in node.name.lower() for w in words):
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.name}")
    assert offenders == []


_HIDE_ONNX = textwrap.dedent("""
    import sys
    sys.modules["onnx"] = None          # any "import onnx" now raises ImportError
    sys.modules["onnxscript"] = None
    import numpy as np
    import torch
    torch.set_num_threads(1)
    from prumux_compile.engines import registry
    from prumux_compile.engines import base, onnxruntime, openvino, ort_int8, tensorrt, torch_cuda
    from prumux_compile.engines.base import Compiled, EngineConfig
    from prumux_compile.engines.torch_cuda import CudaOptions, TorchCudaBackend
    from prumux_compile.export.spec import spec_for_ir
    from prumux_compile import validation
    from prumux_compile.checkpoint import load
    from prumux_compile.passes import compile_ir
    assert set(registry.availability()) == {"openvino", "ort-cpu", "ort-cuda", "tensorrt", "torch-cuda"}
    ir, _ = compile_ir(load(sys.argv[1], seq_len=16))
    backend = TorchCudaBackend(CudaOptions(device="cpu", graph_mode="eager"))
    art = backend.build(Compiled(sys.argv[2] + "/model.onnx", spec_for_ir(ir), ir),
                        EngineConfig(out_dir=sys.argv[2], options={"attention": "math"}))
    ids = np.full((3, 16), 200, dtype=np.int64)
    with backend.load(art) as runner:
        print(runner.run({"input_ids": ids})["logits"].shape)
    print("onnx" in sys.modules and sys.modules["onnx"] is not None)
""")


def test_engines_that_do_not_need_onnx_import_and_run_without_it(tmp_path):
    """A CUDA-only image may lack ``onnx``: the engine modules, the registry, the validation module and the CUDA
    runtime (here on the CPU) work with ``onnx`` hidden."""
    from prumux_compile.demo.synthetic import SynthSpec, write_checkpoint

    write_checkpoint(tmp_path / "ckpt", SynthSpec(family="prumux_compressed", num_instances=2, num_layers=2,
                                                  hidden=32, heads=4, ffn=32, vocab=256, max_pos=64, num_labels=3))
    (tmp_path / "engine").mkdir()
    res = subprocess.run([sys.executable, "-c", _HIDE_ONNX, str(tmp_path / "ckpt"), str(tmp_path / "engine")],
                         capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == ["(3,", "3)", "False"]
