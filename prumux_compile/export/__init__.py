"""ONNX export: the declarative interface (:mod:`.spec`), the export mechanics and graph checks
(:mod:`.onnx_export`), validation against the reference (:mod:`.validate`) and the checkpoint -> artifacts
driver (:mod:`.pipeline`)."""
from prumux_compile.export.inputs import realistic_inputs
from prumux_compile.export.onnx_export import check_onnx, export_onnx, read_metadata
from prumux_compile.export.pipeline import ExportResult, export_checkpoint, export_into
from prumux_compile.export.spec import ExportSpec, TensorSpec, make_spec, spec_for_ir
from prumux_compile.export.validate import (DEFAULT_TOLERANCE, ArtifactValidation, CaseResult, format_table,
                                            require_passed, validate_artifacts, validation_cases)

__all__ = ["ExportSpec", "TensorSpec", "make_spec", "spec_for_ir", "export_onnx", "check_onnx", "read_metadata",
           "realistic_inputs", "validate_artifacts", "validation_cases", "require_passed", "format_table",
           "ArtifactValidation", "CaseResult", "DEFAULT_TOLERANCE", "ExportResult", "export_into",
           "export_checkpoint"]
