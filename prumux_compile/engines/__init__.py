"""Engine backends behind one interface (DESIGN.md "Engines") and their registry.

``registry.get("ort-cpu").build(onnx_path, BuildSpec()) -> Artifact``; ``backend.load(artifact) -> Runner``;
``Runner.run(feeds) -> {"logits": ...}``. Backends: ``ort-cpu``, ``ort-cuda``; ``torch-cuda`` and
``tensorrt`` are registered and report why they are unavailable until their modules exist.
"""
from prumux_compile.engines.base import Artifact, Backend, BuildSpec, Runner, prepare_feeds
from prumux_compile.engines.registry import availability, get, names, register

__all__ = ["Artifact", "Backend", "BuildSpec", "Runner", "prepare_feeds", "availability", "get", "names",
           "register"]
