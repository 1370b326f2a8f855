#!/usr/bin/env bash
# One-shot GPU check (issue 11): set up, nvidia-smi, the `cuda` tests, then scan, training and
# `scan`-command speed, printed as a Markdown table for docs/benchmarks.md. At most ~8 minutes: every phase
# runs under a timeout cut to what is left of the budget, so one hang cannot eat the rest.
#
#   bash benchmarks/gpu_check.sh                      # from the repository root (or anywhere)
#   GPU_CHECK_SMOKE=1 bash benchmarks/gpu_check.sh    # tiny sizes: tests the script itself
#
# Environment:
#   PYTHON           interpreter with torch (default: python3; on the lent GPU machines that
#                    is the one that holds the CUDA build of torch)
#   OUT              if set, the log, JSON results and table are written there
#                    (default /tmp/pm-gpu-check)
#   GPU_CHECK_SMOKE  1: tiny sizes even on a GPU (without a GPU they are tiny anyway)
#   GPU_CHECK_BUDGET total seconds for all phases (default 465)
#
# Setup, for a machine that cannot reach PyPI: torch, numpy, pandas, pyarrow, scipy,
# scikit-learn, numba, pytest... must be installed already; the few audio packages that
# GPU images lack (librosa, soundfile, soxr and their small dependencies) are installed
# offline from wheels in .whl/ if present, into a private folder on PYTHONPATH. With
# network access and no .whl/, `pip install -e .[test]` is tried instead. The package
# itself is used from the working tree through PYTHONPATH, never installed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
REPO=$(pwd)
PY=${PYTHON:-python3}
RESULTS=${OUT:-/tmp/pm-gpu-check}
SMOKE=${GPU_CHECK_SMOKE:-0}
DEADLINE=$((SECONDS + ${GPU_CHECK_BUDGET:-465}))
SITE=/tmp/pm-site
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu_check.log"
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!
trap 'exec 1>&- 2>&-; wait "$TEE_PID" 2>/dev/null' EXIT  # let tee write the last lines before we exit
# the working tree first, then the offline-installed wheels (a missing folder is harmless)
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
STATUS=()
FAILED=0
LAST_RC=0

run_phase() {  # run_phase NAME MAX_SECONDS CMD...: CMD (a program, not a function) under min(MAX, time left) seconds
    local name=$1 max=$2 left t start rc
    shift 2
    left=$((DEADLINE - SECONDS))
    t=$((max < left ? max : left))
    if [ "$t" -lt 15 ]; then
        echo "=== $name: SKIPPED, only ${left} s of the budget left ==="
        STATUS+=("$name: skipped (budget spent)")
        FAILED=1
        LAST_RC=1
        return
    fi
    echo
    echo "=== $name (timeout ${t} s) ==="
    start=$SECONDS
    timeout -k 10 "$t" "$@"
    rc=$?
    LAST_RC=$rc
    local note=""
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && note=", TIMED OUT"
    STATUS+=("$name: exit $rc, $((SECONDS - start)) s$note")
    [ "$rc" -eq 0 ] || FAILED=1
}

echo "=== gpu_check: $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(uname -n), repo $REPO, python $PY, results in $RESULTS ==="

# ---- setup --------------------------------------------------------------------------------
MODULES="torch numpy scipy sklearn librosa soundfile soxr pandas pyarrow click safetensors yaml tqdm joblib matplotlib pytest"
missing() {
    "$PY" -c 'import importlib.util as u, sys; print(" ".join(m for m in sys.argv[1:] if u.find_spec(m) is None))' $MODULES
}
setup() {
    local miss
    miss=$(missing) || { echo "cannot run $PY"; return 3; }
    if [ -n "$miss" ]; then
        echo "missing Python modules: $miss"
        if compgen -G ".whl/*.whl" >/dev/null; then
            echo "installing the wheels in .whl/ offline into $SITE"
            timeout 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
                || echo "offline wheel install failed"
        else
            echo "no .whl/ folder; trying pip install -e .[test] (needs network access)"
            timeout 150 "$PY" -m pip install -q -e ".[test]" || echo "pip install failed"
        fi
    fi
    miss=$(missing)
    if [ -n "$miss" ]; then
        echo "STILL MISSING: $miss; cannot continue (carry wheels in .whl/, see docs/benchmarks.md)"
        return 3
    fi
    # a real import of what the scanner and trainer load (catches ABI mismatches that find_spec cannot)
    timeout 120 "$PY" -c 'import torch, librosa, soundfile, soxr, primate_monitor.frontend, primate_monitor.scanner, primate_monitor.train; librosa.filters.mel(sr=16000, n_fft=1024, n_mels=64); print("imports ok: torch", torch.__version__, "librosa", librosa.__version__, "soundfile", soundfile.__version__, "soxr", soxr.__version__)'
}
echo
echo "=== setup ==="
setup
LAST_RC=$?
STATUS+=("setup: exit $LAST_RC, $SECONDS s")
if [ "$LAST_RC" -ne 0 ]; then
    echo "setup failed; nothing else can run"
    printf '%s\n' "${STATUS[@]}"
    exit 1
fi

echo
echo "=== nvidia-smi ==="
if command -v nvidia-smi >/dev/null; then timeout 30 nvidia-smi; else echo "nvidia-smi not found"; fi
CUDA=$("$PY" -c 'import torch; print(1 if torch.cuda.is_available() else 0)' 2>/dev/null || echo 0)
"$PY" -c 'import torch, os; c = torch.cuda.is_available(); print("torch", torch.__version__, "cuda runtime", torch.version.cuda, "|", torch.cuda.get_device_name(0) if c else "no CUDA device", "|", os.cpu_count(), "CPU cores")'
SMOKE_ARG=()
if [ "$CUDA" != 1 ]; then
    echo "no CUDA device: the cuda tests are skipped and the benchmarks run on the CPU at tiny sizes (figures meaningless)"
    SMOKE_ARG=(--smoke)
elif [ "$SMOKE" = 1 ]; then
    echo "GPU_CHECK_SMOKE=1: tiny sizes"
    SMOKE_ARG=(--smoke)
fi

# ---- tests, then measurements --------------------------------------------------------------
run_phase "pytest -m cuda" "${GPU_PYTEST_MAX:-150}" "$PY" -m pytest -q -s -rs -m cuda -p no:cacheprovider \
    --junitxml="$RESULTS/pytest_cuda.xml" tests/test_cuda.py
run_phase "scan benchmark" "${GPU_SCAN_MAX:-200}" "$PY" benchmarks/gpu_bench.py scan --results "$RESULTS" "${SMOKE_ARG[@]}"
run_phase "train benchmark" "${GPU_TRAIN_MAX:-110}" "$PY" benchmarks/gpu_bench.py train --results "$RESULTS" "${SMOKE_ARG[@]}"
run_phase "cli benchmark" "${GPU_CLI_MAX:-120}" "$PY" benchmarks/gpu_bench.py cli --results "$RESULTS" "${SMOKE_ARG[@]}"
DEADLINE=$((DEADLINE + 20))  # the table needs seconds, and must run even when the budget is spent
run_phase "table" 20 "$PY" benchmarks/gpu_bench.py table --results "$RESULTS"

echo
echo "=== summary ($SECONDS s in all; results in $RESULTS) ==="
printf '%s\n' "${STATUS[@]}"
exit "$FAILED"
