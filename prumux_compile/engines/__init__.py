"""Engine backends behind one contract and their registry.

``registry.get("ort-cpu").build(Compiled, EngineConfig) -> Artifact``; ``backend.load(artifact) -> Runner``;
``Runner.run(feeds) -> {"logits": ...}``. Backends: ``ort-cpu``, ``ort-cuda``, ``torch-cuda``, ``tensorrt``; one
that cannot run here reports why (:func:`availability`).
"""
from prumux_compile.engines.base import (PRECISIONS, Artifact, Backend, Compiled, Deployment, EngineConfig, Runner,
                                         prepare_feeds)
from prumux_compile.engines.registry import availability, get, names, register

__all__ = ["PRECISIONS", "Artifact", "Backend", "Compiled", "Deployment", "EngineConfig", "Runner", "prepare_feeds",
           "availability", "get", "names", "register"]
