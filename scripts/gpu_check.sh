#!/usr/bin/env bash
# GPU check for prumux-compile on a CUDA machine (H200 target): CUDA PyTorch and OpenAI Triton preinstalled,
# no TensorRT, no network. Run from the repository root:
#
#     OUT=/some/dir bash scripts/gpu_check.sh        # OUT defaults to ./gpu_out
#
# Stages (each logs to $OUT/logs/<stage>.log; a failing or timed-out stage never stops the others):
#   env       nvidia-smi, versions, backend availability -> env.json
#   install   pip install --no-deps --no-build-isolation --no-index --ignore-requires-python -e .
#             (never touches torch; checked before/after. The stages below run from the checkout via
#             PYTHONPATH even when the install fails)
#   pytest    pytest -m gpu tests/gpu  (junit xml in the logs)
#   kernels   Triton mux/demux vs their PyTorch forms at BERT-base widths -> kernels.json
#   validate  CUDA engine vs the float64 reference on ONE BERT-base configuration (N=2, s=0.6), fp32 and fp16,
#             with the criteria of prumux_compile/validation.py -> validate.json
#   bench     batch 128*N, seq 128, N in {1,2,5,10} x sparsity {0,.6,.9,.95}: eager fp32 vs engine fp32/fp16
#             -> bench.json (rewritten after every configuration)
#   compile   CUDA graphs vs torch.compile + CUDA graphs on one configuration -> compile.json
#   summary   summary.md (stage table + every result)
# At the end $OUT holds at most 8 files: summary.md, stages.tsv, the five JSON files and logs.tar.gz.
# GPU_CHECK_SKIP_INSTALL=1 skips the install stage (package already installed); PYTHON picks the interpreter
# (default python3). Whole run: at most GPU_CHECK_BUDGET_S seconds (default 540, so that one 10-minute device
# command holds it with a minute to spare for start-up and the transfer of $OUT); each stage gets the smaller of
# its own budget and what is left, keeping 25 s for the summary and packing.
#
# Budgets (seconds), derived from what each stage does on an H200 with 16 CPU cores:
#   env 30      nvidia-smi + imports
#   install 45  pip install -e . --no-deps (no network)
#   pytest 90   tests/gpu on tiny synthetic models (CUDA graphs, Triton JIT compiles dominate)
#   kernels 40  2 kernels x 3 N x <= 3 precisions, 30 timed rounds each, plus Triton JIT
#   validate 90 one BERT-base checkpoint (write ~440 MB once, ~15 s), two engine builds (kernel choice timing),
#               the float64 CPU reference on 9 cases (~1-2 s each), the fp16-vs-fp32 cross check
#   compile 60  torch.compile of one configuration (first call dominates) + 10 timed rounds
#   bench       everything left (~160 s): the grid stops starting configurations when the next would not fit
set -u

OUT="${OUT:-$PWD/gpu_out}"
LOGS="$OUT/logs"
mkdir -p "$OUT" "$LOGS"
TOTAL="${GPU_CHECK_BUDGET_S:-540}"
START=$(date +%s)
STATUS="$OUT/stages.tsv"
: > "$STATUS"
CACHE="${TMPDIR:-/tmp}/prumux-gpu-cache"
mkdir -p "$CACHE"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # stages work from the checkout even if install fails
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
FAILED=0

remaining() { echo $(( TOTAL - ($(date +%s) - START) )); }

