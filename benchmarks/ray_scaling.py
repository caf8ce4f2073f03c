"""Compile-only work of ``build --executor ray`` on 1 vs 2 workers (README "Building on a cluster").

Runs the compile stage of ``build`` (IR passes, ``model.onnx``, the ``ort-cpu`` engine, validation against the
float64 reference) for K synthetic checkpoints through :class:`prumux_compile.executors.RayExecutor` on a local Ray
instance started with W logical CPUs (one thread per task, so W compiles at once), and the same compile stages one
after another in this process, alternating the configurations in every repetition. The measure stage is replaced
by one that only returns the record, so the figures are compile throughput (benchmarks run one per node and do
not parallelise within a node by design). Each Ray instance's workers are started and have imported the compiler
before the clock starts. Prints wall time, candidates per minute and the ratio to one worker of the same
repetition; the machine's load average is printed too, since on a shared host the other jobs take cores.

``--per-candidate`` instead times, in this process, the two stages of single BERT-base-shaped candidates (the
checkpoints of ``benchmarks/compile_gain.py``: N=1 s=0 and N=2 s=0.6) with ``build``'s defaults (2 threads, sequence
128, batch 8·N, 2 + 5 interleaved rounds, 128 teacher-agreement inputs): the figures README's per-node estimate
starts from.

    python benchmarks/ray_scaling.py                 # K = 8, workers 1 and 2, 2 repetitions
    python benchmarks/ray_scaling.py --workers 1,2,4 --candidates 16
    python benchmarks/ray_scaling.py --per-candidate # about 5 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _timed_compile(*args, **kwargs):
    """The driver's compile stage, with the CPU seconds this process spent in it (``cpu_s``)."""
    from prumux_compile.driver import _compile_candidate

    t0, w0 = time.process_time(), time.time()
    state = _compile_candidate(*args, **kwargs)
    state.info["cpu_s"] = time.process_time() - t0
    state.info["busy_s"] = time.time() - w0
    return state


def _compile_only_measure(compiled, *, cand_dir, where=None):
    """Stand-in measure stage: the compile stage's record, nothing timed."""
    return {**compiled.info, "measured_on": where}


def _none(*args, **kwargs):
    return None, None


def _nothing(*args, **kwargs):
    return None


def _warm(_):
    import time as _time

    import prumux_compile.driver  # noqa: F401 - torch, onnx, onnxruntime and the compiler, as a task needs them
    import onnxruntime  # noqa: F401

    _time.sleep(1.0)  # keep this worker busy so the next warm-up task starts another one
    return os.getpid()


def _checkpoints(root: Path, k: int) -> list[Path]:
    from prumux_compile.demo.synthetic import SynthSpec, write_checkpoint

    out = []
    for i in range(k):
        n = (1, 2, 4)[i % 3]
        path = root / f"c{i}_n{n}"
        family = "bert" if n == 1 else "muxplm"
        write_checkpoint(path, SynthSpec(family=family, num_instances=n, vocab=4000, max_pos=128, num_layers=4,
                                         hidden=128, heads=4, ffn=512, num_labels=2, seed=i))
        out.append(path)
    return out


def _tasks(ckpts, opts, out_root: Path):
    from prumux_compile.executors import CandidateTask

    return [CandidateTask(p.name, (p.name, p, "ort-cpu", opts, None), out_root / p.name, threads=1) for p in ckpts]


