"""``prumux-compile serve REPO``: serve a model repository with the local Triton server (loopback only).

The ``tritonserver`` shipped in the ``nvidia-pytriton`` wheel has only the Python backend, so this serves
repositories written with ``--triton-backend python`` (ONNX Runtime inside Triton's Python backend). A
production Triton (NGC container) serves the default ``onnxruntime_onnx`` repositories directly:
``tritonserver --model-repository REPO``.
"""
from __future__ import annotations

import signal
import time
from pathlib import Path

import click

from prumux_compile.cli.common import handle_errors


def unservable_models(repo: Path) -> str | None:
    """Why the local server (Python backend only) cannot serve ``repo``, as one line, or None when it can.

    Every model's ``config.pbtxt`` must say ``backend: "python"`` (or ``platform: "ensemble"``); for any other (``onnxruntime_onnx`` or
    ``tensorrt_plan``, which need backends the ``nvidia-pytriton`` server lacks) the line names the models and
    the command that writes a servable repository from the same ``model.onnx``.
    """
    from prumux_compile.triton.config import load_config

    models = sorted(d for d in repo.iterdir() if d.is_dir() and (d / "config.pbtxt").is_file())
    if not models:
        return f"{repo}: no model in this repository (expected <name>/config.pbtxt)"
    other = []
    for d in models:
        cfg = load_config(d / "config.pbtxt")
        if cfg.backend != "python" and cfg.platform != "ensemble":  # Triton's core runs ensembles
            other.append((d, cfg.backend or cfg.platform or "unknown"))
    if not other:
        return None
    names = ", ".join(f"{m.name} ({b})" for m, b in other)
    kinds = sorted({b for _, b in other})
    head = (f"{repo}: {names} need{'s' if len(other) == 1 else ''} Triton's {' / '.join(kinds)} "
            f"backend{'s' if len(kinds) > 1 else ''}, but the local tritonserver (from nvidia-pytriton) has only the "
            f"Python backend, so it would start and then fail to load {'it' if len(other) == 1 else 'them'}.")
    full = f"serve this one with a full Triton: tritonserver --model-repository {repo}"
    onnx = next((d for d, _ in other if (d / "1" / "model.onnx").is_file()), None)
    if onnx is None:  # an OpenVINO IR or a TensorRT plan: the Python-backend variant runs ONNX files only
        return f"{head} The Python-backend variant serves ONNX models only: {full}"
    fix = (f"prumux-compile triton {onnx / '1' / 'model.onnx'} -o {repo.parent / (repo.name + '-python')} "
           f"--backend python --name {onnx.name}")
    return f"{head} Write a servable repository with: {fix} (or {full})"


@click.command("serve")
@click.argument("repo", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="HTTP port on 127.0.0.1.")
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8001, show_default=True, help="gRPC port on 127.0.0.1.")
@click.option("--timeout", "startup_timeout", type=float, default=60.0, show_default=True,
              help="Seconds to wait for the server to become ready.")
@handle_errors
def serve_cmd(repo: Path, http_port: int, grpc_port: int, startup_timeout: float) -> None:
    """Start tritonserver on REPO (127.0.0.1 only) and keep it running until Ctrl-C (or SIGTERM / SIGHUP: a clean
    stop, exit 0).

    The local server has only Triton's Python backend: a repository with another backend (the default
    onnxruntime_onnx one) is refused up front with the command that writes a servable one.
    """
    from prumux_compile.errors import InputError
    from prumux_compile.triton.server import TritonServer

    unservable = unservable_models(repo)
    if unservable:
        raise InputError(unservable)

    def _stop(signum, frame):  # SIGTERM / SIGHUP stop the server like Ctrl-C does
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    server = TritonServer(repo, http_port=http_port, grpc_port=grpc_port, startup_timeout_s=startup_timeout)
    try:
        server.start()
        server.wait_ready(startup_timeout)
        click.echo(f"serving {repo} — HTTP {server.http_url}, gRPC {server.grpc_url} (Ctrl-C stops)")
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
