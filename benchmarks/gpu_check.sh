#!/usr/bin/env bash
# The prepared GPU check: on a CUDA machine, the GPU-marked tests and the benchmarks with real NVML energy
# readings, in under 8 minutes, every output under OUT_DIR.
#
#   benchmarks/gpu_check.sh OUT_DIR            (PYTHON=/path/to/python to choose the interpreter)
#
# Steps (each with its own time limit inside an overall budget of GPU_CHECK_BUDGET_S, default 460 s):
#   pytest_cuda            pytest -m cuda: the GPU-marked tests (tests/test_on_cuda.py: NVML energy, fp16/bf16
#                          with pruning, an HF Llama, DataPruning, FSDP, export)  -> pytest_cuda.xml
#   fit_gpu_nvml           lightning-green fit on the GPU (digits demo, EnergyMonitor on NVML, GreenReport)
#                                                                              -> runs/digits_gpu/lightning_logs/...
#   nvml_measured          asserts that run's GPU energy is labelled "measured" and > 0
#   llama_preset_gpu       examples/configs/green_llama.yaml on the GPU, 4 epochs (bf16, pruning, NVML energy)
#   llama_nvml_measured    the same check on that run                        -> runs/llama_gpu/lightning_logs/...
#   data_pruning_gpu       benchmarks/data_pruning.py --quick on the GPU: full data vs DataPruning, NVML energy
#                                                                              -> data_pruning.json
#   green_recipe_gpu       benchmarks/green_recipe.py --quick on the GPU: fp32 vs the green preset with NVML
#                          energy, power-limit tuner off                       -> green_recipe.json, runs/green_recipe/
#   power_limit_simulated  benchmarks/power_limit.py --quick: the tuner on the *simulated* V100
#   bench_inference_gpu    lightning-green bench-inference --device cuda on the fit_gpu_nvml checkpoint (eager, bf16,
#                          torch-export with NVML energy)                    -> bench_inference_gpu.json
#   meter_cost_gpu         what one EnergyMeter read costs on the GPU (NVML counter, CUDA sync)  -> meter_cost.json
#   energy_overhead_gpu    benchmarks/energy_overhead.py --quick on the GPU: EnergyMonitor's cost with NVML reads
#                                                                              -> energy_overhead_gpu.json
#   data_pruning_gpu_fewer benchmarks/data_pruning.py on the GPU, 1 round, prune_ratio 0.7 (fewer batches)
#                                                                              -> data_pruning_fewer.json
#   data_pruning_gpu_keep  the same with keep_steps (smaller batches, as many steps) on digits
#                                                                              -> data_pruning_keep.json
# GPU_CHECK_STEPS=step,step,... runs only those steps (e.g. a rerun of the ones that failed).
# Every step logs to logs/STEP.log; gpu_check.json has each step's status; gpu_check.tar.gz holds everything (but
# checkpoints) for a single download. Exit status 0 when every step passed, 1 otherwise, 2 on bad usage.
# Packages the machine lacks can be given as wheels: GPU_CHECK_WHEELS=DIR (installed offline into OUT_DIR/site).
#
# It never changes a GPU setting: nothing here sets a power limit or clocks on a real GPU (the tuner runs only on
# the simulated GPU), and the power limit, persistence mode and application clocks of every GPU are read before
# and after; the check fails loudly if any of them moved.
#
# Without CUDA it says so, writes gpu_check.json with status "skipped" and exits 0.
set -uo pipefail

