"""Where ``build`` runs its candidates: in this process, one after another (:class:`LocalExecutor`, the default), or
spread over a Ray cluster (:class:`RayExecutor`, ``build --executor ray[:ADDRESS]``).

The driver hands an executor an opaque list of :class:`CandidateTask` — each carries the positional arguments of
the driver's stage functions, which the executor passes on without looking inside — and the :class:`Stages`
themselves. An executor returns one :class:`Outcome` per task, in task order.

On Ray (README "Building on a cluster"), a candidate is two tasks:

* **compile** (``Stages.compile``: IR passes, ``model.onnx``, the engine, its validation against the float64
  reference): ``num_cpus`` = the build's threads, one GPU for CUDA backends, and a sliver
  (:data:`RayExecutor.COMPILE_SHARE`) of the node's ``prumux_bench_slot`` resource, so any number of compiles
  share a node, but never with a benchmark;
* **measure** (``Stages.measure``: engine and eager PyTorch timed in interleaved rounds, predictions): the whole
  ``prumux_bench_slot`` (1 per node), so a node times one candidate at a time and compiles nothing meanwhile;
  the eager baseline is timed in the same task, on the same node, as its engine.

A candidate that targets a hardware kind (``BuildOptions.hardware``) runs both tasks only on nodes labelled
``prumux-hardware=<kind>``. The candidate folder goes from the compile task to the measure task and back to the
driver as bytes through Ray's object store, or through a folder every node mounts (``--artifact-store``). The
build cache stays on the driver: looked up before a candidate is dispatched, filled when it comes back.

Faults: a task whose worker process or node dies (a Ray system error) loses its attempt; the candidate is run
again from its compile stage, on another eligible node when there is one; after :data:`RayExecutor.ATTEMPTS`
lost attempts it is reported failed with the reasons (:class:`Outcome`). An exception raised by the candidate's
own code (a validation failure, a bad checkpoint) is not retried: it stops the build with its own exit code, as
it does with the local executor.

``ray`` is imported by :meth:`RayExecutor.run` only; nothing else here needs it.
"""
from __future__ import annotations

import io
import logging
import os
import re
import shutil
import socket
import tarfile
import tempfile
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from prumux_compile.errors import InputError, PrumuxError

__all__ = ["CandidateTask", "Stages", "Outcome", "Executor", "LocalExecutor", "RayExecutor", "CrashInjection",
           "make_executor", "this_node", "BENCH_RESOURCE", "HARDWARE_LABEL"]

#: The custom Ray resource that serialises timings on a node: every node that builds gets exactly 1.
BENCH_RESOURCE = "prumux_bench_slot"
#: The Ray node label that names a node's hardware kind (``ray start --labels prumux-hardware=<kind>``).
HARDWARE_LABEL = "prumux-hardware"


@dataclass(frozen=True)
class CandidateTask:
    """One candidate for an executor.

    Attributes:
        id: the candidate id (report, progress).
        args: positional arguments of every function of :class:`Stages` (opaque to the executor).
        cand_dir: where the finished candidate folder must be on the driver (created by the executor).
        device: ``"cpu"`` or ``"cuda"``: where its engine runs (a ``"cuda"`` task takes one GPU on Ray).
        threads: intra-op threads it uses (its Ray tasks ask for as many CPUs).
        hardware: the hardware kind it must be compiled and measured on (Ray node label
            :data:`HARDWARE_LABEL`), or None for any node.
    """

    id: str
    args: tuple
    cand_dir: Path
    device: str = "cpu"
    threads: int = 1
    hardware: str | None = None


@dataclass(frozen=True)
class Stages:
    """The driver's functions an executor calls; each takes ``*CandidateTask.args`` and the keywords shown.

    Attributes:
        run: ``(*args, cand_dir) -> info``: the whole candidate in this process, build cache included.
        lookup: ``(*args, cand_dir) -> (info | None, key | None)``: the build cache, on the driver: a hit is
            copied into ``cand_dir`` and returned; ``key`` names the entry to fill later (None: no cache).
        compile: ``(*args, cand_dir, where) -> state``: passes, export, engine, validation into ``cand_dir``;
            ``state`` is picklable and small.
        measure: ``(state, cand_dir, where) -> info``: benchmark and predictions; ``cand_dir`` holds the
            compile stage's files (possibly copied to another node).
        store: ``(*args, cand_dir, key) -> str | None``: the finished folder into the build cache, on the driver
            (a message when it could not be stored).
    """

    run: Callable[..., dict]
    lookup: Callable[..., tuple]
    compile: Callable[..., Any]
    measure: Callable[..., dict]
    store: Callable[..., None]


