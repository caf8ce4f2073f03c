"""Write a Triton model repository entry ``<repo_dir>/<name>/{config.pbtxt, 1/model.*}``.

The config is validated against the model BEFORE anything is written (fault classes F12–F14 in docs/field-faults.md); the
entry is assembled in a temporary directory inside ``repo_dir`` and renamed into place, so a failure
leaves no partial model directory behind.
"""
from __future__ import annotations

from prumux_compile.fsutil import output_tempdir, refuse_inputs_inside

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from prumux_compile.errors import InputError, TritonConfigError
from prumux_compile.triton.config import (
    BACKENDS,
    PARAM_MAX_SEQ_LEN,
    PLATFORM_BACKENDS,
    build_model_config,
    config_to_text,
    default_max_batch_size,
    default_preferred_batch_sizes,
)
from prumux_compile.triton.interface import (
    ModelInterface,
    TensorSpec,
    _positive_meta,
    onnx_external_data_files,
    read_onnx_interface,
)
from prumux_compile.triton.validate import Profile, raise_problems, validate_config, validate_plan_config

#: Triton model names written here: letters, digits, ``_``, ``-``, ``.``; not starting with ``.``.
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
#: Version directory written (Triton's default version policy serves the latest).
VERSION = "1"
#: The Python-backend model file shipped with this package.
PYTHON_MODEL_SOURCE = Path(__file__).with_name("python_backend_model.py")


def _resolve_backend(platform: str, backend: str | None) -> str:
    if platform not in PLATFORM_BACKENDS:
        raise TritonConfigError(f"unknown platform {platform!r}; supported: {', '.join(PLATFORM_BACKENDS)}")
    if backend is None:
        return PLATFORM_BACKENDS[platform]
    if backend not in BACKENDS:
        raise TritonConfigError(f"unknown backend {backend!r}; supported: {', '.join(BACKENDS)}")
    if backend == "python" and platform != "onnxruntime_onnx":
        raise TritonConfigError("backend 'python' serves ONNX models only (platform onnxruntime_onnx)")
    if backend != "python" and PLATFORM_BACKENDS[platform] != backend:
        raise TritonConfigError(f"platform {platform!r} is served by backend {PLATFORM_BACKENDS[platform]!r}, not {backend!r}")
    return backend