if [[ $# -ne 1 || "$1" == -* ]]; then
    echo "usage: $0 OUT_DIR   (runs the GPU checks of lightning-green; writes every output under OUT_DIR)" >&2
    exit 2
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$1" || exit 2
OUT="$(cd "$1" && pwd)"
LOGS="$OUT/logs"
mkdir -p "$LOGS"
PY="${PYTHON:-python3}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-460}"  # every step took ~330 s on an H200 (2026-11-30)
STEP_NAMES="pytest_cuda fit_gpu_nvml nvml_measured llama_preset_gpu llama_nvml_measured data_pruning_gpu
green_recipe_gpu power_limit_simulated bench_inference_gpu meter_cost_gpu energy_overhead_gpu data_pruning_gpu_fewer
data_pruning_gpu_keep"
if [[ -n "${GPU_CHECK_STEPS:-}" ]]; then
    GPU_CHECK_STEPS="${GPU_CHECK_STEPS//[[:space:]]/}"
    IFS=, read -ra _wanted <<<"$GPU_CHECK_STEPS"
    for _step in "${_wanted[@]}"; do
        if [[ " ${STEP_NAMES//$'\n'/ } " != *" $_step "* ]]; then
            echo "gpu_check: GPU_CHECK_STEPS: no step named '$_step'; the steps are: ${STEP_NAMES//$'\n'/ }" >&2
            exit 2
        fi
    done
fi
START_S=$(date +%s)
DEADLINE_S=$((START_S + BUDGET_S))
STEPS="$OUT/.steps.tsv"
: >"$STEPS"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
cd "$ROOT" || exit 2

say() { echo "gpu_check: $*"; }

helper() { "$PY" "$ROOT/benchmarks/_gpu_check.py" "$@"; }

summary() {  # summary STATUS REASON: write gpu_check.json from the step records
    helper summary "$OUT" "$1" "$2" "$STEPS" "$(($(date +%s) - START_S))"
}

record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:-}" >>"$STEPS"; }

run_step() {  # run_step NAME LIMIT_S CMD...: run with a time limit inside the budget, log to logs/NAME.log
    local name=$1 limit=$2 left t0 rc
    shift 2
    if [[ -n "${GPU_CHECK_STEPS:-}" && ",$GPU_CHECK_STEPS," != *",$name,"* ]]; then
        record "$name" skipped 0 "not in GPU_CHECK_STEPS"
        say "$name: skipped (not in GPU_CHECK_STEPS)"
        return 0
    fi
    left=$((DEADLINE_S - $(date +%s)))
    if ((left < 15)); then
        record "$name" skipped 0 "time budget spent"
        say "$name: skipped (time budget spent)"
        return 0
    fi
    ((limit > left)) && limit=$left
    say "$name (limit ${limit}s) ..."
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
    rc=$?
    local took=$(($(date +%s) - t0))
    if ((rc == 0)); then
        record "$name" ok "$took"
        say "$name: ok (${took}s)"
    elif ((rc == 124 || rc == 137)); then
        record "$name" timeout "$took" "killed after ${limit}s"
        say "$name: TIMEOUT after ${limit}s (see logs/$name.log)"
    else
        record "$name" failed "$took" "exit status $rc"
        say "$name: FAILED, exit status $rc (see logs/$name.log):"
        tail -n 15 "$LOGS/$name.log" | sed 's/^/    /'
    fi
    return 0
}

# ------------------------------------------------------------------------------------------- is there a GPU?
if ! command -v "$PY" >/dev/null 2>&1; then
    echo "gpu_check: no Python interpreter '$PY' (set PYTHON=/path/to/python)." >&2
    exit 2
fi
CUDA_INFO="$(helper cuda-info 2>&1)"
if [[ "$CUDA_INFO" != yes* ]]; then
    reason="no CUDA: ${CUDA_INFO#no: }"
    say "$reason. Nothing to check on this machine: skipped (run it on a CUDA machine)."
    record cuda skipped 0 "$reason"
    summary skipped "$reason"
    exit 0
fi
say "CUDA: ${CUDA_INFO#yes }"

if [[ -n "${GPU_CHECK_WHEELS:-}" ]]; then  # packages the machine lacks, as wheels (no network needed)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$OUT/site" "$GPU_CHECK_WHEELS"/*.whl &&
        export PYTHONPATH="$PYTHONPATH:$OUT/site"
fi
MISSING="$(helper missing-deps)"
if [[ -n "$MISSING" ]]; then
    reason="missing Python packages: $MISSING (pip install -e '.[dev]', or carry their wheels)"
    say "$reason"
    record deps failed 0 "$reason"
    summary failed "$reason"
    exit 1
fi

# ----------------------------------------------------------------------------- GPU settings, read only
helper settings "$OUT/gpu_settings_before.json" >/dev/null ||
    say "could not read the GPU settings through NVML; the before/after comparison is skipped"

# --------------------------------------------------------------------------------------------------- checks
run_step pytest_cuda 240 "$PY" -m pytest -m cuda -q -p no:cacheprovider -o addopts="" --continue-on-collection-errors \
    --junitxml="$OUT/pytest_cuda.xml" tests

run_step fit_gpu_nvml 120 "$PY" -m lightning_green fit --trainer.accelerator=gpu --trainer.devices=1 \
    --trainer.max_epochs=3 --trainer.enable_progress_bar=false --trainer.default_root_dir="$OUT/runs/digits_gpu"
run_step nvml_measured 30 "$PY" "$ROOT/benchmarks/_gpu_check.py" nvml-measured "$OUT/runs/digits_gpu"

run_step llama_preset_gpu 120 "$PY" -m lightning_green fit --config examples/configs/green_llama.yaml \
    --trainer.accelerator=gpu --trainer.devices=1 --trainer.max_epochs=4 --trainer.enable_progress_bar=false \
    --trainer.default_root_dir="$OUT/runs/llama_gpu"
run_step llama_nvml_measured 30 "$PY" "$ROOT/benchmarks/_gpu_check.py" nvml-measured "$OUT/runs/llama_gpu"

run_step data_pruning_gpu 120 "$PY" benchmarks/data_pruning.py --quick --tasks digits lm --accelerator gpu \
    --json "$OUT/data_pruning.json" --runs-dir "$OUT/runs/data_pruning"

if [[ -f benchmarks/green_recipe.py ]]; then
    run_step green_recipe_gpu 200 "$PY" benchmarks/green_recipe.py --quick --accelerator gpu --no-power-tuner \
        --json "$OUT/green_recipe.json" --runs-dir "$OUT/runs/green_recipe"
else
    record green_recipe_gpu skipped 0 "benchmarks/green_recipe.py not in this checkout"
fi

run_step power_limit_simulated 60 "$PY" benchmarks/power_limit.py --quick

DIGITS_CKPT="$(ls -v "$OUT"/runs/digits_gpu/lightning_logs/version_*/checkpoints/*.ckpt 2>/dev/null | tail -n 1)"
run_step bench_inference_gpu 90 "$PY" -m lightning_green bench-inference "${DIGITS_CKPT:-no-checkpoint-from-fit_gpu_nvml}" \
    --device cuda --batch-sizes 1,256 --repeats 20 --rounds 2 --no-report --json "$OUT/bench_inference_gpu.json"

run_step meter_cost_gpu 30 "$PY" "$ROOT/benchmarks/_gpu_check.py" meter-cost "$OUT/meter_cost.json"
run_step energy_overhead_gpu 90 "$PY" benchmarks/energy_overhead.py --quick --accelerator gpu \
    --json "$OUT/energy_overhead_gpu.json"

run_step data_pruning_gpu_fewer 150 "$PY" benchmarks/data_pruning.py --tasks digits lm --rounds 1 --prune-ratio 0.7 \
    --accelerator gpu --json "$OUT/data_pruning_fewer.json"
run_step data_pruning_gpu_keep 100 "$PY" benchmarks/data_pruning.py --tasks digits --rounds 1 --prune-ratio 0.7 \
    --keep-steps --accelerator gpu --json "$OUT/data_pruning_keep.json"

# -------------------------------------------------------------------------------------- nothing moved?
status=ok
reason="all steps passed"
if [[ -f "$OUT/gpu_settings_before.json" ]]; then
    helper settings "$OUT/gpu_settings_after.json" >/dev/null
    if ! cmp -s "$OUT/gpu_settings_before.json" "$OUT/gpu_settings_after.json"; then
        status=failed
        reason="GPU SETTINGS CHANGED during the check: compare gpu_settings_before.json and gpu_settings_after.json and restore them (e.g. nvidia-smi -i N -pl WATTS)"
        record gpu_settings failed 0 "$reason"
        say "$reason"
        diff "$OUT/gpu_settings_before.json" "$OUT/gpu_settings_after.json" | sed 's/^/    /'
    else
        record gpu_settings ok 0 "power limit, persistence mode and application clocks unchanged"
    fi
fi
if grep -qE $'\t(failed|timeout)\t' "$STEPS" && [[ $status == ok ]]; then
    status=failed
    reason="some steps failed (see gpu_check.json and logs/)"
elif grep -q $'\ttime budget spent' "$STEPS" && [[ $status == ok ]]; then
    status=failed
    reason="the time budget (GPU_CHECK_BUDGET_S=$BUDGET_S) ran out before: $(grep $'\ttime budget spent' "$STEPS" | cut -f1 | paste -sd, -)"
elif grep -q $'\tskipped\t' "$STEPS" && [[ $status == ok ]]; then
    reason="passed; skipped: $(grep $'\tskipped\t' "$STEPS" | cut -f1 | paste -sd, -)"
fi
summary "$status" "$reason"
ARCHIVE="$(mktemp)"
tar -czf "$ARCHIVE" -C "$OUT" --exclude='*.ckpt' --exclude=site --exclude=gpu_check.tar.gz . && mv "$ARCHIVE" "$OUT/gpu_check.tar.gz"
say "$status: $reason ($(($(date +%s) - START_S))s); outputs in $OUT"
[[ $status == ok ]]