@dataclass
class Outcome:
    """What became of one task.

    Attributes:
        id: the candidate id.
        info: its record (``candidate.json``), or None when it was lost.
        attempts: the attempts lost to worker or node faults: ``{"attempt", "stage", "node", "error"}`` each
            (``node`` as :func:`this_node` describes it, None when the task died before it started).
        error: why it was lost (None when ``info`` is set).
    """

    id: str
    info: dict | None
    attempts: list[dict] = field(default_factory=list)
    error: str | None = None


def this_node(*, node_id: str | None = None, hardware: str | None = None, device: str = "cpu") -> dict:
    """Where this process runs, as a report records it (``compiled_on`` / ``measured_on``).

    Returns:
        ``{"hostname", "node_id" (the Ray node id, None outside Ray), "cpu_model", "gpu" (the CUDA device's
        name when ``device`` is ``"cuda"``, else None), "hardware" (the node's :data:`HARDWARE_LABEL`)}``.
    """
    from prumux_compile.bench.timing import cpu_model_name

    gpu = None
    if device.startswith("cuda"):
        try:
            import torch

            gpu = torch.cuda.get_device_name(torch.cuda.current_device())
        except Exception:  # noqa: BLE001 - a record, never a failure
            gpu = None
    return {"hostname": socket.gethostname(), "node_id": node_id, "cpu_model": cpu_model_name(), "gpu": gpu,
            "hardware": hardware}


Notify = Callable[[int, int, str, "dict | None"], None]


class Executor(ABC):
    """Runs a build's candidates. ``spec`` is the ``--executor`` value that makes it; ``remote`` is True when
    candidates run in other processes (then backends are checked where they run, not on the driver)."""

    spec: str = "local"
    remote: bool = False

    @abstractmethod
    def run(self, tasks: Sequence[CandidateTask], stages: Stages, *, notify: Notify | None = None,
            log: Callable[[str], None] | None = None) -> list[Outcome]:
        """Run every task; one :class:`Outcome` per task, in task order.

        Args:
            notify: called ``(done, total, id, None)`` when a candidate starts and ``(done, total, id, info)``
                when it is finished (``done`` counts finished candidates).
            log: one-line progress messages.

        Raises:
            whatever a candidate's own code raises (PrumuxError subclasses carry the exit code).
        """

    def describe(self) -> dict:
        """The report's ``executor`` section (without ``failed`` / ``retried``, which the driver adds)."""
        return {"kind": self.spec}


class LocalExecutor(Executor):
    """Every candidate in this process, one after another (``Stages.run``): the build as it always ran."""

    spec = "local"
    remote = False

    def run(self, tasks, stages, *, notify=None, log=None):
        notify = notify or (lambda *a: None)
        outcomes: list[Outcome] = []
        for task in tasks:
            if task.hardware is not None:
                raise InputError(f"{task.id}: hardware kind {task.hardware!r} selects cluster nodes; it needs "
                                 "--executor ray")
            notify(len(outcomes), len(tasks), task.id, None)
            info = stages.run(*task.args, cand_dir=task.cand_dir)
            outcomes.append(Outcome(task.id, info))
            notify(len(outcomes), len(tasks), task.id, info)
        return outcomes


def make_executor(spec: str | Executor | None, *, artifact_store: str | Path | None = None) -> Executor:
    """The executor ``--executor`` names: ``local`` (default), ``ray`` (a new local Ray instance) or
    ``ray:ADDRESS`` (``auto``, ``HOST:PORT``, ``ray://HOST:10001``); an :class:`Executor` is returned as is.

    Raises:
        InputError: another value, or ``artifact_store`` without Ray.
    """
    if isinstance(spec, Executor):
        return spec
    if spec in (None, "", "local"):
        if artifact_store is not None:
            raise InputError("--artifact-store moves candidates between cluster nodes; it needs --executor ray")
        return LocalExecutor()
    if spec == "ray":
        return RayExecutor(None, artifact_store=artifact_store)
    if isinstance(spec, str) and spec.startswith("ray:") and spec[4:].strip():
        return RayExecutor(spec[4:].strip(), artifact_store=artifact_store)
    raise InputError(f"--executor {spec!r}: expected 'local', 'ray' (a new local Ray instance) or 'ray:ADDRESS' "
                     "(ray:auto, ray:HOST:PORT, ray:ray://HOST:10001)")


