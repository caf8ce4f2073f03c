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


@click.command("triton")
@click.argument("model_onnx", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", "repo", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Triton model repository directory (created if missing).")
@click.option("--name", required=True, help="Model name (directory under the repository).")
@click.option("--num-instances", type=click.IntRange(min=1), default=None,
              help="Mux width N (default: the model's prumux.num_instances metadata).")
@click.option("--max-batch-size", type=int, default=None,
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
@handle_errors
def triton_cmd(
    model_onnx: Path,
    repo: Path,
    name: str,
    num_instances: int | None,
    max_batch_size: int | None,
    preferred_batch_sizes: list[int] | None,
    backend: str,
    instance_count: int,
    instance_kind: str,
    max_queue_delay_us: int,
    overwrite: bool,
) -> None:
    """Write REPO/NAME/config.pbtxt and REPO/NAME/1/model.onnx for MODEL_ONNX, validated first.

    Exit codes: 0 ok, 2 bad input, 6 the Triton config would not match the model (nothing written).
    """
    from prumux_compile.triton import write_repository

    target = write_repository(
        repo,
        name=name,
        model_path=model_onnx,
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
