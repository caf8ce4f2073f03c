"""Checkpoint -> validated ONNX artifacts: the library call behind ``prumux-compile export``.

It sits beside the build driver (:mod:`prumux_compile.driver`), above :mod:`prumux_compile.export` (the ONNX
interface and export mechanics) and :mod:`prumux_compile.engines` (which build on that export), so no package
imports another that imports it back.

:func:`export_into` writes into an existing directory; :func:`export_checkpoint` wraps it atomically (a
temporary directory next to OUT, renamed into place only after every artifact validated; a failed export
leaves OUT as it was).

Files written::

    model.onnx        standard ONNX ops only (opset >= 17), dynamic batch (and sequence) axes, prumux.* metadata
    model.ort.onnx    the same graph after ONNX Runtime fusions (com.microsoft ops), unless ort_optimize=False
    model.optimized.onnx  the ort-cpu engine: ONNX Runtime's optimised graph of the fastest variant
    validation.json   per artifact and case: max |Δlogit| vs the reference, argmax agreement, pass/fail, criteria
    passes.json       the IR pass reports
    export.json       interface, graph checks, fusion report, engine choice, environment
    candidate.json    the artifact record in the layout ``build`` writes for a candidate (docs/report.md): which file
                      the engine measured and chose, its sha256 and the session settings it was measured under, so
                      that ``prumux-compile triton OUT`` serves exactly that (no benchmark fields: export times
                      only the graph variants)
"""
from __future__ import annotations

from prumux_compile.fsutil import nearest_existing, output_tempdir, refuse_inputs_inside

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from prumux_compile.bench.timing import environment
from prumux_compile.checkpoint import from_raw, read_raw
from prumux_compile.engines import registry
from prumux_compile.engines.base import Artifact, Compiled, EngineConfig
from prumux_compile.errors import InputError
from prumux_compile.export.onnx_export import check_onnx, export_onnx, tool_version
from prumux_compile.export.spec import ExportSpec, spec_for_ir
from prumux_compile.validation import ArtifactValidation, require_passed, validate, validation_document

__all__ = ["ExportResult", "export_into", "export_checkpoint", "candidate_record", "MODEL_FILENAME"]

MODEL_FILENAME = "model.onnx"


@dataclass
class ExportResult:
    """What an export produced.

    Attributes:
        out_dir: the directory holding the files.
        files: file name -> path of every file written.
        spec: the model interface.
        artifact: the ONNX Runtime engine artifact (which graph it uses and why, fusion report).
        validation: artifact file name -> :class:`~prumux_compile.validation.ArtifactValidation`.
        passes: the IR pass reports (dicts).
        onnx: export and graph-check info of ``model.onnx``.
    """

    out_dir: Path
    files: dict[str, Path]
    spec: ExportSpec
    artifact: Artifact
    validation: dict[str, ArtifactValidation]
    passes: list[dict] = field(default_factory=list)
    onnx: dict = field(default_factory=dict)

    def _rebased(self, new_dir: Path) -> "ExportResult":
        def move(p: Path) -> Path:
            return new_dir / Path(p).relative_to(self.out_dir)

        artifact = self.artifact.rebased(self.out_dir, new_dir)
        return ExportResult(new_dir, {k: move(p) for k, p in self.files.items()}, self.spec, artifact,
                            self.validation, self.passes, self.onnx)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def export_into(checkpoint: str | Path, dest: str | Path, *, seq_len: int = 128, opset: int = 17,
                threads: int | None = None, ort_optimize: bool = True, backend: str = "ort-cpu",
                prefer: str = "auto") -> ExportResult:
    """Compile, export, fuse, validate; write the files of the module docstring into ``dest``.

    Args:
        checkpoint: checkpoint directory (any family of docs/checkpoint-formats.md §1.1).
        dest: an existing directory (files of the same names are replaced).
        seq_len: compiled sequence length of multiplexed models, tokens (>= 2); ignored for N = 1 families,
            whose sequence axis is dynamic up to their position table.
        opset: ONNX default-domain opset (>= 17).
        threads: intra-op threads of the ONNX Runtime sessions (None = ORT default).
        ort_optimize: write ``model.ort.onnx`` (ORT fusions) and let the engine choose by measurement.
        backend: the ONNX Runtime backend (``ort-cpu`` or ``ort-cuda``) that builds the engine and runs every
            graph for validation (criteria: :func:`prumux_compile.validation.criteria_for`).
        prefer: ``"auto"`` or a graph variant (:data:`prumux_compile.engines.onnxruntime.VARIANTS`, ``"plain"``,
            ``"fused"``).

    Returns:
        :class:`ExportResult`.

    Raises:
        CheckpointError: unreadable checkpoint (exit 2). InputError: bad options (exit 2).
        EngineBuildError: export, graph checks or engine build failed (exit 4).
        ValidationError: an artifact disagrees with the reference (exit 3); ``validation.json`` is written
            into ``dest`` first, ``candidate.json`` (what ``triton`` serves) only after every artifact passed.
    """
    if int(seq_len) < 2:
        raise InputError(f"--seq-len {seq_len}: must be >= 2")
    if backend not in ("ort-cpu", "ort-cuda"):
        raise InputError(f"export runs its graphs on an ONNX Runtime backend (ort-cpu, ort-cuda), not {backend!r}")
    dest = Path(dest)
    raw = read_raw(checkpoint)
    ir = from_raw(raw, seq_len=int(seq_len))
    from prumux_compile.kernels import build_module
    from prumux_compile.passes import compile_ir

    compiled, reports = compile_ir(ir, "all")
    module = build_module(compiled)
    spec = spec_for_ir(compiled)
    model_path = dest / MODEL_FILENAME
    onnx_info = export_onnx(module, spec, model_path, opset=opset)
    onnx_info.update(check_onnx(model_path, spec))
    del module
    engine = registry.get(backend)
    artifact = engine.build(Compiled(model_path, spec, compiled),
                            EngineConfig(threads=threads, out_dir=dest,
                                         options={"optimize": ort_optimize, "prefer": prefer}))
    runners = {Path(path).name: engine.load(artifact.using(role)) for role, path in artifact.files.items()}
    try:
        results = validate(runners, raw, spec, artifact.criteria)
    finally:
        for r in runners.values():
            r.close()
    files = {Path(p).name: Path(p) for p in artifact.files.values()}
    passes = [r.to_dict() for r in reports]
    doc = validation_document(results, spec, backend=artifact.backend, precision=artifact.precision)
    for name, obj in (("validation.json", doc), ("passes.json", passes),
                      ("export.json", {
                          "schema": "prumux-compile/export/1", "tool_version": tool_version(),
                          "checkpoint": {"path": str(raw.path), "family": raw.family, "files": raw.files},
                          "interface": spec.metadata(tool_version()), "ignored_inputs": list(spec.ignored_inputs),
                          "onnx": onnx_info, "engine": {**artifact.report, "uses": Path(artifact.path).name, "sha256": artifact.sha256},
                          "artifact": artifact.describe(),
                          "environment": environment()})):
        _write_json(dest / name, obj)
        files[name] = dest / name
    require_passed(results)
    # only a validated artifact gets a record that `triton` serves
    from prumux_compile.report.builder import _clean

    _write_json(dest / "candidate.json", _clean(candidate_record(raw, compiled, spec, artifact, results, onnx_info,
                                                                 passes)))
    files["candidate.json"] = dest / "candidate.json"
    return ExportResult(dest, files, spec, artifact, results, passes, onnx_info)