# ---------------------------------------------------------------------------------------------- Ray
@dataclass(frozen=True)
class CrashInjection:
    """Fault injection for the executor's tests: the worker that runs ``stage`` (``"compile"`` or ``"measure"``)
    of candidate ``candidate`` exits abruptly (``os._exit``, as a killed process would) the first ``times`` times,
    counted by marker files in ``markers`` (a folder every worker can write).

    Only a :class:`RayExecutor` built by a test carries them; the CLI never does.
    """

    candidate: str
    stage: str
    markers: Path
    times: int = 1

    def maybe_crash(self, cid: str, stage: str) -> None:
        if cid != self.candidate or stage != self.stage:
            return
        markers = Path(self.markers)
        markers.mkdir(parents=True, exist_ok=True)
        prefix = f"crash-{_safe_name(cid)}-{stage}-"
        done = len(list(markers.glob(prefix + "*")))
        if done >= self.times:
            return
        (markers / f"{prefix}{done}-{os.getpid()}").touch()
        os._exit(70)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@+-]", "_", text)


def _files_of(folder: Path) -> list[Path]:
    """The regular files directly inside ``folder`` (a candidate folder has no sub-folders)."""
    return sorted(f for f in Path(folder).iterdir() if f.is_file())


class _ObjectStoreTransfer:
    """Candidate folders as bytes (an uncompressed tar of its files) in Ray's object store."""

    description = "Ray object store"

    def put(self, folder: Path, name: str) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for f in _files_of(folder):
                tar.add(f, arcname=f.name, recursive=False)
        return buf.getvalue()

    def get(self, handle: bytes, dest: Path) -> None:
        Path(dest).mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(handle), mode="r") as tar:
            tar.extractall(dest, filter="data")

    def cleanup(self) -> None:
        pass


