#!/usr/bin/env bash
# Download the wheels a GPU session carries (benchmarks/gpu_wheels.txt: what the device image lacks) into .whl/ for
# the device's interpreter (CPython 3.12, manylinux x86-64), keep .whl/ out of git, and check the folder: one wheel
# per pin, nothing else, and the working tree plus wheels within the 64 MiB a device call carries.
#   bash benchmarks/gpu_wheels.sh          (from the repository root, in the project's virtual environment)
# A wheel that cannot be had for that platform is named; a pure-Python one is then taken for this interpreter (pure
# wheels install anywhere); a platform wheel never is.
set -u
cd "$(dirname "$0")/.."
DEST="${WHEELS:-.whl}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$DEST"
if ! git check-ignore -q "$DEST/x.whl" 2>/dev/null; then
  echo "/${DEST#./}/" >> "$(git rev-parse --git-common-dir)/info/exclude"
  echo "gpu_wheels: $DEST/ added to $(git rev-parse --git-common-dir)/info/exclude"
fi
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
  manylinux2014_x86_64 manylinux1_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64; do
  platforms+=(--platform "$p")
done

failed=()
while read -r pin; do
  name="${pin%%==*}"
  norm=$(echo "$name" | tr '[:upper:]-.' '[:lower:]__')
  for old in "$DEST"/*.whl; do  # other versions of this package would stop the install: keep the pinned one
    [ -e "$old" ] || continue
    base=$(basename "$old" | tr '[:upper:]-.' '[:lower:]__')
    case "$base" in "${norm}"_[0-9]*) [[ "$(basename "$old")" == *"-${pin#*==}-"* ]] || rm -v "$old" ;; esac
  done
  if "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${platforms[@]}" -d "$DEST" "$pin" 2>/tmp/gpu_wheels.err; then
    echo "gpu_wheels: $pin for CPython 3.12 manylinux x86-64"
    continue
  fi
  echo "gpu_wheels: $pin: no wheel for CPython 3.12 manylinux x86-64 ($(grep -m1 ERROR /tmp/gpu_wheels.err))"
  tmp=$(mktemp -d)
  if "$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$tmp" "$pin" 2>/dev/null \
      && ls "$tmp" | grep -q -- '-none-any\.whl$'; then
    mv "$tmp"/*.whl "$DEST"/ && echo "gpu_wheels: $pin: took the pure-Python wheel instead"
  else
    echo "gpu_wheels: $pin: FAILED: not even a pure-Python wheel (a platform wheel for this machine would not run there)"
    failed+=("$pin")
  fi
  rm -rf "$tmp"
done < <(grep -v '^\s*#' benchmarks/gpu_wheels.txt | sed 's/#.*//; s/[[:space:]]//g' | grep .)

"$PYTHON" benchmarks/gpu_session.py check --wheels "$DEST"
status=$?
if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu_wheels: could not fetch: ${failed[*]}"
  exit 1
fi
exit $status
