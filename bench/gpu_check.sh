#!/usr/bin/env bash
# The whole GPU verification as one command (issue 16), for a machine with one NVIDIA GPU, CuPy and
# PyTorch installed and no network. Stops at the first failing command, naming the step, the command and
# its exit status, and writes what was measured so far to the report (bench/results/gpu_check.json).
#
#   bench/gpu_check.sh --wheels DIR --data DIR      # on the GPU machine (bench/GPU_CHECK.md)
#   bench/gpu_check.sh --dry-run [--wheels DIR] [--data DIR]   # anywhere: print and check every step
#
# Steps: 0 install (wheels, the project), 1 environment, 2 gpu-marked tests, 3 parity GPU/CPU,
# 4 training 300 steps fp32 and fp16, 5 speed (ViT-B/16 224 px batch 64 against PyTorch), 6 report.
# Options: --out FILE (the report), --work DIR (runs and logs; default a new folder under /tmp),
# --budget SECONDS (480: the whole check's time limit; each step gets at most what is left),
# --no-install (use the environment as it is; the repository is put on PYTHONPATH either way).
# Environment: GPU_CHECK_PYTHON (python3), GPU_CHECK_TRAIN_MODULE (scratchvit.train): for the tests.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${GPU_CHECK_PYTHON:-python3}
TRAIN_MODULE=${GPU_CHECK_TRAIN_MODULE:-scratchvit.train}
DRY_RUN=0 INSTALL=1 WHEELS="" DATA="" WORK="" BUDGET=480
OUT=$REPO/bench/results/gpu_check.json

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --no-install) INSTALL=0 ;;
        --wheels) WHEELS=${2:?--wheels needs a folder}; shift ;;
        --data) DATA=${2:?--data needs a folder}; shift ;;
        --out) OUT=${2:?--out needs a file}; shift ;;
        --work) WORK=${2:?--work needs a folder}; shift ;;
        --budget) BUDGET=${2:?--budget needs seconds}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
if ! command -v "$PY" >/dev/null 2>&1; then
    echo "gpu_check.sh: MISSING python: '$PY' (GPU_CHECK_PYTHON) is not a command" >&2
    exit 1