class _SharedDirTransfer:
    """Candidate folders through a folder every node mounts at the same path (``--artifact-store``): each is
    written under a temporary name and renamed, so a reader never sees a half-written one."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.description = str(self.root.parent)

    def _check(self) -> None:
        if not self.root.is_dir():
            raise InputError(f"--artifact-store {self.root.parent}: {self.root} is not visible on node "
                             f"{socket.gethostname()}; mount the store at the same path on every node")

    def put(self, folder: Path, name: str) -> str:
        self._check()
        name = _safe_name(name)
        tmp = self.root / f".tmp-{name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for f in _files_of(folder):
            shutil.copy2(f, tmp / f.name)
        dst = self.root / name
        shutil.rmtree(dst, ignore_errors=True)
        tmp.rename(dst)
        return name

    def get(self, handle: str, dest: Path) -> None:
        self._check()
        Path(dest).mkdir(parents=True, exist_ok=True)
        for f in _files_of(self.root / handle):
            shutil.copy2(f, Path(dest) / f.name)

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass(frozen=True)
class _TaskContext:
    """What a Ray task needs besides the stage function and its input."""

    cid: str
    attempt: int
    cwd: str
    transfer: Any
    ledger: Any
    device: str
    crashes: tuple = ()


def _run_stage(kind: str, fn: Callable, payload: Any, ctx: _TaskContext):
    """The body of every Ray task: announce the node to the ledger, run one stage in a fresh node-local folder
    (inputs read relative to the driver's working directory), hand the folder on through the transfer.

    Returns:
        compile: ``(state, handle)``; measure: ``(info, handle)``.
    """
    import ray

    rtc = ray.get_runtime_context()
    labels = {}
    try:
        labels = rtc.get_node_labels() or {}
    except Exception:  # noqa: BLE001 - older Ray: no labels API
        labels = {}
    node = this_node(node_id=rtc.get_node_id(), hardware=labels.get(HARDWARE_LABEL), device=ctx.device)
    ray.get(ctx.ledger.started.remote(ctx.cid, ctx.attempt, kind, node))
    for crash in ctx.crashes:
        crash.maybe_crash(ctx.cid, kind)
    previous = os.getcwd()
    if os.path.isdir(ctx.cwd):
        os.chdir(ctx.cwd)
    work = Path(tempfile.mkdtemp(prefix="prumux-candidate-"))
    try:
        folder = work / "candidate"
        name = f"{ctx.cid}.{ctx.attempt}.{kind}"
        if kind == "compile":
            state = fn(*payload, cand_dir=folder, where=node)
            return state, ctx.transfer.put(folder, name)
        state, handle = payload
        ctx.transfer.get(handle, folder)
        info = fn(state, cand_dir=folder, where=node)
        return info, ctx.transfer.put(folder, name)
    finally:
        os.chdir(previous)
        shutil.rmtree(work, ignore_errors=True)


class _Ledger:
    """A Ray actor: which node each attempt's latest stage started on (a task that dies cannot say)."""

    def __init__(self):
        self.seen: dict = {}

    def started(self, cid: str, attempt: int, stage: str, node: dict) -> None:
        self.seen[(cid, attempt)] = {"stage": stage, "node": node}

    def last(self, cid: str, attempt: int) -> dict | None:
        return self.seen.get((cid, attempt))


def _import_ray():
    try:
        import ray
    except ImportError:
        raise InputError("--executor ray needs the Python package 'ray' (pip install 'prumux-compile[ray]', the "
                         "same Ray version as the cluster)") from None
    return ray


class RayExecutor(Executor):
    """Candidates on a Ray cluster (module docstring): compiles in parallel, one timing per node at a time.

    Args:
        address: the cluster (``auto``, ``HOST:PORT``, ``ray://HOST:10001``); None starts a new local Ray
            instance with every core and one :data:`BENCH_RESOURCE`. When this process is already connected
            (``ray.init`` was called), that connection is used and left open.
        artifact_store: a folder every node mounts at this path: candidate folders move through it instead of
            the object store (a private sub-folder, removed at the end).
        crashes: fault injection for tests (:class:`CrashInjection` each).

    After :meth:`run`, ``nodes`` lists the cluster's alive nodes as it saw them.
    """

    remote = True
    #: Lost attempts (worker or node died) after which a candidate is given up.
    ATTEMPTS = 2
    #: The share of a node's :data:`BENCH_RESOURCE` a compile task holds: a benchmark (which needs all of it)
    #: never starts on a node while a compile runs there, and no compile starts while a benchmark runs.
    COMPILE_SHARE = 0.001

    def __init__(self, address: str | None = None, *, artifact_store: str | Path | None = None,
                 crashes: Sequence[CrashInjection] = ()):
        self.address = address
        self.artifact_store = Path(artifact_store) if artifact_store is not None else None
        self.crashes = tuple(crashes)
        self.nodes: list[dict] = []
        self.spec = "ray" if address is None else f"ray:{address}"

    def describe(self) -> dict:
        return {"kind": "ray", "address": self.address,
                "transfer": str(self.artifact_store) if self.artifact_store is not None else "Ray object store",
                "bench_resource": BENCH_RESOURCE, "hardware_label": HARDWARE_LABEL, "nodes": self.nodes}

    # ------------------------------------------------------------------ cluster
    def _connect(self, ray) -> bool:
        """Connect (or start a local instance); True when this call did, so :meth:`run` disconnects."""
        if ray.is_initialized():
            return False
        self._probe()
        quiet = dict(log_to_driver=False, logging_level=logging.WARNING)
        try:
            if self.address is None:
                ray.init(address="local", include_dashboard=False, resources={BENCH_RESOURCE: 1}, **quiet)
            elif self.address.startswith("ray://"):
                ray.init(address=self.address, **quiet)
            else:
                ray.init(address=self.address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise InputError(f"--executor {self.spec}: cannot connect to the Ray cluster ({exc})") from None
        return True

    def _probe(self, timeout_s: float = 5.0) -> None:
        """Refuse at once an address nothing listens on (Ray itself keeps retrying for minutes)."""
        if self.address is None or self.address == "auto":
            return
        target = self.address.removeprefix("ray://")
        host, sep, port = target.rpartition(":")
        if not sep or not port.isdigit():
            raise InputError(f"--executor {self.spec}: expected ray:HOST:PORT, ray:ray://HOST:PORT or ray:auto")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
        except OSError as exc:
            raise InputError(f"--executor {self.spec}: nothing answers at {host}:{port} ({exc.strerror or exc}); "
                             "start the cluster's head there (ray start --head --port PORT) or give its address"
                             ) from None

    @staticmethod
    def _alive_nodes(ray) -> list[dict]:
        nodes = []
        for n in ray.nodes():
            if not n.get("Alive"):
                continue
            res, labels = n.get("Resources") or {}, n.get("Labels") or {}
            nodes.append({"node_id": n.get("NodeID"), "hostname": n.get("NodeManagerHostname"),
                          "address": n.get("NodeManagerAddress"), "cpus": float(res.get("CPU", 0)),
                          "gpus": float(res.get("GPU", 0)), "bench_slots": float(res.get(BENCH_RESOURCE, 0)),
                          "hardware": labels.get(HARDWARE_LABEL),
                          "accelerator": labels.get("ray.io/accelerator-type")})
        return sorted(nodes, key=lambda n: (n["hostname"] or "", n["node_id"] or ""))

    @staticmethod
    def _eligible(task: CandidateTask, nodes: list[dict]) -> list[dict]:
        return [n for n in nodes if n["bench_slots"] >= 1 and n["cpus"] >= task.threads
                and (task.device != "cuda" or n["gpus"] >= 1)
                and (task.hardware is None or n["hardware"] == task.hardware)]

    def _refuse(self, task: CandidateTask, nodes: list[dict]) -> InputError:
        need = [f"{BENCH_RESOURCE} 1", f"{task.threads} CPU(s)"]
        if task.device == "cuda":
            need.append("a GPU")
        if task.hardware is not None:
            need.append(f"label {HARDWARE_LABEL}={task.hardware}")
        listing = "; ".join(f"{n['hostname']} ({n['node_id'][:8]}): {n['cpus']:g} CPU, {n['gpus']:g} GPU, "
                            f"{BENCH_RESOURCE} {n['bench_slots']:g}, {HARDWARE_LABEL}={n['hardware']}"
                            for n in nodes) or "none alive"
        return InputError(f"{task.id}: no node of the Ray cluster can build it (needs {', '.join(need)}); nodes: "
                          f"{listing}. Start workers with ray start --address HEAD:6379 --resources "
                          f"'{{\"{BENCH_RESOURCE}\": 1}}' --labels {HARDWARE_LABEL}=<kind>")

    # ------------------------------------------------------------------ run
    def run(self, tasks, stages, *, notify=None, log=None):
        notify = notify or (lambda *a: None)
        log = log or (lambda m: None)
        ray = _import_ray()
        connected_here = self._connect(ray)
        transfer = None
        ledger = None
        inflight: dict = {}
        try:
            self.nodes = self._alive_nodes(ray)
            eligible = {}
            for t in tasks:
                eligible[t.id] = self._eligible(t, self.nodes)
                if not eligible[t.id]:
                    raise self._refuse(t, self.nodes)
            if self.artifact_store is not None:
                from prumux_compile.fsutil import output_tempdir

                transfer = _SharedDirTransfer(output_tempdir(".prumux-build-", self.artifact_store))
            else:
                transfer = _ObjectStoreTransfer()
            ledger = ray.remote(num_cpus=0)(_Ledger).remote()
            remote_stage = ray.remote(_run_stage)
            builders = [n for n in self.nodes if n["bench_slots"] >= 1]
            threads = max(1, min((t.threads for t in tasks), default=1))
            window = max(2, 2 * sum(int(n["cpus"] // threads) for n in builders))
            log(f"ray: {len(builders)} node(s) with {BENCH_RESOURCE} "
                f"({', '.join(sorted({str(n['hostname']) for n in builders}))}); candidates via {transfer.description}")
            cwd = os.getcwd()

            def submit(task: CandidateTask, attempt: int, key, avoid: str | None) -> None:
                selector = {HARDWARE_LABEL: task.hardware} if task.hardware is not None else {}
                if avoid is not None and any(n["node_id"] != avoid for n in eligible[task.id]):
                    selector["ray.io/node-id"] = f"!{avoid}"  # retried elsewhere when there is an elsewhere
                common = dict(num_cpus=task.threads, num_gpus=1 if task.device == "cuda" else 0, max_retries=0)
                if selector:
                    common["label_selector"] = selector
                ctx = _TaskContext(task.id, attempt, cwd, transfer, ledger, task.device, self.crashes)
                compiled = remote_stage.options(name=f"prumux compile {task.id}",
                                                resources={BENCH_RESOURCE: self.COMPILE_SHARE}, **common
                                                ).remote("compile", stages.compile, task.args, ctx)
                measured = remote_stage.options(name=f"prumux measure {task.id}", resources={BENCH_RESOURCE: 1.0},
                                                **common).remote("measure", stages.measure, compiled, ctx)
                inflight[measured] = (task, attempt, key, compiled)

            results: dict[str, Outcome] = {}
            lost: dict[str, list[dict]] = {t.id: [] for t in tasks}
            queue = deque(tasks)
            done = 0
            while queue or inflight:
                while queue and len(inflight) < window:
                    task = queue.popleft()
                    notify(done, len(tasks), task.id, None)
                    info, key = stages.lookup(*task.args, cand_dir=task.cand_dir)
                    if info is not None:
                        done += 1
                        results[task.id] = Outcome(task.id, info)
                        notify(done, len(tasks), task.id, info)
                        continue
                    submit(task, 1, key, None)
                if not inflight:
                    continue
                ready, _ = ray.wait(list(inflight), num_returns=1)
                task, attempt, key, _compiled = inflight.pop(ready[0])
                try:
                    info, handle = ray.get(ready[0])
                except ray.exceptions.RayError as exc:
                    fault = _system_fault(ray, exc)
                    if fault is None:
                        raise _application_error(ray, exc, task, ray.get(ledger.last.remote(task.id, attempt)))
                    seen = ray.get(ledger.last.remote(task.id, attempt)) or {}
                    node = seen.get("node")
                    lost[task.id].append({"attempt": attempt, "stage": seen.get("stage"), "node": node,
                                          "error": fault})
                    where = f" on {node['hostname']} ({node['node_id'][:8]})" if node else ""
                    if attempt < self.ATTEMPTS:
                        log(f"{task.id}: attempt {attempt} lost{where} during {seen.get('stage', 'start')}: {fault}; "
                            "retrying")
                        submit(task, attempt + 1, key, node["node_id"] if node else None)
                        continue
                    done += 1
                    reason = (f"lost {attempt} times to worker faults; last{where} during "
                              f"{seen.get('stage', 'start')}: {fault}")
                    log(f"{task.id}: {reason}")
                    results[task.id] = Outcome(task.id, None, lost[task.id], reason)
                    continue
                _fetch(transfer, handle, task.cand_dir)
                stages.store(*task.args, cand_dir=task.cand_dir, key=key)
                done += 1
                results[task.id] = Outcome(task.id, info, lost[task.id])
                notify(done, len(tasks), task.id, info)
            return [results[t.id] for t in tasks]
        finally:
            for ref, (_task, _attempt, _key, compiled) in inflight.items():
                for r in (ref, compiled):
                    try:
                        ray.cancel(r, force=True)
                    except Exception:  # noqa: BLE001 - already finished or gone
                        pass
            if transfer is not None:
                transfer.cleanup()
            if ledger is not None:
                try:
                    ray.kill(ledger)
                except Exception:  # noqa: BLE001
                    pass
            if connected_here:
                ray.shutdown()


def _fetch(transfer, handle, cand_dir: Path) -> None:
    """The finished candidate folder into ``cand_dir`` on the driver: written next to it, then renamed."""
    cand_dir = Path(cand_dir)
    cand_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = cand_dir.parent / f".tmp-{cand_dir.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        transfer.get(handle, tmp)
        tmp.rename(cand_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _root_cause(ray, exc: BaseException) -> BaseException:
    """The innermost cause behind Ray's task-error wrappers (a failed input task wraps its own error)."""
    seen = 0
    while isinstance(exc, ray.exceptions.RayTaskError) and getattr(exc, "cause", None) is not None and seen < 16:
        exc = exc.cause
        seen += 1
    return exc


def _system_fault(ray, exc: BaseException) -> str | None:
    """One line for a worker / node / object loss (retried), or None for an error the task's code raised."""
    cause = _root_cause(ray, exc)
    if isinstance(cause, ray.exceptions.RayTaskError) or not isinstance(cause, ray.exceptions.RayError):
        return None
    text = " ".join(str(cause).split())
    return f"{type(cause).__name__}: {text[:300]}"


def _application_error(ray, exc: BaseException, task: CandidateTask, seen: dict | None) -> BaseException:
    """The exception the candidate's code raised on its node, named with the candidate and node (the same type,
    so the same exit code, as the local executor gives)."""
    cause = _root_cause(ray, exc)
    if isinstance(cause, ray.exceptions.RayTaskError):  # the original type could not be rebuilt here
        return PrumuxError(f"{task.id}: {' '.join(str(cause).split())[:500]}")
    node = (seen or {}).get("node") or {}
    if isinstance(cause, PrumuxError) and len(cause.args) == 1 and isinstance(cause.args[0], str):
        where = f" on {node['hostname']}" if node.get("hostname") else ""
        cause.args = (f"{cause.args[0]} (candidate {task.id}{where})",)
    return cause
