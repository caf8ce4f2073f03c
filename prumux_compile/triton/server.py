"""Start and stop a local Triton Inference Server on loopback (for tests, the CLI and the README).

The server binary comes from the ``nvidia-pytriton`` wheel, which ships ``tritonserver``, the Python
backend (``libtriton_python.so``) and one ``triton_python_backend_stub`` per Python version, with their
shared libraries in ``nvidia_pytriton.libs``. That build has NO onnxruntime or TensorRT backend, so it
serves the ``backend="python"`` repositories this package writes (ONNX Runtime runs inside the stub).

Launching follows what pytriton itself does (``pytriton/triton.py``, ``server/triton_server.py``): a
private backend directory holding the Python backend plus the stub for the running interpreter's
version, ``LD_LIBRARY_PATH`` extended with the wheel's libs, and ``PATH`` starting with the running
interpreter's ``bin``. In addition the running interpreter's ``libpython`` directory goes first on
``LD_LIBRARY_PATH`` and its site-packages on ``PYTHONPATH`` so that the stub embeds the same Python and
sees the same packages (numpy, onnxruntime) as the caller.

The server listens on 127.0.0.1 only, runs in its own process group and :meth:`TritonServer.stop`
kills that whole group (stubs included).
"""
from __future__ import annotations

import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from prumux_compile.errors import PrumuxError

LOOPBACK = "127.0.0.1"


class TritonServerError(PrumuxError):
    """The local Triton server cannot be found, started or made ready (exit code 2)."""

    exit_code = 2


@dataclass(frozen=True)
class TritonDistribution:
    """Files of the ``tritonserver`` shipped by ``nvidia-pytriton``.

    Attributes:
        binary: the ``tritonserver`` executable.
        lib_dir: its shared libraries (``nvidia_pytriton.libs``).
        python_backend_dir: ``libtriton_python.so`` + ``triton_python_backend_utils.py``.
        stub: ``triton_python_backend_stub`` built for the running Python version.
    """

    binary: Path
    lib_dir: Path
    python_backend_dir: Path
    stub: Path


def find_distribution() -> TritonDistribution:
    """Locate the ``tritonserver`` of the installed ``nvidia-pytriton`` wheel.

    Raises:
        TritonServerError: pytriton is not installed, or a file (binary, Python backend, the stub for
            this Python version) is missing.
    """
    try:
        import importlib.util

        spec = importlib.util.find_spec("pytriton")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise TritonServerError("nvidia-pytriton is not installed (pip install '.[triton]'); no tritonserver binary")
    root = Path(list(spec.submodule_search_locations)[0])
    dist = root / "tritonserver"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    lib_dir = root.parent / "nvidia_pytriton.libs"
    if not lib_dir.is_dir():  # editable pytriton installs keep them here
        lib_dir = dist / "external_libs"
    found = TritonDistribution(
        binary=dist / "bin" / "tritonserver",
        lib_dir=lib_dir,
        python_backend_dir=dist / "backends" / "python",
        stub=dist / "python_backend_stubs" / version / "triton_python_backend_stub",
    )
    for label, path in (
        ("tritonserver binary", found.binary),
        ("Python backend", found.python_backend_dir / "libtriton_python.so"),
        (f"Python backend stub for Python {version}", found.stub),
    ):
        if not path.exists():
            raise TritonServerError(f"{label} not found at {path}")
    return found


