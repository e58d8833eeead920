#!/usr/bin/env bash
# Run every exported case of a GPU bundle (made by `make gpu-bundle`) through
# cuda_gqa_runner, comparing with the eager PyTorch outputs exported beside it
# and timing it (10 warm-up and 100 timed executes unless the options say
# otherwise; a case's runner_args file adds options), then print one summary
# line per case (and with the runner's --compare-launch-graphs a second one,
# CASE/no-graphs: the case timed with CudaGqaBackend's launch_graphs off).
# Usage: run_bundle.sh BUNDLE_DIR [runner options...]
# RUNNER_WRAPPER runs the runner under a tool, e.g.
#   RUNNER_WRAPPER="compute-sanitizer --tool memcheck --error-exitcode 3" \
#     run_bundle.sh .gpu --warmup 0 --iterations 1
set -u
read -ra wrapper <<< "${RUNNER_WRAPPER:-}"
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
  # Options the export wrote for this case (e.g. --inputs-on-device).
  case_args=()
  if [ -f "$case_dir/runner_args" ]; then read -ra case_args < "$case_dir/runner_args"; fi
  # Later options win: the caller's override these defaults.
  log=$("${wrapper[@]}" "$bundle/cuda_gqa_runner" "$case_dir/model.pte" "${inputs[@]}" \
          --expected "$case_dir/expected_0.bin" --warmup 10 --iterations 100 "${case_args[@]}" "$@" 2>&1)
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
  # --compare-launch-graphs: the same case with CudaGqaBackend's launch_graphs off.
  off=" (launch graphs off)"
  if [ -n "$(field "execute$off")" ]; then
    summary+=("$(printf '%-28s %12s %12s %14s  %s' "$name/no-graphs" "$(field "execute$off")" \
                  "$(field "kernels$off")" "$(field "host overhead$off")" "$result")")
  fi
done
echo
printf '%-28s %12s %12s %14s  %s\n' case "execute us" "kernels us" "overhead us" result
printf '%s\n' "${summary[@]}"
echo "runner: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
