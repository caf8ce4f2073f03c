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


@click.command("serve")
@click.argument("repo", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="HTTP port on 127.0.0.1.")
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8001, show_default=True, help="gRPC port on 127.0.0.1.")
@click.option("--timeout", "startup_timeout", type=float, default=60.0, show_default=True,
              help="Seconds to wait for the server to become ready.")
@handle_errors
def serve_cmd(repo: Path, http_port: int, grpc_port: int, startup_timeout: float) -> None:
    """Start tritonserver on REPO (127.0.0.1 only) and keep it running until Ctrl-C."""
    from prumux_compile.errors import InputError
    from prumux_compile.triton.server import TritonServer

    if not any((d / "config.pbtxt").is_file() for d in repo.iterdir() if d.is_dir()):
        raise InputError(f"{repo}: no model in this repository (expected <name>/config.pbtxt)")
    platforms = [d.name for d in repo.iterdir() if (d / "config.pbtxt").is_file()
                 and 'backend: "python"' not in (d / "config.pbtxt").read_text()]
    if platforms:
        click.echo(f"warning: {', '.join(platforms)} need an onnxruntime/TensorRT backend, which this local server "
                   "lacks; write them with --backend python (prumux-compile triton ... --backend python)", err=True)

    def _stop(signum, frame):  # SIGTERM / SIGHUP stop the server like Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGHUP, _stop)
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
