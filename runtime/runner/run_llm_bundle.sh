#!/usr/bin/env bash
# Run every LLM case of a GPU bundle (made by `make gpu-bundle`: a .pte from
# export_llm with a prompt and eager PyTorch's greedy generation beside it)
# through cuda_gqa_llm_runner, then print one summary line per case. A case
# with a model.ptd (external weights) is run with --data model.ptd.
# Usage: run_llm_bundle.sh BUNDLE_DIR [llm runner options...]
# RUNNER_WRAPPER runs the runner under a tool, as in run_bundle.sh.
set -u
read -ra wrapper <<< "${RUNNER_WRAPPER:-}"
bundle=${1:?usage: run_llm_bundle.sh BUNDLE_DIR [llm runner options...]}
shift
failed=0
passed=0
summary=()
for case_dir in "$bundle"/llm/*/; do
  name=$(basename "$case_dir")
  echo "== $name"
  new_tokens=$(( $(stat -c %s "$case_dir/expected_tokens.bin") / 8 ))
  data=()
  [ -f "$case_dir/model.ptd" ] && data=(--data "$case_dir/model.ptd")  # exported with --external-weights
  log=$("${wrapper[@]}" "$bundle/cuda_gqa_llm_runner" "$case_dir/model.pte" "${data[@]}" --prompt "$case_dir/prompt.bin" \
          --new-tokens "$new_tokens" --expected-tokens "$case_dir/expected_tokens.bin" \
          --expected-logits "$case_dir/expected_logits.bin" "$@" 2>&1)
  status=$?
  echo "$log"
  if [ "$status" -eq 0 ]; then
    passed=$((passed + 1))
    result=PASS
  else
    failed=$((failed + 1))
    result="FAIL (exit $status)"
  fi
  err=$(echo "$log" | sed -n 's/^logits: max_abs_err=\([^ ]*\) .*/\1/p')
  rate=$(echo "$log" | sed -n 's/^decode: .* \([0-9.]*\) tokens\/s$/\1/p')
  summary+=("$(printf '%-16s %8s %14s %12s  %s' "$name" "$new_tokens" "$err" "$rate" "$result")")
done
echo
printf '%-16s %8s %14s %12s  %s\n' case tokens "logits err" "tokens/s" result
printf '%s\n' "${summary[@]}"
echo "llm runner: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
