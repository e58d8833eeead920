#!/usr/bin/env bash
# Run every exported case of a GPU bundle (made by `make gpu-bundle`) through
# cuda_gqa_runner, comparing with the eager PyTorch outputs exported beside it.
# Usage: run_bundle.sh BUNDLE_DIR [runner options...]
set -u
bundle=${1:?usage: run_bundle.sh BUNDLE_DIR [runner options...]}
shift
failed=0
passed=0
for case_dir in "$bundle"/cases/*/; do
  name=$(basename "$case_dir")
  echo "== $name"
  inputs=()
  for f in "$case_dir"/input_*.bin; do inputs+=(--input "$f"); done
  if "$bundle/cuda_gqa_runner" "$case_dir/model.pte" "${inputs[@]}" \
       --expected "$case_dir/expected_0.bin" "$@"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
  fi
done
echo "runner: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
