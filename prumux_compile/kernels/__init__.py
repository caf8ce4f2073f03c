"""Building blocks of the compiled model: mux, demux, attention with a per-layer head count, layer, model."""
from prumux_compile.kernels.model import CompiledModel, build_module

__all__ = ["CompiledModel", "build_module"]
