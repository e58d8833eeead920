#!/usr/bin/env bash
# make demo's last step: run the LLM program that `python -m cuda_gqa.export.llm ... --reference-tokens N`
# wrote to DIR/model.pte through cuda_gqa_llm_runner on the GPU, checking its greedy tokens and logits
# against eager PyTorch's (DIR/expected_*.bin). Without an NVIDIA driver it says what to run where.
# Usage: demo_llm.sh DIR RUNNER
set -u
dir=${1:?usage: demo_llm.sh DIR RUNNER}
runner=${2:?usage: demo_llm.sh DIR RUNNER}
new_tokens=$(( $(stat -c %s "$dir/expected_tokens.bin") / 8 ))
command=("$runner" "$dir/model.pte" --prompt "$dir/prompt.bin" --new-tokens "$new_tokens"
         --expected-tokens "$dir/expected_tokens.bin" --expected-logits "$dir/expected_logits.bin")
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 ' ; then
  echo "[demo] no NVIDIA driver on this machine (libcuda.so.1): the program is exported, not run."
  echo "[demo] on a GPU machine: ${command[*]}"
  exit 0
fi
echo "[demo] generating $new_tokens tokens on the GPU, checked against eager PyTorch"
"${command[@]}"
