#!/usr/bin/env bash
# Run every exported case of a GPU bundle (made by `make gpu-bundle`) through
# cuda_gqa_runner, comparing with the eager PyTorch outputs exported beside it
# and timing it (10 warm-up and 100 timed executes unless the options say
# otherwise), then print one summary line per case.
# Usage: run_bundle.sh BUNDLE_DIR [runner options...]
set -u
bundle=${1:?usage: run_bundle.sh BUNDLE_DIR [runner options...]}
shift
failed=0
passed=0
summary=()
for case_dir in "$bundle"/cases/*/; do
  name=$(basename "$case_dir")
  echo "== $name"
  inputs=()
  for f in "$case_dir"/input_*.bin; do inputs+=(--input "$f"); done
  # Later options win: the caller's override these defaults.
  log=$("$bundle/cuda_gqa_runner" "$case_dir/model.pte" "${inputs[@]}" \
          --expected "$case_dir/expected_0.bin" --warmup 10 --iterations 100 "$@" 2>&1)
  status=$?
  echo "$log"
  if [ "$status" -eq 0 ]; then
    passed=$((passed + 1))
    result=PASS
  else
    failed=$((failed + 1))
    result="FAIL (exit $status)"
  fi
  field() { echo "$log" | sed -n "s/^$1: median \([0-9.-]*\) us.*/\1/p"; }
  summary+=("$(printf '%-28s %12s %12s %14s  %s' "$name" "$(field execute)" "$(field kernels)" \
                "$(field 'host overhead')" "$result")")
done
echo
printf '%-28s %12s %12s %14s  %s\n' case "execute us" "kernels us" "overhead us" result
printf '%s\n' "${summary[@]}"
echo "runner: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