def candidate_record(raw, compiled, spec: ExportSpec, artifact: Artifact, results: dict[str, ArtifactValidation],
                     onnx_info: dict, passes: list[dict]) -> dict:
    """The ``candidate.json`` of an export: the fields of a build's candidate record (docs/report.md) that an
    export has — id (the checkpoint folder's name), checkpoint and its file hashes, family, N, sparsity, backend,
    precision, device, compiled length, ``artifact`` (:meth:`~prumux_compile.engines.base.Artifact.describe`:
    the chosen file, its sha256, deployment settings), ``export``, ``validation`` (summary; the cases are in
    validation.json) and ``passes`` — plus ``"source": "export"``. ``prumux-compile triton`` reads it as it reads
    a build's candidate (:func:`prumux_compile.driver.write_candidate_repository`)."""
    from prumux_compile.report.stats import cofi_sparsity

    deployed = results[Path(artifact.path).name]
    return {
        "id": Path(raw.path).name,
        "source": "export",
        "checkpoint": str(raw.path),
        "checkpoint_files": raw.files,
        "family": spec.family,
        "num_instances": spec.num_instances,
        "sparsity": cofi_sparsity(compiled),
        "backend": artifact.backend,
        "precision": artifact.precision,
        "device": artifact.device,
        "seq_len": spec.seq_len if spec.muxed else None,
        "artifact": artifact.describe(),
        "export": {**onnx_info, "path": MODEL_FILENAME},
        "validation": {"passed": all(r.passed for r in results.values()),
                       "max_abs_diff": max((c.max_abs_diff for r in results.values() for c in r.cases),
                                           default=float("nan")),
                       "cases": sum(len(r.cases) for r in results.values()),
                       "criteria": artifact.criteria.to_dict(), "tolerance": artifact.criteria.atol,
                       "argmax_agreement": deployed.argmax_agreement, "files": list(results),
                       "file": "validation.json"},
        "passes": passes,
    }


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


def export_checkpoint(checkpoint: str | Path, out: str | Path, *, force: bool = False, **options) -> ExportResult:
    """:func:`export_into` a fresh directory, atomically: ``OUT`` appears (or is replaced) only on success.

    Work happens in a temporary directory next to ``out`` (same file system), renamed to ``out`` at the end.
    With ``force`` an existing ``out`` is moved aside, replaced, then deleted (restored if the rename fails).

    Args:
        checkpoint: checkpoint directory.
        out: output directory to create.
        force: replace an existing ``out``.
        **options: keyword options of :func:`export_into`.

    Raises:
        InputError: ``out`` exists and ``force`` is False, or the checkpoint lies inside ``out`` (exit 2).
        Everything :func:`export_into` raises; ``out`` is then untouched and no temporary directory is left.
    """
    out = Path(out).absolute()
    ckpt = Path(checkpoint).absolute()
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is a file; give a folder path for the outputs")
    if out.exists() and not force:
        raise InputError(f"{out} already exists; pass --force to replace it")
    if ckpt == out or _inside(ckpt, out):
        raise InputError(f"the checkpoint {ckpt} lies inside the output {out}; choose another output directory")
    refuse_inputs_inside(out, {"the checkpoint": ckpt})  # also through symbolic links and '..'
    where = nearest_existing(out.parent)
    if not where.is_dir():
        raise InputError(f"{out}: its parent {where} is a file, not a folder; give a folder path for the outputs")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_tempdir(f".{out.name}.", out.parent, suffix=".tmp")
    try:
        result = export_into(ckpt, tmp, **options)
        if out.exists() or out.is_symlink():
            backup = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent)) / "old"
            os.replace(out, backup)
            try:
                os.replace(tmp, out)
            except OSError:
                os.replace(backup, out)
                raise
            shutil.rmtree(backup.parent, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result._rebased(out)