fi
if [[ $PY == */* ]]; then PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY"); fi
for d in "$WHEELS" "$DATA"; do
    if [ -n "$d" ] && [ ! -d "$d" ]; then
        echo "gpu_check.sh: MISSING folder $d" >&2
        exit 1
    fi
done
# folders and files given relative to where the script was started; from here on it runs in the repository
WHEELS=${WHEELS:+$(cd "$WHEELS" && pwd)}
DATA=${DATA:+$(cd "$DATA" && pwd)}
OWN_WORK=0
if [ -z "$WORK" ]; then WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX"); OWN_WORK=1; fi
mkdir -p "$WORK" "$(dirname "$OUT")"
WORK=$(cd "$WORK" && pwd)
OUT=$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")
cd "$REPO"
: >"$WORK/steps.tsv"
: >"$WORK/commands.txt"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
START=$SECONDS

# ---------------------------------------------------------------------------------------------- helpers
report() {  # step 6: everything measured so far into one JSON (extra arguments: --complete, --failed NAME)
    "$PY" bench/gpu_check.py report --work "$WORK" --out "$OUT" "$@"
}

quote() {  # the arguments as one shell line: plain words as they are, others in single quotes
    local a out=""
    for a in "$@"; do
        if [[ $a =~ ^[A-Za-z0-9_./=:,+@%-]+$ ]]; then out+="$a "; else out+="${a@Q} "; fi
    done
    printf '%s' "${out% }"
}

run_step() {  # run_step NAME LIMIT_SECONDS CMD...: run CMD (dry run: print and record it); stop on failure
    local name=$1 limit=$2 rc t0 left quoted
    shift 2
    quoted=$(quote "$@")
    if [ "$DRY_RUN" = 1 ]; then
        printf '[%s]\n    %s\n' "$name" "$quoted"
        printf '%s\n' "$quoted" >>"$WORK/commands.txt"
        return 0
    fi
    left=$((BUDGET - (SECONDS - START)))
    if [ "$left" -lt 10 ]; then
        echo "FAILED: step $name not started: the time budget of $BUDGET s is spent" >&2
        report --failed "$name (time budget of $BUDGET s spent)" || true
        exit 1
    fi
    if [ "$limit" -gt "$left" ]; then limit=$left; fi
    echo "=== [$name] (at most ${limit} s) $quoted"
    t0=$SECONDS
    set +e
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$WORK/${name//\//_}.log"
    rc=${PIPESTATUS[0]}
    set -e
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$quoted" >>"$WORK/steps.tsv"
    if [ "$rc" != 0 ]; then
        if [ "$rc" = 124 ]; then echo "(timed out after $limit s)" >&2; fi
        echo "FAILED: step $name, command: $quoted, exit status $rc (log $WORK/${name//\//_}.log)" >&2
        report || true
        exit "$rc"
    fi
}

# ---------------------------------------------------------------------------------------------- steps
step0_install() {  # the brought wheels and the project itself, no network; then the imports the steps need
    local wheels=()
    if [ "$INSTALL" = 1 ]; then
        if [ -n "$WHEELS" ]; then
            shopt -s nullglob
            wheels=("$WHEELS"/*.whl)
            shopt -u nullglob
            if [ ${#wheels[@]} -gt 0 ]; then
                run_step 0-install/wheels 180 "$PY" -m pip install -q --no-index --find-links "$WHEELS" "${wheels[@]}"
            fi
        fi
        run_step 0-install/build-backend 30 "$PY" bench/gpu_check.py backend
        run_step 0-install/project 120 "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e .
    fi
    run_step 0-install/imports 60 "$PY" bench/gpu_check.py imports
}

step1_environment() {  # nvidia-smi, python, cupy, torch versions, GPU name
    run_step 1-environment 60 "$PY" bench/gpu_check.py env --require-gpu --json "$WORK/env.json"
}

step2_gpu_tests() {  # every gpu-marked test must pass; skipped only the 2-GPU MPI test on a 1-GPU machine
    run_step 2-gpu-tests 180 "$PY" -m pytest -q -m gpu -rs -p no:cacheprovider \
        --junitxml="$WORK/gpu_tests.xml" tests/
    run_step 2-gpu-tests/counts 30 "$PY" bench/gpu_check.py junit --xml "$WORK/gpu_tests.xml" \
        --json "$WORK/gpu_tests.json" --allow-skip "fewer than 2 CUDA devices" --allow-skip "needs mpiexec"
}

step3_parity() {  # GPU against CPU, same parameters and batch: float64 1e-10, float32 1e-4 relative
    run_step 3-parity 150 "$PY" bench/gpu_parity.py --device gpu --json "$WORK/parity.json"
}

step4_train() {  # 300 steps of the Fashion-MNIST preset on the GPU, fp32 and fp16; fp16's loss within 3%
    local p
    for p in fp32 fp16; do
        run_step "4-train/$p" 180 "$PY" -m "$TRAIN_MODULE" --config fashion-mnist --device gpu --steps 300 \
            --warmup-steps 30 --eval-every 300 --precision "$p" --no-progress --out "$WORK/train_$p" \
            ${DATA:+--data-dir "$DATA"}
        run_step "4-train/$p-metrics" 30 "$PY" bench/gpu_check.py train --run "$WORK/train_$p" \
            --json "$WORK/train_$p.json"
    done
    run_step 4-train/fp16-vs-fp32 30 "$PY" bench/gpu_check.py precision --fp32 "$WORK/train_fp32.json" \
        --fp16 "$WORK/train_fp16.json" --tol 0.03 --json "$WORK/precision.json"
}

step5_speed() {  # ViT-B/16, 224 px, batch 64: scratchvit fp32/fp16 beside PyTorch eager and torch.compile
    local limit=400 left=$((BUDGET - (SECONDS - START)))
    if [ "$left" -lt "$limit" ]; then limit=$left; fi
    # the warm-ups (torch.compile compiles there) get all but 60 s of the step's limit; the timed rounds the rest
    run_step 5-speed "$limit" "$PY" bench/train_step.py --device gpu --compare torch --mode gpu --model ViT-B_16 \
        --batch-size 64 --num-classes 1000 --precisions fp32,fp16 --warmup 2 --rounds 3 --steps 5 --pause 0 \
        --time-limit $((limit > 90 ? limit - 60 : 30)) --json "$WORK/speed.json"
}

step6_report() {
    if [ "$DRY_RUN" = 1 ]; then
        run_step 6-report 30 "$PY" bench/gpu_check.py report --work "$WORK" --out "$OUT" --complete
    else
        report --complete
    fi
}

# ---------------------------------------------------------------------------------------------- main
if [ "$DRY_RUN" = 1 ]; then
    echo "gpu_check.sh --dry-run: the commands of every step (nothing is run on a GPU)"
fi
step0_install
step1_environment
step2_gpu_tests
step3_parity
step4_train
step5_speed
step6_report
if [ "$DRY_RUN" = 1 ]; then
    rc=0
    "$PY" bench/gpu_check.py preflight --commands "$WORK/commands.txt" --python "$PY" \
        ${WHEELS:+--wheels "$WHEELS"} ${DATA:+--data "$DATA"} || rc=$?
    if [ "$OWN_WORK" = 1 ]; then rm -rf "$WORK"; fi
    exit "$rc"
fi
echo "gpu check passed in $((SECONDS - START)) s; report $OUT"