def run_ray(workers: int, ckpts, opts, scratch: Path) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds and wall seconds summed over the compile stages)."""
    import ray

    from prumux_compile.executors import BENCH_RESOURCE, RayExecutor, Stages

    ray.init(num_cpus=workers, resources={BENCH_RESOURCE: 1}, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    try:
        warm = ray.remote(num_cpus=1)(_warm)
        pids = set(ray.get([warm.remote(i) for i in range(workers)]))
        assert len(pids) == workers, f"warm-up reached {len(pids)} of {workers} workers"
        stages = Stages(run=_nothing, lookup=_none, compile=_timed_compile, measure=_compile_only_measure,
                        store=_nothing)
        out = Path(tempfile.mkdtemp(dir=scratch))
        t0 = time.perf_counter()
        outcomes = RayExecutor().run(_tasks(ckpts, opts, out), stages)
        took = time.perf_counter() - t0
        assert all(o.info is not None and o.info["validation"]["passed"] for o in outcomes)
        return took, sum(o.info["cpu_s"] for o in outcomes), sum(o.info["busy_s"] for o in outcomes)
    finally:
        ray.shutdown()


def run_in_process(ckpts, opts, scratch: Path) -> tuple[float, float, float]:
    import torch

    from prumux_compile.executors import this_node

    torch.set_num_threads(1)
    out = Path(tempfile.mkdtemp(dir=scratch))
    t0 = time.perf_counter()
    cpu = busy = 0.0
    for p in ckpts:
        state = _timed_compile(p.name, p, "ort-cpu", opts, None, cand_dir=out / p.name, where=this_node())
        assert state.info["validation"]["passed"]
        cpu += state.info["cpu_s"]
        busy += state.info["busy_s"]
    return time.perf_counter() - t0, cpu, busy


def per_candidate(scratch: Path) -> None:
    """Compile and measure stage seconds of BERT-base-shaped candidates, in this process (build defaults)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from compile_gain import BASE, uniform_structure

    from prumux_compile.driver import BuildOptions, _compile_candidate, _measure_candidate
    from prumux_compile.executors import this_node
    from prumux_compile.demo.synthetic import SynthSpec, write_checkpoint

    rows = []
    for n, target in ((1, 0.0), (2, 0.6)):
        family = ("bert" if target == 0 else "cofi_compressed") if n == 1 else "prumux_compressed"
        heads_kept, ffn_kept = uniform_structure(target)
        ckpt = scratch / f"bert-base-n{n}-s{target}"
        info = write_checkpoint(ckpt, SynthSpec(family=family, num_instances=n, heads_kept=heads_kept,
                                                ffn_kept=ffn_kept, **BASE))
        opts = BuildOptions(out=scratch / "unused", cache=False)  # threads 2, seq 128, batch 8N, rounds 2 + 5
        where = this_node()
        t0 = time.perf_counter()
        state = _compile_candidate(ckpt.name, ckpt, "ort-cpu", opts, None, cand_dir=scratch / ckpt.name,
                                   where=where)
        t1 = time.perf_counter()
        record = _measure_candidate(state, cand_dir=scratch / ckpt.name, where=where)
        t2 = time.perf_counter()
        rows.append((f"bert-base N={n} s={info.sparsity:.2f}", t1 - t0, t2 - t1, record["throughput"],
                     record["eager_throughput"]))
        print(f"  {rows[-1][0]}: compile {t1 - t0:.0f} s, measure {t2 - t1:.0f} s", flush=True)
    print(f"\nBERT-base-shaped candidates, ort-cpu, build defaults; {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}\n")
    print("| candidate | compile stage s | measure stage s | engine seq/s | eager seq/s | candidates / h, one slot |")
    print("|---|---|---|---|---|---|")
    for name, comp, meas, eng, eag in rows:
        print(f"| {name} | {comp:.0f} | {meas:.0f} | {eng:.1f} | {eag:.1f} | {3600 / (comp + meas):.0f} |")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts (Ray logical CPUs)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--per-candidate", action="store_true", help="stage times of BERT-base candidates instead")
    args = ap.parse_args(argv)
    if args.per_candidate:
        with tempfile.TemporaryDirectory(prefix="prumux-ray-scaling-") as tmp:
            per_candidate(Path(tmp))
        return
    workers = [int(w) for w in args.workers.split(",")]

    from prumux_compile.driver import BuildOptions

    with tempfile.TemporaryDirectory(prefix="prumux-ray-scaling-") as tmp:
        scratch = Path(tmp)
        ckpts = _checkpoints(scratch / "ckpts", args.candidates)
        opts = BuildOptions(out=scratch / "unused", seq_len=64, batch_sizes=None, threads=1, cache=False)
        rows: dict[str, list[tuple[float, float, float]]] = {"in-process": [],
                                                      **{f"ray, {w} worker(s)": [] for w in workers}}
        loads = []
        for rep in range(args.repeats):
            order = list(workers) if rep % 2 == 0 else list(reversed(workers))
            for w in order:
                rows[f"ray, {w} worker(s)"].append(run_ray(w, ckpts, opts, scratch))
                loads.append(os.getloadavg()[0])
                print(f"  repeat {rep + 1}: ray {w} worker(s): {rows[f'ray, {w} worker(s)'][-1][0]:.1f} s", flush=True)
            rows["in-process"].append(run_in_process(ckpts, opts, scratch))
            loads.append(os.getloadavg()[0])
            print(f"  repeat {rep + 1}: in-process: {rows['in-process'][-1][0]:.1f} s", flush=True)

    one = [run[0] for run in rows[f"ray, {workers[0]} worker(s)"]]
    print(f"\n{args.candidates} candidates (compile stage: passes, export, ort-cpu engine, validation), 4 layers x "
          f"128 hidden, seq 64, 1 thread per task; {os.cpu_count()} cores, load average during the runs "
          f"{min(loads):.1f}-{max(loads):.1f}; median of {args.repeats} alternating repetitions. CPU s: summed over "
          "the compile stages; cores used = CPU s / wall s (what the host gave the build); compiles at once = "
          "the compile stages' wall seconds summed / wall s\n")
    print(f"| executor | wall s | candidates / min | vs ray, {workers[0]} worker(s) | CPU s | cores used | "
          "compiles at once |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in rows.items():
        walls = [run[0] for run in runs]
        med = statistics.median(walls)
        ratio = statistics.median(o / t for o, t in zip(one, walls))
        cpu = statistics.median(c for _, c, _ in runs)
        used = statistics.median(c / w for w, c, _ in runs)
        overlap = statistics.median(b / w for w, _, b in runs)
        print(f"| {name} | {med:.1f} | {60 * args.candidates / med:.1f} | {ratio:.2f}x | {cpu:.1f} | {used:.2f} | "
              f"{overlap:.2f} |")


if __name__ == "__main__":
    main()