def probe(timeout_s: float = 30.0) -> str | None:
    """Why the local ``tritonserver`` cannot run here, or None when ``tritonserver --help`` works.

    Runs the binary with the same library path as :class:`TritonServer` (bounded by ``timeout_s``).
    """
    try:
        dist = find_distribution()
    except TritonServerError as exc:
        return str(exc)
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = _prepend(env.get("LD_LIBRARY_PATH"), [str(dist.lib_dir)])
    try:
        done = subprocess.run(
            [str(dist.binary), "--help"], env=env, capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{dist.binary} cannot run: {type(exc).__name__}: {exc}"
    text = (done.stdout + done.stderr).decode("utf-8", errors="replace")
    if "Usage: tritonserver" not in text:  # tritonserver --help exits 1 even when it works
        last = text.strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
        return f"{dist.binary} --help failed: {last[0][:300]}"
    return None


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _python_env_paths() -> tuple[list[str], list[str]]:
    """(libpython directories, site-packages directories) of the running interpreter."""
    libs: list[str] = []
    libdir = sysconfig.get_config_var("LIBDIR")
    ldlib = sysconfig.get_config_var("LDLIBRARY") or ""
    if libdir and ldlib.endswith(".so") and Path(libdir, ldlib).exists():
        libs.append(libdir)
    sites = [p for p in site.getsitepackages() if Path(p).is_dir()]
    user = site.getusersitepackages()
    if site.ENABLE_USER_SITE and isinstance(user, str) and Path(user).is_dir():
        sites.append(user)
    return libs, sites


def _prepend(value: str | None, items: Sequence[str]) -> str:
    parts = [*items, *(value.split(os.pathsep) if value else [])]
    return os.pathsep.join(dict.fromkeys(p for p in parts if p))


class TritonServer:
    """A ``tritonserver`` process serving one model repository on 127.0.0.1.

    Usage::

        with TritonServer(repo) as server:   # starts, waits until ready (bounded)
            client = tritonclient.http.InferenceServerClient(server.http_url)

    Args:
        model_repository: directory with ``<name>/config.pbtxt`` entries.
        http_port / grpc_port: ports on 127.0.0.1; None picks free ones (retried on a start race).
        startup_timeout_s: bound on the wait for readiness, seconds.
        log_verbose: ``--log-verbose`` level.
        extra_args: more ``tritonserver`` arguments.

    Raises:
        TritonServerError: from :meth:`start` when the binary is missing, exits early, or is not ready
            within ``startup_timeout_s`` (the message ends with the server log's last line).
    """

    def __init__(
        self,
        model_repository: str | Path,
        *,
        http_port: int | None = None,
        grpc_port: int | None = None,
        startup_timeout_s: float = 60.0,
        log_verbose: int = 0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        self._fixed_ports = http_port is not None or grpc_port is not None
        self.http_port = http_port or 0
        self.grpc_port = grpc_port or 0
        self.startup_timeout_s = float(startup_timeout_s)
        self.log_verbose = int(log_verbose)
        self.extra_args = list(extra_args)
        self._proc: subprocess.Popen | None = None
        self._workdir: Path | None = None
        self._log_path: Path | None = None
        self._saved_logs = ""
        self._shm_prefix = ""

    # ------------------------------------------------------------------ properties
    @property
    def http_url(self) -> str:
        """``127.0.0.1:<http_port>`` (tritonclient.http URL form, no scheme)."""
        return f"{LOOPBACK}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """``127.0.0.1:<grpc_port>``."""
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def pid(self) -> int | None:
        """Process id of the running server (also its process-group id), or None."""
        return self._proc.pid if self._proc is not None else None

    def logs(self) -> str:
        """Everything the server wrote to stdout/stderr so far ('' before start)."""
        if self._log_path is None or not self._log_path.exists():
            return self._saved_logs
        return self._log_path.read_text(encoding="utf-8", errors="replace")

    # ------------------------------------------------------------------ lifecycle
    def _prepare(self, dist: TritonDistribution) -> tuple[list[str], dict[str, str]]:
        assert self._workdir is not None
        backend_dir = self._workdir / "backends"
        py = backend_dir / "python"
        if not py.exists():
            py.mkdir(parents=True)
            for item in dist.python_backend_dir.iterdir():
                if item.is_file():
                    shutil.copy2(item, py / item.name)
            shutil.copy2(dist.stub, py / "triton_python_backend_stub")
        libs, sites = _python_env_paths()
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = _prepend(env.get("LD_LIBRARY_PATH"), [*libs, str(dist.lib_dir)])
        env["PYTHONPATH"] = _prepend(env.get("PYTHONPATH"), sites)
        env["PATH"] = _prepend(env.get("PATH"), [str(Path(sys.executable).parent)])
        env.pop("PYTHONHOME", None)
        shm_prefix = self._shm_prefix
        cmd = [
            str(dist.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backend_dir}",
            f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
            f"--http-address={LOOPBACK}",
            f"--http-port={self.http_port}",
            f"--grpc-address={LOOPBACK}",
            f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false",
            "--allow-sagemaker=false",
            "--allow-vertex-ai=false",
            "--strict-readiness=true",
            "--exit-on-error=true",
            f"--log-verbose={self.log_verbose}",
            *self.extra_args,
        ]
        return cmd, env

    def start(self) -> "TritonServer":
        """Start the server and wait until ``/v2/health/ready`` answers 200 (bounded).

        Returns:
            self.

        Raises:
            TritonServerError: see the class docstring. The process is stopped before raising.
        """
        if self._proc is not None:
            return self
        dist = find_distribution()
        if not self.model_repository.is_dir():
            raise TritonServerError(f"model repository not found: {self.model_repository}")
        self._workdir = Path(tempfile.mkdtemp(prefix="prumux-triton-"))
        self._shm_prefix = f"prumux{os.getpid()}x" + "".join(c for c in self._workdir.name[-8:] if c.isalnum())
        attempts = 1 if self._fixed_ports else 3
        last: TritonServerError | None = None
        for _ in range(attempts):
            if not self._fixed_ports:
                self.http_port, self.grpc_port = free_port(), free_port()
                while self.grpc_port == self.http_port:
                    self.grpc_port = free_port()
            cmd, env = self._prepare(dist)
            self._log_path = self._workdir / f"tritonserver-{self.http_port}.log"
            with open(self._log_path, "wb") as log:
                self._proc = subprocess.Popen(
                    cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
                )
            try:
                self.wait_ready(self.startup_timeout_s)
                return self
            except TritonServerError as exc:
                last = exc
                log_text = self.logs()
                self._kill()
                if "address already in use" not in log_text.lower():
                    break
        self.stop()
        assert last is not None
        raise last

    def is_ready(self) -> bool:
        """True when the process runs and ``GET /v2/health/ready`` returns 200."""
        if self._proc is None or self._proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout_s: float) -> None:
        """Poll readiness every 0.2 s for at most ``timeout_s`` seconds.

        Raises:
            TritonServerError: the process exited, or it was not ready in time.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc is None:
                raise TritonServerError("tritonserver is not started")
            code = self._proc.poll()
            if code is not None:
                raise TritonServerError(f"tritonserver exited with code {code}: {self._log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.2)
        raise TritonServerError(f"tritonserver not ready after {timeout_s:.0f} s: {self._log_tail()}")

    def _log_tail(self) -> str:
        lines = [ln.strip() for ln in self.logs().splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("E") or "error" in ln.lower()]
        return (errors or lines or ["(no output)"])[-1][:500]

    def _kill(self, timeout_s: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:  # the server alone first: it shuts its Python stubs down and frees their shared memory
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        try:  # whatever is left of the group (stubs); the group id is the server's pid
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not fail
            pass
        self._remove_shared_memory()

    def _remove_shared_memory(self) -> None:
        """Delete Python-backend shared-memory regions a killed server left in /dev/shm (our prefix only)."""
        shm = Path("/dev/shm")
        if self._shm_prefix and shm.is_dir():
            for region in shm.glob(f"{self._shm_prefix}*"):
                try:
                    region.unlink()
                except OSError:
                    pass

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server's process group (SIGTERM, then SIGKILL after ``timeout_s``) and delete the
        working directory. Safe to call more than once."""
        self._kill(timeout_s)
        self._saved_logs = self.logs()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
