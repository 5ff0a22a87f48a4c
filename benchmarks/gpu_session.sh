#!/usr/bin/env bash
# One GPU session end to end, in order of value, each part under its own timeout, logs under $OUT (what each part
# runs, and why in that order: benchmarks/gpu_session.py; how to run it and read it: docs/distributed.md, "A GPU
# session").
#   bash benchmarks/gpu_session.sh             on the GPU machine, from the repository root, the wheels in .whl/
#                                              (bash benchmarks/gpu_wheels.sh fills it on a machine with a registry)
#   bash benchmarks/gpu_session.sh --dry-run   rehearsal on CPU (run it from the project's venv: its versions are
#                                              the rehearsal's), every part at --tiny size
#   bash benchmarks/gpu_session.sh --check     seconds: the wheels cover the image's gaps, every part's arguments parse
set -u
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
case "${1:-}" in
  --dry-run) shift; exec "$PYTHON" benchmarks/gpu_session.py dry-run "$@" ;;
  --check) shift; exec "$PYTHON" benchmarks/gpu_session.py check "$@" ;;
  *) exec "$PYTHON" benchmarks/gpu_session.py run "$@" ;;
esac
