#!/usr/bin/env bash
# GPU check: a few bf16-mixed steps of every robust objective (NoRobust, KLReweighter, WassersteinPenalty
# finite_difference with and without activation checkpointing, exact; KL with a resident, sharded reference instead
# of cached reference log-probs; LoRA adapters with the base as reference, and rdpo export of each strategy's
# checkpoint; padding-free batches with the fused log-probs, and the full-logits path; the objective over the
# optimizer batch against one piece; adapter-only checkpoints resumed and exported; the router term of a Mixtral)
# under DDP, FSDP1 and FSDP2, on all visible GPUs, then QLoRA (4-bit NF4 base) on one GPU; prints PASS/FAIL with the
# median step time. Never run by the tests.
#   bash benchmarks/gpu_check.sh            (from the repository root; STEPS=6, PER_STRATEGY_TIMEOUT=150 s by default)
# Settings (environment):
#   STRATEGIES="ddp fsdp fsdp2 single"   which strategies, in this order (single: QLoRA on one GPU)
#   TIMEOUTS="ddp=60 fsdp2=70"           per-strategy timeouts in seconds (the others: PER_STRATEGY_TIMEOUT)
#   PARALLEL=1                           run the strategies at once (one GPU holds them all; step times then
#                                        share the GPU: for correctness, not speed)
#   LOG_DIR=dir                          keep each strategy's stdout and stderr there (default: a temporary folder)
#   CPU_DRY_RUN=1                        no GPU: DDP and FSDP2 on 2 CPU processes with tiny models; FSDP1 and QLoRA
#                                        need a GPU: their cases are listed (arguments parsed), not run
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
export RDPO_CACHE="${RDPO_CACHE:-$(mktemp -d)}"
PYTHON="${PYTHON:-python}"
STEPS="${STEPS:-6}"
PER_STRATEGY_TIMEOUT="${PER_STRATEGY_TIMEOUT:-150}"
TIMEOUTS="${TIMEOUTS:-}"
PARALLEL="${PARALLEL:-0}"
CPU_DRY_RUN="${CPU_DRY_RUN:-0}"
LOG_DIR="${LOG_DIR:-$RDPO_CACHE}"
mkdir -p "$LOG_DIR"

dry=()
if [ "$CPU_DRY_RUN" = 1 ]; then
  dry=(--cpu-dry-run)
  STRATEGIES="${STRATEGIES:-ddp fsdp2}"
  for strategy in fsdp single; do  # GPU-only: parse their arguments and list their cases
    echo "gpu_check: $strategy skipped on CPU (FSDP1 and 4-bit QLoRA need a GPU); its cases:"
    "$PYTHON" benchmarks/gpu_check.py --strategy "$strategy" --steps "$STEPS" --list || exit 1
  done
else
  STRATEGIES="${STRATEGIES:-ddp fsdp fsdp2 single}"
  if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA GPU visible (CPU_DRY_RUN=1 rehearses it on CPU)" >&2
    exit 2
  fi
  "$PYTHON" -c "import torch; print('GPUs:', torch.cuda.device_count(), torch.cuda.get_device_name(0), 'torch', torch.__version__)"
fi

timeout_of() {  # the strategy's timeout from TIMEOUTS, else PER_STRATEGY_TIMEOUT
  local pair
  for pair in $TIMEOUTS; do
    [ "${pair%%=*}" = "$1" ] && { echo "${pair#*=}"; return; }
  done
  echo "$PER_STRATEGY_TIMEOUT"
}

run_strategy() {  # one strategy's cases in their own process, under their own timeout; stdout to LOG_DIR/<s>.out
  local strategy=$1 port=$2 start code limit
  limit=$(timeout_of "$strategy")
  start=$(date +%s)
  one_gpu=(); [ "$strategy" = single ] && one_gpu=(env CUDA_VISIBLE_DEVICES=0)  # QLoRA: one GPU
  GPU_CHECK_CACHE="$RDPO_CACHE/gpu_check_$strategy" MASTER_PORT=$port ${one_gpu[@]+"${one_gpu[@]}"} \
    timeout --kill-after=10 "$limit" "$PYTHON" benchmarks/gpu_check.py --strategy "$strategy" --steps "$STEPS" \
    ${dry[@]+"${dry[@]}"} > "$LOG_DIR/gpu_check_$strategy.out" 2> "$LOG_DIR/gpu_check_$strategy.err"
  code=$?
  {
    echo "gpu_check: $strategy finished with exit code $code in $(( $(date +%s) - start )) s (limit $limit s;" \
      "stderr: $LOG_DIR/gpu_check_$strategy.err)"
    if [ "$code" -ne 0 ]; then
      [ "$code" -eq 124 ] && echo "RESULT $strategy (run) FAIL timed out after $limit s" \
        || echo "RESULT $strategy (run) FAIL exit code $code"
    fi
  } >> "$LOG_DIR/gpu_check_$strategy.out"
}

port=29500
pids=()
for strategy in $STRATEGIES; do
  port=$((port + 7))
  if [ "$PARALLEL" = 1 ]; then
    OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}" run_strategy "$strategy" "$port" &
    pids+=($!)
  else
    run_strategy "$strategy" "$port"
    cat "$LOG_DIR/gpu_check_$strategy.out"
    grep -q "(run) FAIL" "$LOG_DIR/gpu_check_$strategy.out" && tail -n 15 "$LOG_DIR/gpu_check_$strategy.err"
  fi
done
if [ "$PARALLEL" = 1 ]; then
  wait "${pids[@]}"
  for strategy in $STRATEGIES; do
    cat "$LOG_DIR/gpu_check_$strategy.out"
    grep -q "(run) FAIL" "$LOG_DIR/gpu_check_$strategy.out" && tail -n 15 "$LOG_DIR/gpu_check_$strategy.err"
  done
fi

echo "=== summary ==="
results=()
for strategy in $STRATEGIES; do results+=("$LOG_DIR/gpu_check_$strategy.out"); done
grep -h '^RESULT' "${results[@]}"
passed=$(cat "${results[@]}" | grep -c '^RESULT .* PASS ')
failed=$(cat "${results[@]}" | grep -c '^RESULT .* FAIL')
expected=$(cat "${results[@]}" | awk '/^PLAN / {n += $3} END {print n + 0}')
echo "passed: $passed  failed: $failed  (expected $expected passes: the PLAN lines' cases of $STRATEGIES)"
[ "$failed" -eq 0 ] && [ "$passed" -eq "$expected" ]
