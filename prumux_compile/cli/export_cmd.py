"""``prumux-compile export CKPT -o OUT``: checkpoint -> validated model.onnx / model.ort.onnx.

Only wires :func:`prumux_compile.export_job.export_checkpoint`; see that function for what is written. Errors print
one line on stderr and exit with the error's code (2 usage / bad checkpoint, 3 validation failed, 4 export or
engine build failed); a validation failure prints its per-case table on stderr first.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from prumux_compile.errors import PrumuxError


@click.command("export")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="Output directory to create (written atomically).")
@click.option("--seq-len", default=128, show_default=True, type=click.IntRange(min=2),
              help="Compiled sequence length of multiplexed models (tokens); ignored for N = 1 checkpoints.")
@click.option("--opset", default=17, show_default=True, type=click.IntRange(min=17), help="ONNX opset (>= 17).")
@click.option("--threads", default=None, type=click.IntRange(min=1),
              help="Intra-op threads of the ONNX Runtime sessions [default: ORT's choice].")
@click.option("--no-ort-optimize", is_flag=True, help="Do not write model.ort.onnx (ORT fusions).")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
def export_cmd(checkpoint: Path, out: Path, seq_len: int, opset: int, threads: int | None, no_ort_optimize: bool,
               force: bool) -> None:
    """Export CHECKPOINT to ONNX, fuse for ONNX Runtime, validate both against the reference."""
    from prumux_compile.export_job import export_checkpoint

    try:
        result = export_checkpoint(checkpoint, out, force=force, seq_len=seq_len, opset=opset, threads=threads,
                                   ort_optimize=not no_ort_optimize)
    except PrumuxError as err:
        table = getattr(err, "table", None)
        if table:
            click.echo(table, err=True)
        click.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    _summary(result)


def _summary(result) -> None:
    spec = result.spec
    head = "1 output: a regression head" if spec.num_labels == 1 else f"labels={spec.num_labels}"
    click.echo(f"exported {spec.family} (N={spec.num_instances}, {head}, "
               f"sequence <= {spec.max_seq_len}) to {result.out_dir}")
    if spec.ignored_inputs:
        click.echo(f"  inputs ignored by this family (accepted, unused): {', '.join(spec.ignored_inputs)}")
    for name, res in result.validation.items():
        click.echo(f"  {name:<15} validated: {len(res.cases)} cases, max |Δlogit| {res.max_abs_diff:.2e} "
                   f"({res.criteria.describe()})")
    fusion = result.artifact.report.get("fusion")
    if fusion:
        ops = ", ".join(f"{k} {v}" for k, v in fusion["fused_ops"].items()) or "none"
        click.echo(f"  fused ops: {ops}; attention fused in {len(fusion['fused_attention'])}/"
                   f"{len(fusion['expected_attention'])} layers"
                   + (f" (unfused: {fusion['unfused_layers']})" if fusion["unfused_layers"] else "")
                   + (f"; fusion tool failed: {fusion['error']}" if fusion["error"] else ""))
    art = result.artifact
    click.echo(f"  engine {art.backend} uses {Path(art.path).name} ({art.report.get('choice')}): "
               f"{art.report.get('why')}; sha256 {art.sha256}")
    click.echo("  files: " + ", ".join(sorted(result.files)))
    click.echo(f"  serve it as measured: prumux-compile triton {result.out_dir} -o REPO")