def write_repository(
    repo_dir: str | Path,
    *,
    name: str,
    model_path: str | Path,
    platform: str = "onnxruntime_onnx",
    num_instances: int | None = None,
    max_batch_size: int | None = None,
    preferred_batch_sizes: Sequence[int] | None = None,
    instance_count: int = 1,
    instance_kind: str = "KIND_CPU",
    backend: str | None = None,
    overwrite: bool = False,
    max_queue_delay_us: int = 100,
    isolate_requests: bool = True,
    intra_op_num_threads: int | None = None,
    plan_inputs: Sequence[TensorSpec] | None = None,
    plan_outputs: Sequence[TensorSpec] | None = None,
    plan_profiles: Sequence[Profile] | None = None,
    graph_optimization_level: str | None = None,
    inter_op_num_threads: int | None = None,
    gpu_accelerators: Sequence[dict] = (),
    interface_onnx: str | Path | None = None,
    backend_parameters: dict | None = None,
) -> Path:
    """Write ``repo_dir/<name>/config.pbtxt`` and ``repo_dir/<name>/1/model.onnx`` (or ``model.plan``).

    Args:
        repo_dir: Triton model repository (created if missing).
        name: model name = directory name (``[A-Za-z0-9_][A-Za-z0-9_.-]*``).
        model_path: the ONNX file (platform ``onnxruntime_onnx``) or TensorRT plan (``tensorrt_plan``).
            ONNX external-data files beside it are copied too.
        platform: ``"onnxruntime_onnx"``, ``"tensorrt_plan"`` or ``"openvino"`` (an OpenVINO IR).
        num_instances: N; default: ONNX metadata ``prumux.num_instances`` (an explicit value overrides it).
        max_batch_size: rows per batch, a multiple of N; default: a plan's shared profile max, else the ONNX
            metadata ``prumux.max_batch`` rounded down to a multiple of N, else 8·N.
        preferred_batch_sizes: multiples of N ≤ max; default N·2^k up to the max, plus the max.
        instance_count / instance_kind: ``instance_group`` (``KIND_CPU``, ``KIND_GPU`` or ``KIND_AUTO``).
        backend: ``"onnxruntime"``, ``"tensorrt"`` or ``"python"`` (``1/model.py`` serving the ONNX file with
            onnxruntime CPU inside Triton's Python backend); default: the platform's native backend.
        overwrite: replace an existing ``repo_dir/<name>`` (atomically swapped); otherwise refuse.
        max_queue_delay_us: dynamic batcher queue delay in microseconds.
        isolate_requests: python backend only, see :func:`prumux_compile.triton.config.build_model_config`.
        intra_op_num_threads / inter_op_num_threads / graph_optimization_level / gpu_accelerators: the ONNX
            Runtime session settings the model was measured under (see
            :func:`~prumux_compile.triton.config.build_model_config`); the build driver passes its artifact's
            :class:`~prumux_compile.engines.base.Deployment` here.
        plan_inputs / plan_outputs / plan_profiles: required for ``tensorrt_plan``: the plan's bindings
            (full shapes, batch axis first, None/-1 dynamic) and optimization profiles
            ``[{input: (min, opt, max)}]``.
        interface_onnx: required for ``openvino`` (``model_path`` is an IR ``model.xml``; ``model.bin`` beside it
            is copied too): the ONNX graph the IR was made from, whose interface the config is written from and
            checked against. An openvino config has ``max_batch_size`` 0 unless given (``config.pbtxt`` comment).
        backend_parameters: openvino: the backend's ``parameters`` (e.g. ``INFERENCE_NUM_THREADS``, ``HINT_BF16``).

    Returns:
        The model directory ``repo_dir/<name>``.

    Raises:
        TritonConfigError: (exit 6) the config would not match the model (nothing is written), the model
            directory exists and ``overwrite`` is False, or an option is invalid.
        InputError: (exit 2) the model file is missing/unreadable, N is unknown, plan bindings are missing, or
            the model file lies inside the model directory ``overwrite`` would replace.
    """
    repo_dir = Path(repo_dir)
    model_path = Path(model_path)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise TritonConfigError(f"invalid Triton model name {name!r}: use letters, digits, '_', '-', '.'")
    backend = _resolve_backend(platform, backend)
    if not model_path.is_file():
        raise InputError(f"model file not found: {model_path}")
    if instance_count < 1:
        raise TritonConfigError(f"instance_count must be >= 1, got {instance_count}")
    if backend == "python" and instance_kind == "KIND_GPU":
        raise TritonConfigError("the Python-backend variant runs ONNX Runtime on the CPU; it cannot serve a GPU "
                                "(KIND_GPU) artifact as measured: use the onnxruntime backend")

    is_plan = platform == "tensorrt_plan"
    is_ir = platform == "openvino"
    if is_ir:
        if interface_onnx is None:
            raise InputError("an OpenVINO IR needs interface_onnx (the ONNX graph it was made from) to write its config")
        weights = model_path.with_suffix(".bin")
        if not weights.is_file():
            raise InputError(f"{model_path}: its weights {weights.name} are missing")
        model = read_onnx_interface(interface_onnx)
        extra_files = []
        if max_batch_size is None:
            max_batch_size = 0
            preferred_batch_sizes = []
    elif is_plan:
        if plan_inputs is None or plan_outputs is None or plan_profiles is None:
            raise InputError("a TensorRT plan needs plan_inputs, plan_outputs and plan_profiles to write its config")
        model = ModelInterface(inputs=tuple(plan_inputs), outputs=tuple(plan_outputs))
        extra_files: list[str] = []
    else:
        model = read_onnx_interface(model_path)
        extra_files = onnx_external_data_files(model_path)

    if num_instances is not None and num_instances < 1:
        raise TritonConfigError(f"num_instances must be >= 1, got {num_instances}")
    if num_instances is not None and model.num_instances is not None and num_instances != model.num_instances:
        raise TritonConfigError(
            f"{model_path}: num_instances {num_instances} contradicts the model's prumux.num_instances "
            f"{model.num_instances}; batch sizes must be multiples of the model's real N (drop the option)"
        )
    n = num_instances if num_instances is not None else model.num_instances
    if n is None:
        raise InputError(f"{model_path}: no prumux.num_instances metadata; pass num_instances")
    if n < 1:
        raise TritonConfigError(f"num_instances must be >= 1, got {n}")
    if max_batch_size is None:
        try:
            plan_max = {int(s[2][0]) for p in plan_profiles for s in p.values()} if is_plan else set()
        except (TypeError, ValueError, IndexError, AttributeError):
            plan_max = set()  # malformed profiles: the validator names the problem
        if len(plan_max) == 1:
            max_batch_size = plan_max.pop()
        else:  # no profiles, or disagreeing ones: the validator reports it
            max_batch_size = default_max_batch_size(n, model.max_batch)
    if preferred_batch_sizes is None:
        preferred_batch_sizes = default_preferred_batch_sizes(n, max_batch_size)

    cfg = build_model_config(
        name=name,
        inputs=model.inputs,
        outputs=model.outputs,
        num_instances=n,
        max_batch_size=max_batch_size,
        preferred_batch_sizes=preferred_batch_sizes,
        platform=platform,
        backend=backend,
        instance_count=instance_count,
        backend_parameters=backend_parameters,
        instance_kind=instance_kind,
        max_queue_delay_us=max_queue_delay_us,
        isolate_requests=isolate_requests,
        intra_op_num_threads=intra_op_num_threads,
        max_seq_len=_positive_meta(model.metadata, PARAM_MAX_SEQ_LEN, str(model_path)),
        graph_optimization_level=graph_optimization_level,
        inter_op_num_threads=inter_op_num_threads,
        gpu_accelerators=gpu_accelerators,
    )
    if is_plan:
        problems = validate_plan_config(
            cfg, inputs=model.inputs, outputs=model.outputs, profiles=plan_profiles, num_instances=n
        )
    else:
        problems = validate_config(cfg, model, num_instances=n)
    raise_problems(problems, str(model_path))

    target = repo_dir / name
    if target.exists() and not overwrite:
        raise TritonConfigError(f"model directory {target} exists; pass overwrite=True (--overwrite) to replace it")
    # replacing the entry must not delete the file it is written from (e.g. a candidate folder as REPO/NAME)
    refuse_inputs_inside(target, {"the model file": model_path}, flag="--overwrite")
    if is_ir:
        files = {"model.xml": model_path, "model.bin": model_path.with_suffix(".bin")}
    else:
        files = {("model.plan" if is_plan else "model.onnx"): model_path}
    for rel in extra_files:
        src = model_path.parent / rel
        if not src.is_file():
            raise InputError(f"{model_path}: external data file {rel!r} not found")
        files[rel] = src
    _write_atomically(repo_dir, target, config_to_text(cfg), files, python_model=backend == "python")
    return target


def _write_atomically(repo_dir: Path, target: Path, config_text: str, files: dict[str, Path], *, python_model: bool) -> None:
    created_repo = not repo_dir.exists()
    repo_dir.mkdir(parents=True, exist_ok=True)
    tmp = output_tempdir(f".{target.name}.tmp-", repo_dir)
    old: Path | None = None
    try:
        version_dir = tmp / VERSION
        version_dir.mkdir()
        for rel, src in files.items():
            dst = version_dir / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        if python_model:
            shutil.copyfile(PYTHON_MODEL_SOURCE, version_dir / "model.py")
        (tmp / "config.pbtxt").write_text(config_text, encoding="utf-8")
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=repo_dir))
            os.rename(target, old / "model")
        os.rename(tmp, target)
    except BaseException:
        if old is not None and (old / "model").exists() and not target.exists():
            os.rename(old / "model", target)  # put the previous entry back
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        if created_repo:
            try:
                repo_dir.rmdir()
            except OSError:
                pass
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
