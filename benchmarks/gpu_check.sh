#!/usr/bin/env bash
# GPU check: a few bf16-mixed steps of every robust objective (NoRobust, KLReweighter, WassersteinPenalty
# finite_difference with and without activation checkpointing, exact; KL with a resident, sharded reference instead
# of cached reference log-probs; LoRA adapters with the base as reference, and rdpo export of each strategy's
# checkpoint) under DDP, FSDP1 and FSDP2, on all visible GPUs, then QLoRA (4-bit NF4 base) on one GPU; prints
# PASS/FAIL with the median step time. Sized for < 8 minutes on one node. Never run by the tests.
#   bash benchmarks/gpu_check.sh            (from the repository root; STEPS=6 and PER_STRATEGY_TIMEOUT=150 s by default)
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
export RDPO_CACHE="${RDPO_CACHE:-$(mktemp -d)}"
PYTHON="${PYTHON:-python}"
STEPS="${STEPS:-6}"
PER_STRATEGY_TIMEOUT="${PER_STRATEGY_TIMEOUT:-150}"

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA GPU visible" >&2
  exit 2
fi
"$PYTHON" -c "import torch; print('GPUs:', torch.cuda.device_count(), torch.cuda.get_device_name(0), 'torch', torch.__version__)"

results="$(mktemp)"
for strategy in ddp fsdp fsdp2 single; do
  export GPU_CHECK_CACHE="$RDPO_CACHE/gpu_check_$strategy"
  start=$(date +%s)
  one_gpu=(); [ "$strategy" = single ] && one_gpu=(env CUDA_VISIBLE_DEVICES=0)  # QLoRA: one GPU
  ${one_gpu[@]+"${one_gpu[@]}"} timeout --kill-after=10 "$PER_STRATEGY_TIMEOUT" "$PYTHON" benchmarks/gpu_check.py --strategy "$strategy" --steps "$STEPS" \
    > >(tee -a "$results") 2>"$RDPO_CACHE/gpu_check_$strategy.err"
  code=$?
  echo "gpu_check: $strategy finished with exit code $code in $(( $(date +%s) - start )) s (stderr: $RDPO_CACHE/gpu_check_$strategy.err)"
  if [ "$code" -ne 0 ]; then
    echo "RESULT $strategy (run) FAIL exit code $code; last stderr lines:" | tee -a "$results"
    tail -n 15 "$RDPO_CACHE/gpu_check_$strategy.err"
  fi
done

echo "=== summary ==="
grep '^RESULT' "$results"
passed=$(grep -c '^RESULT .* PASS ' "$results")
failed=$(grep -c '^RESULT .* FAIL' "$results")
echo "passed: $passed  failed: $failed  (expected 29 passes: 3 strategies x 9 cases, 2 QLoRA cases on one GPU)"
[ "$failed" -eq 0 ] && [ "$passed" -eq 29 ]