# run_stage NAME BUDGET_S CMD...  -> appends "name<TAB>status<TAB>seconds<TAB>detail" to stages.tsv
run_stage() {
  local name=$1 budget=$2
  shift 2
  local left=$(( $(remaining) - 25 ))
  if [ "$left" -lt 15 ]; then
    printf '%s\tskipped\t0\tno time left\n' "$name" >> "$STATUS"
    return 0
  fi
  if [ "$budget" -gt "$left" ]; then budget=$left; fi
  local t0 rc dt st
  t0=$(date +%s)
  echo "== $name (budget ${budget}s) $(date +%T)"
  timeout --kill-after=5 "$budget" "$@" > "$LOGS/$name.log" 2>&1
  rc=$?
  dt=$(( $(date +%s) - t0 ))
  case $rc in
    0) st=ok ;;
    124|137) st=timeout ;;
    *) st=failed ;;
  esac
  [ "$st" = ok ] || FAILED=1
  printf '%s\t%s\t%s\trc=%s, logs/%s.log\n' "$name" "$st" "$dt" "$rc" "$name" >> "$STATUS"
  echo "   $name: $st in ${dt}s"
  tail -n 3 "$LOGS/$name.log" | sed 's/^/   | /'
}

env_report() {
  nvidia-smi || echo "nvidia-smi not available"
  "$PY" - <<'EOF'
import importlib.util, sys
import torch
print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0))
for mod in ("triton", "tensorrt", "onnx", "onnxruntime", "onnxconverter_common"):
    print(mod, "present" if importlib.util.find_spec(mod) else "absent")
EOF
  "$PY" scripts/gpu_bench.py env --out "$OUT"   # env.json (versions, device, backend availability)
}

install_pkg() {
  local before after
  before=$("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda)')
  # --no-deps: torch (CUDA build) and everything else stay as installed; --no-index: no network anyway;
  # --ignore-requires-python: pyproject pins 3.11, the GPU image runs 3.12
  "$PY" -m pip install --no-deps --no-build-isolation --no-index --ignore-requires-python -e . || return 1
  after=$("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda)')
  echo "torch before install: $before; after: $after"
  [ "$before" = "$after" ] || { echo "torch changed during install"; return 1; }
}

export PY OUT
export -f env_report install_pkg
run_stage env 30 bash -c env_report
if [ "${GPU_CHECK_SKIP_INSTALL:-0}" = 1 ]; then
  printf 'install\tskipped\t0\tGPU_CHECK_SKIP_INSTALL=1\n' >> "$STATUS"
else
  run_stage install 45 bash -c install_pkg
fi
run_stage pytest 90 "$PY" -m pytest -m gpu tests/gpu -q -rs -p no:cacheprovider --junitxml="$LOGS/pytest-gpu.xml"
run_stage kernels 40 "$PY" scripts/gpu_bench.py kernels --out "$OUT" --cache "$CACHE"
run_stage validate 90 "$PY" scripts/gpu_bench.py validate --out "$OUT" --cache "$CACHE"
COMPILE_BUDGET=60
BENCH_BUDGET=240
BENCH_LEFT=$(( $(remaining) - 25 - COMPILE_BUDGET ))
[ "$BENCH_BUDGET" -gt "$BENCH_LEFT" ] && BENCH_BUDGET=$BENCH_LEFT
run_stage bench "$BENCH_BUDGET" "$PY" scripts/gpu_bench.py bench --out "$OUT" --cache "$CACHE" \
  --budget-s $(( BENCH_BUDGET - 25 ))
run_stage compile "$COMPILE_BUDGET" "$PY" scripts/gpu_bench.py compile --out "$OUT" --cache "$CACHE"

# summary: the Python one when it works, else a plain table of the stages
if ! timeout 20 "$PY" scripts/gpu_bench.py summary --out "$OUT" > "$LOGS/summary.log" 2>&1; then
  { echo "# GPU check summary (fallback: the Python summary failed, see logs/summary.log)"; echo
    echo "| stage | status | seconds | detail |"; echo "|---|---|---|---|"
    sed 's/\t/ | /g; s/^/| /; s/$/ |/' "$STATUS"; } > "$OUT/summary.md"
  FAILED=1
fi
echo "== total $(( $(date +%s) - START ))s; summary in $OUT/summary.md"
cat "$STATUS"
# the device tool returns at most 8 files: pack the logs into one archive
if tar czf "$OUT/logs.tar.gz" -C "$OUT" logs; then rm -rf "$LOGS"; fi
exit $FAILED
