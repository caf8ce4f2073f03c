"""``prumux-compile build CKPT [CKPT ...] -o OUT``: the main job (see :mod:`prumux_compile.driver`).

Exit codes: 0 ok, 2 usage / bad input, 3 validation failed, 4 engine build failed, 5 no candidate meets the
budget, 6 Triton config invalid, 7 candidates lost to cluster faults (every one, or any with --require-all).
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from prumux_compile.cli.common import fancy_output, handle_errors, stderr_is_terminal


def _int_list(ctx, param, value):
    if value is None:
        return None
    try:
        sizes = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter("expected comma-separated integers, e.g. 8,16") from None
    if not sizes or min(sizes) < 1:
        raise click.BadParameter("batch sizes must be >= 1")
    return sizes


def _hardware_map(ctx, param, values):
    """``("h200",)`` -> ``{"*": "h200"}``; ``("tensorrt=h200", "ort-cpu=xeon")`` -> per backend."""
    kinds: dict[str, str] = {}
    for v in values or ():
        backend, sep, kind = v.rpartition("=")
        backend = backend.strip() if sep else "*"
        if not kind.strip() or (sep and not backend):
            raise click.BadParameter(f"{v!r}: expected KIND or BACKEND=KIND")
        if backend in kinds:
            raise click.BadParameter(f"{v!r}: a hardware kind for {backend if backend != '*' else 'every backend'} "
                                     "was already given")
        kinds[backend] = kind.strip()
    return kinds or None


def _precision_list(ctx, param, value):
    if value is None:
        return None
    items = tuple(v.strip().lower() for v in value.split(",") if v.strip())
    if not items:
        raise click.BadParameter("expected a comma-separated list, e.g. fp32,int8")
    if len(items) > 1 and {"auto", "all"} & set(items):
        raise click.BadParameter("'auto' and 'all' stand alone")
    return None if items == ("auto",) else items


_BUDGET = click.FloatRange(0.0, 1.0)
#: Backends tried when --backend is not given (an unavailable one is skipped with a note).
DEFAULT_BACKENDS = ("ort-cpu", "openvino")


@click.command("build")
@click.argument("checkpoints", nargs=-1, required=True)
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Output folder (must not exist).")
@click.option("--max-accuracy-drop", type=_BUDGET, default=None,
              help="Budget: the task's metric (accuracy; Pearson r for one-output regression heads) may drop at most "
                   "this much (absolute, 0..1) below the baseline. Default 0.01. A drop larger than the baseline's "
                   "value is clamped (floor 0).")
@click.option("--min-accuracy", type=_BUDGET, default=None,
              help="Budget: absolute floor (0..1) of the task's metric (accuracy, or Pearson r).")
@click.option("--backend", "backends", multiple=True,
              help="Engine backend (repeatable): ort-cpu, openvino, ort-cuda, torch-cuda, tensorrt. Default ort-cpu, "
                   "then openvino where installed.")
@click.option("--precision", "precisions", callback=_precision_list, default=None,
              help="Engine precisions, comma-separated (fp32, bf16, int8; each checkpoint x backend x precision is a "
                   "candidate). Default 'auto': every precision this machine supports, each built by the first "
                   "default backend that builds it (ort-cpu: fp32, int8; openvino: bf16), or by every backend named "
                   "with --backend. 'all': every backend x precision pair.")
@click.option("--calibration-data", type=click.Path(path_type=Path), default=None,
              help="Texts (TSV/CSV/JSONL like --eval-data) for int8 calibration; default the --eval-data texts.")
@click.option("--seq-len", default=128, show_default=True, help="Compiled sequence length (tokens).")
@click.option("--batch-sizes", callback=_int_list, default=None,
              help="Benchmark batch sizes in sequences (comma-separated). Default 8·N per candidate.")
@click.option("--threads", default=2, show_default=True, help="Intra-op threads, same for engine and eager.")
@click.option("--rounds", default=5, show_default=True, help="Timed benchmark rounds (median reported).")
@click.option("--warmup", default=2, show_default=True, help="Untimed warm-up rounds.")
@click.option("--eval-data", type=click.Path(path_type=Path), default=None,
              help="Labelled data (TSV/CSV/JSONL: text, optional text pair, label) run through each engine. Labels: "
                   "class names or ids; real numbers for a one-output regression head (STS-B style).")
@click.option("--eval-unlabelled", is_flag=True,
              help="--eval-data has no labels: use its texts for teacher agreement (without this flag a file with "
                   "no label column is refused).")
@click.option("--eval-limit", type=int, default=None, help="Use at most this many examples of --eval-data.")
@click.option("--accuracy-table", type=click.Path(path_type=Path), default=None,
              help="CSV checkpoint,accuracy of recorded accuracies (used when no --eval-data is given).")
@click.option("--no-cache", is_flag=True, help="Rebuild everything instead of reusing cached candidates.")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Build cache (default $PRUMUX_CACHE_DIR or ~/.cache/prumux-compile; see 'prumux-compile cache').")
@click.option("--triton-repo", type=click.Path(path_type=Path), default=None,
              help="Also write the chosen model into this Triton model repository.")
@click.option("--triton-backend", type=click.Choice(["onnxruntime", "python"]), default="onnxruntime",
              show_default=True, help="Triton backend of the emitted model.")
@click.option("--no-triton-ensemble", is_flag=True,
              help="Do not write the text ensemble (TEXT in, LABEL and SCORES out; the checkpoint's tokenizer) "
                   "next to the chosen model in OUT/model_repository.")
@click.option("--executor", default="local", show_default=True,
              help="Where candidates run: local (this process, one after another), ray (a new local Ray instance: "
                   "parallel compiles on this machine) or ray:ADDRESS (a Ray cluster: ray:auto, ray:HOST:PORT, "
                   "ray:ray://HOST:10001). README 'Building on a cluster'.")
@click.option("--artifact-store", type=click.Path(path_type=Path), default=None,
              help="With Ray: a folder every node mounts at this path, through which candidate folders move "
                   "(default: Ray's object store).")
@click.option("--hardware", "hardware", multiple=True, callback=_hardware_map,
              help="With Ray: measure on nodes labelled prumux-hardware=KIND only; KIND for every backend or "
                   "BACKEND=KIND (repeatable).")
@click.option("--require-all", is_flag=True,
              help="With Ray: a candidate lost to worker faults (after one retry) fails the build (exit 7) instead "
                   "of being reported and left out.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists (atomically, after a successful build).")
@click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout.")
@click.option("--no-progress", is_flag=True, help="No progress display, progress lines or tables.")
@handle_errors
def build_cmd(checkpoints, out, max_accuracy_drop, min_accuracy, backends, precisions, calibration_data, seq_len,
              batch_sizes, threads, rounds, warmup, eval_data, eval_unlabelled, eval_limit, accuracy_table, no_cache,
              cache_dir, triton_repo, triton_backend, no_triton_ensemble, executor, artifact_store, hardware,
              require_all, force, as_json, no_progress):
    """Compile, validate, benchmark and select among CHECKPOINTS (checkpoint folders, or folders of them).

    Progress goes to stderr: on a terminal a live line (stage, "k of n candidates", elapsed time), otherwise one
    line per finished candidate and per stage.
    """
    from prumux_compile.cli.progress import build_progress
    from prumux_compile.driver import BuildOptions, build
    from prumux_compile.report.console import print_candidates

    fancy = fancy_output(no_progress) and not as_json
    if calibration_data is not None and not Path(calibration_data).is_file():
        from prumux_compile.errors import InputError

        raise InputError(f"{calibration_data}: calibration file not found")
    opts = BuildOptions(out=out, backends=tuple(backends) or DEFAULT_BACKENDS, backends_explicit=bool(backends),
                        precisions=precisions, calibration_data=calibration_data,
                        seq_len=seq_len, batch_sizes=batch_sizes, threads=threads, rounds=rounds, warmup=warmup,
                        eval_data=eval_data, eval_limit=eval_limit, accuracy_table=accuracy_table,
                        max_accuracy_drop=max_accuracy_drop, min_accuracy=min_accuracy, cache=not no_cache,
                        cache_dir=cache_dir, triton_repo=triton_repo, triton_backend=triton_backend, force=force,
                        eval_unlabelled=eval_unlabelled, triton_ensemble=not no_triton_ensemble,
                        executor=executor, artifact_store=artifact_store, hardware=hardware, require_all=require_all)
    if no_progress:
        report = build(list(checkpoints), opts)
    else:
        with build_progress(stderr_is_terminal()) as progress:
            opts.progress, opts.on_candidate = progress.stage, progress.candidate
            report = build(list(checkpoints), opts)
    if as_json:
        from prumux_compile.report.builder import _clean

        click.echo(json.dumps(_clean(report), indent=2))
        return
    if fancy or not no_progress:
        print_candidates(report, fancy)
    for w in report.get("warnings", []):
        click.echo(f"warning: {w}", err=True)
    sel = report["selection"]
    chosen = next(c for c in report["candidates"] if c["id"] == sel["chosen"])
    click.echo(f"chosen: {chosen['id']} (N={chosen['num_instances']}, sparsity {chosen['sparsity']:.3f}, "
               f"{chosen['throughput']:.1f} seq/s, {chosen['speedup_vs_eager']:.2f}x eager) — {sel['reason']}")
    click.echo(f"wrote {report['out']}/report.json, pareto.png, model_repository/")
