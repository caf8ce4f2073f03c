"""``prumux-compile triton``: write a validated Triton model repository entry for a compiled ONNX model.

Only wires :func:`prumux_compile.triton.write_repository`; errors print one line on stderr and exit
with the error's code (6 when the config would not match the model, 2 for bad input).
"""
from __future__ import annotations

from pathlib import Path

import click

from prumux_compile.cli.common import handle_errors


def _batch_list(ctx, param, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        sizes = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not sizes:
        raise click.BadParameter("expected at least one batch size")
    return sizes


def _sources(source: Path, name: str | None, all_candidates: bool) -> list[tuple[str, Path, dict | None]]:
    """(model name, model file, candidate info or None) named by SOURCE: a model.onnx, a candidate folder, or a
    build report. A build's candidates are served as measured: their artifact file and deployment settings."""
    import json

    from prumux_compile.errors import InputError

    if source.name == "candidate.json" and source.is_file():
        source = source.parent  # a candidate record stands for its folder
    if source.is_dir() and (source / "candidate.json").is_file():
        from prumux_compile.driver import _model_name

        try:
            info = json.loads((source / "candidate.json").read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{source / 'candidate.json'}: cannot read the candidate record ({exc})") from None
        if not isinstance(info, dict) or not isinstance(info.get("id"), str) or not isinstance(info.get("artifact"), dict):
            raise InputError(f"{source / 'candidate.json'}: not a build's candidate record (no id or no artifact "
                             f"record: written by another tool or an older prumux-compile); rebuild it, or pass "
                             f"{source / 'model.onnx'} with --name to serve the plain exported graph")
        return [(name or _model_name(info), source, info)]
    if source.is_dir():
        source = source / "model.onnx"
    if source.suffix == ".json" and source.name != "candidate.json":
        from prumux_compile.driver import _model_name
        from prumux_compile.report.builder import read_report

        report = read_report(source)
        chosen = report["selection"]["chosen"]
        picked = report["candidates"] if all_candidates else [c for c in report["candidates"] if c["id"] == chosen]
        if name is not None and len(picked) > 1:
            raise InputError("--name names one model; drop it with --all-candidates")
        return [(name or _model_name(c), source.parent / "candidates" / c["id"], c) for c in picked]
    if not source.is_file():
        raise InputError(f"{source}: model file not found (give a model.onnx, a candidate folder or a build report.json)")
    if name is None:
        name = _candidate_name(source.parent / "candidate.json")
    if name is None:
        raise InputError(f"--name is required when SOURCE is a model file without a candidate.json beside it ({source})")
    return [(name, source, None)]


def _candidate_name(path: Path) -> str | None:
    """``prumux_<id>`` from a candidate folder's ``candidate.json`` (as ``build`` names the chosen model), or None
    when there is no such file.

    Raises:
        InputError: the file exists but is not a candidate record with an ``id``.
    """
    import json

    from prumux_compile.driver import _model_name
    from prumux_compile.errors import InputError

    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the candidate record ({exc}); pass --name") from None
    if not isinstance(info, dict) or not isinstance(info.get("id"), str) or not info["id"]:
        raise InputError(f"{path}: no candidate id in it; pass --name")
    return _model_name(info)


@click.command("triton")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", "repo", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Triton model repository directory (created if missing).")
@click.option("--name", default=None,
              help="Model name (directory under the repository); default prumux_<candidate id> for a report or a "
                   "candidate folder (its candidate.json).")
@click.option("--all-candidates", is_flag=True, help="With a report.json: write every candidate, not only the chosen one.")
@click.option("--num-instances", type=click.IntRange(min=1), default=None,
              help="Mux width N (default: the model's prumux.num_instances metadata).")
@click.option("--max-batch-size", type=click.IntRange(max=2**31 - 1), default=None,
              help="Triton max_batch_size, a multiple of N (default: metadata prumux.max_batch rounded down, else 8*N).")
@click.option("--preferred-batch-sizes", callback=_batch_list, default=None, metavar="B1,B2,...",
              help="Dynamic batcher preferred sizes, multiples of N (default: N*2^k up to the max).")
@click.option("--backend", type=click.Choice(["onnxruntime", "python"]), default="onnxruntime", show_default=True,
              help="'python' serves the ONNX file with onnxruntime inside Triton's Python backend.")
@click.option("--instance-count", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--instance-kind", type=click.Choice(["KIND_CPU", "KIND_GPU", "KIND_AUTO"]), default="KIND_CPU",
              show_default=True)
@click.option("--max-queue-delay-us", type=click.IntRange(min=0), default=100, show_default=True,
              help="Dynamic batcher queue delay (microseconds).")
@click.option("--overwrite", is_flag=True, help="Replace an existing model directory.")
@click.option("--ensemble", is_flag=True,
              help="Also write the text ensemble NAME_text (TEXT in; LABEL, SCORES out): the checkpoint's tokenizer "
                   "(NAME_tokenizer), a postprocess step (NAME_postprocess) and the engine's label file. A build's "
                   "candidate or report only.")
@click.option("--tokenizer", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="With --ensemble: tokenizer folder [default: the checkpoint's, recorded at build time].")
@handle_errors
def triton_cmd(
    source: Path,
    repo: Path,
    name: str | None,
    all_candidates: bool,
    num_instances: int | None,
    max_batch_size: int | None,
    preferred_batch_sizes: list[int] | None,
    backend: str,
    instance_count: int,
    instance_kind: str,
    max_queue_delay_us: int,
    overwrite: bool,
    ensemble: bool,
    tokenizer: Path | None,
) -> None:
    """Write REPO/NAME/config.pbtxt and the model file (REPO/NAME/1/model.onnx; model.xml + model.bin for an
    OpenVINO artifact), validated first.

    SOURCE is an exported model.onnx, a candidate folder, an export folder, or a build's OUT/report.json (its
    chosen candidate, or every candidate with --all-candidates). A build's or an export's candidate (its
    candidate.json) is written as it was measured: its artifact file, platform, instance kind and session settings
    (--instance-kind is then taken from the record).

    With --ensemble the text ensemble goes next to each engine model (see README "Serving text").

    Exit codes: 0 ok, 2 bad input, 6 the Triton config would not match the model (nothing written).
    """
    from prumux_compile.fsutil import require_writable_dir
    from prumux_compile.triton import write_repository

    sources = _sources(source, name, all_candidates)
    if (ensemble or tokenizer is not None) and any(info is None for _, _, info in sources):
        from prumux_compile.errors import InputError

        raise InputError("--ensemble / --tokenizer need a build's candidate folder or report.json (its record names "
                         "the checkpoint, the compiled length and the labels)")
    if ensemble:  # every tokenizer is found before anything is written
        from prumux_compile.sources import from_candidate

        for _, model_path, info in sources:
            from_candidate(info, model_path).tokenizer_dir(tokenizer)
    require_writable_dir(repo, what=f"model repository {repo}")  # before anything is created (field fault F27 in docs/field-faults.md)
    skipped = 0
    for model_name, model_path, info in sources:
        if info is not None:  # a build's candidate: its measured artifact, platform, kind and session settings
            from prumux_compile.driver import write_candidate_repository
            from prumux_compile.errors import InputError, TritonConfigError

            extra = {k: v for k, v in (("num_instances", num_instances), ("max_batch_size", max_batch_size),
                                       ("preferred_batch_sizes", preferred_batch_sizes)) if v is not None}
            try:
                target = write_candidate_repository(repo, info, model_path, name=model_name, backend=backend,
                                                    overwrite=overwrite, instance_count=instance_count,
                                                    max_queue_delay_us=max_queue_delay_us, **extra)
            except TritonConfigError as exc:
                if len(sources) == 1:
                    raise
                # --all-candidates: a candidate this variant cannot serve (an OpenVINO IR in the Python-backend
                # variant) is left out, said on stderr; the others are still written
                click.echo(f"skipped {info['id']}: {exc}", err=True)
                skipped += 1
                continue
            if target is None:
                note = ((info.get("artifact") or {}).get("deployment") or {}).get("note")
                why = f"backend {info.get('backend', 'unknown')} has no Triton platform" + (f" ({note})" if note else "")
                if len(sources) == 1:
                    raise InputError(f"candidate {info['id']}: {why}")
                click.echo(f"skipped {info['id']}: {why}", err=True)
                skipped += 1
                continue
            click.echo(str(target))
            if ensemble:
                from prumux_compile.sources import write_candidate_ensemble

                click.echo(str(write_candidate_ensemble(repo, info, model_path, target.name, tokenizer=tokenizer,
                                                        overwrite=overwrite, required=True)))
            continue
        target = write_repository(
            repo,
            name=model_name,
            model_path=model_path,
            platform="onnxruntime_onnx",
            num_instances=num_instances,
            max_batch_size=max_batch_size,
            preferred_batch_sizes=preferred_batch_sizes,
            instance_count=instance_count,
            instance_kind=instance_kind,
            backend=backend,
            overwrite=overwrite,
            max_queue_delay_us=max_queue_delay_us,
        )
        click.echo(str(target))
    if sources and skipped == len(sources):
        from prumux_compile.errors import TritonConfigError

        raise TritonConfigError(f"none of the {len(sources)} candidates can be written in this variant "
                                f"(--backend {backend}); see the lines above")
