"""Payloads, programs and a fake libcuda.so.1 for the C++ runtime's CPU tests
(shared by the test files of tests/runtime through conftest.py's fixtures)."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from cuda_gqa.backends.serialization import PAYLOAD_VERSION, serialize_payload
from cuda_gqa.backends.serialization import payload_generated as fb

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "build" / "libcuda_gqa_backend.so"
RUNNER = ROOT / "build" / "cuda_gqa_runner"
K, P = fb.ParamKind, fb.ParamType


def u8(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


def param(kind, type_, arg=0, dim=0, divisibility=0, f32=0.0):
    return fb.KernelParamT(kind=kind, type=type_, arg=arg, dim=dim, divisibility=divisibility, f32Value=f32)


def sample_payload(cubin_archs=(80, 90), ptx_arch=80, sizes=(1, 4, 16, 64)) -> fb.PayloadT:
    """A GQA-shaped payload (q, k, v -> out) with fake images: validation never loads them."""
    spec = lambda: fb.TensorSpecT(dtype=fb.DType.Float16, sizes=list(sizes))  # noqa: E731
    K, P = fb.ParamKind, fb.ParamType
    params = [param(K.TensorPointer, P.Pointer, arg=a, divisibility=16) for a in range(4)]
    params += [param(K.TensorStride, P.Int32, arg=0, dim=d, divisibility=16 if d < 3 else 0) for d in range(4)]
    params += [param(K.TensorSize, P.Int32, arg=1, dim=2),
               param(K.Float32Constant, P.Float32, f32=0.125),
               param(K.GlobalScratch, P.Pointer), param(K.ProfileScratch, P.Pointer)]
    grid = [fb.GridDimT(factors=[fb.GridFactorT(arg=0, dim=2, divisor=64)]),
            fb.GridDimT(factors=[fb.GridFactorT(arg=0, dim=0, divisor=1), fb.GridFactorT(arg=0, dim=1, divisor=1)]),
            fb.GridDimT()]
    kernel = fb.KernelT(
        name="gqa_attention_fwd",
        cubins=[fb.CubinT(arch=a, image=u8(b"\x7fELF" + bytes([a]) * 64)) for a in cubin_archs],
        ptx=u8(f".version 8.7\n.target sm_{ptx_arch}\n".encode()) if ptx_arch else None, ptxArch=ptx_arch or 0,
        numWarps=4, sharedMemBytes=65536, globalScratchBytes=0, profileScratchBytes=0,
        params=params, grid=grid)
    return fb.PayloadT(inputs=[spec(), spec(), spec()], outputs=[spec()], plans=[fb.LaunchPlanT(kernels=[kernel])])


def pack(payload: fb.PayloadT, version: int | None = None) -> bytes:
    if version is None:
        return serialize_payload(payload)
    import flatbuffers

    payload.version = version
    builder = flatbuffers.Builder(0)
    builder.Finish(payload.Pack(builder), file_identifier=b"CGQA")
    return bytes(builder.Output())


# Script text (for `python -c`) defining Add (x + y) and Wrapper (a module calling a lowered
# Add), for scripts that lower Add to a stand-in CudaGqaBackend they define next (the real
# preprocess is not imported).
ADD_MODULES = """
import sys, torch
from executorch.exir import to_edge
from executorch.exir.backend.backend_api import to_backend
from executorch.exir.backend.backend_details import BackendDetails, PreprocessResult

class Add(torch.nn.Module):
    def forward(self, x, y):
        return x + y

class Wrapper(torch.nn.Module):
    def __init__(self, lowered):
        super().__init__()
        self.lowered = lowered

    def forward(self, x, y):
        return self.lowered(x, y)
"""

# ... after which write_add_program(pte_path, specs, config) writes a .pte of x + y on float32
# (2, 64) lowered to the BackendDetails named CudaGqaBackend the script defines next.
ADD_PROGRAM_SCRIPT = ADD_MODULES + """
def write_add_program(pte_path, specs=(), config=None):
    inputs = (torch.ones(2, 64), torch.ones(2, 64))
    edge = to_edge(torch.export.export(Add(), inputs))
    lowered = to_backend("CudaGqaBackend", edge.exported_program(), list(specs))
    program = to_edge(torch.export.export(Wrapper(lowered), inputs)).to_executorch(config)
    open(pte_path, "wb").write(program.buffer)
"""

MAKE_PTE_SCRIPT = ADD_PROGRAM_SCRIPT + """
from executorch.exir.backend.compile_spec_schema import CompileSpec
from cuda_gqa.export.device_io import device_io_config

# Embeds a given payload as is.
class CudaGqaBackend(BackendDetails):
    payload = b""

    @staticmethod
    def preprocess(edge_program, compile_specs):
        return PreprocessResult(processed_bytes=CudaGqaBackend.payload)

# Triples: payload file, .pte file, target_device compile spec ("-": none; a "+io" suffix:
# the method's inputs and outputs stay in device memory too).
for payload_path, pte_path, device in zip(sys.argv[1::3], sys.argv[2::3], sys.argv[3::3]):
    CudaGqaBackend.payload = open(payload_path, "rb").read()
    target, _, io = device.partition("+")
    specs = [] if target == "-" else [CompileSpec("target_device", target.encode())]
    write_add_program(pte_path, specs, device_io_config() if io else None)
"""


def add_payload(sizes=(2, 64), version=None, max_rows=None, workspace_bytes=0, kernels=1, plans=1,
                waits_for_previous=False, cubin_archs=(80, 90), ptx_arch=80) -> bytes:
    """A payload whose delegate computes x + y on float32 (2, 64); fake images (cubins of
    cubin_archs, PTX for ptx_arch; 0: none); a workspace of workspace_bytes the kernel does not
    use. max_rows: rows are dynamic up to it (y's and the output's rows are x's). kernels=2: a
    second launch adds y to the output again (x + 2y), with waits_for_previous set as given.
    plans=2 (with max_rows > 2): the same launches in two plans, for up to 2 rows and above."""
    def spec(size_from=None):
        if max_rows is None:
            return fb.TensorSpecT(dtype=fb.DType.Float32, sizes=list(sizes))
        return fb.TensorSpecT(dtype=fb.DType.Float32, sizes=[-1, sizes[1]], maxSizes=[max_rows, sizes[1]],
                              sizeFrom=size_from)
    like_x = [fb.DimSourceT(dim=0, arg=0, argDim=0)]
    payload = sample_payload(cubin_archs, ptx_arch)
    payload.inputs, payload.outputs = [spec(), spec(like_x if max_rows else None)], [spec(like_x)]
    kernel = payload.plans[0].kernels[0]
    kernel.name = "add_f32"  # the entry point the fake driver below implements
    kernel.globalScratchBytes, kernel.globalScratchAlign = 256, 1024  # exercises scratch sizing in init
    kernel.params = [param(K.TensorPointer, P.Pointer, arg=a, divisibility=16) for a in range(3)]
    kernel.params.append(param(K.TensorSize, P.Int32, arg=0, dim=1))
    kernel.grid = [fb.GridDimT(factors=[fb.GridFactorT(arg=0, dim=0, divisor=1)]), fb.GridDimT(), fb.GridDimT()]
    if kernels == 2:
        again = copy.deepcopy(kernel)
        again.params[0].arg = 2  # out = out + y
        again.waitsForPrevious = waits_for_previous
        payload.plans[0].kernels.append(again)
    if plans == 2:
        payload.plans.append(copy.deepcopy(payload.plans[0]))
        payload.plans[0].when = [fb.SizeRangeT(arg=0, dim=0, min=0, max=2)]
        payload.plans[1].when = [fb.SizeRangeT(arg=0, dim=0, min=3, max=max_rows)]
    payload.workspaceBytes = workspace_bytes
    return pack(payload, version=version)


def make_programs(folder: Path) -> Path:
    """.pte files embedding: a good payload, a version-2 one, ones with dynamic rows up to
    4 and up to 1 (good.pte, v2.pte, dynamic.pte, dynamic_small.pte), the good one planned by ExecuTorch's device-aware
    memory planning with the delegate's inputs and outputs on cuda:0 (device.pte; the
    program copies its inputs there) and with the method's inputs and outputs there too
    (device_io.pte), and input files x.bin (2x64 ones) and wrong_size.bin."""
    payloads = {"good": (add_payload(), "-"), "v2": (add_payload(version=PAYLOAD_VERSION + 1), "-"),
                "dynamic": (add_payload(max_rows=4), "-"), "dynamic_small": (add_payload(max_rows=1), "-"),
                "device": (add_payload(), "cuda:0"),
                "device_io": (add_payload(), "cuda:0+io")}
    argv = []
    for name, (data, device) in payloads.items():
        (folder / f"{name}.bin").write_bytes(data)
        argv += [str(folder / f"{name}.bin"), str(folder / f"{name}.pte"), device]
    result = subprocess.run([sys.executable, "-c", MAKE_PTE_SCRIPT, *argv], capture_output=True, text=True,
                            timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    np.ones((2, 64), np.float32).tofile(folder / "x.bin")
    np.ones((3, 64), np.float32).tofile(folder / "wrong_size.bin")
    return folder


# the execute path against a fake libcuda.so.1 that runs on the host

FAKE_DRIVER_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
typedef int CUresult;
typedef unsigned long long CUdeviceptr;
static int launches;  /* kernels run, directly or as graph nodes */
/* Launch and graph calls counted for tests (fake_graph_calls reads them). */
enum { DIRECT_LAUNCHES, GRAPH_CREATES, NODES_ADDED, INSTANTIATES, NODE_UPDATES, GRAPH_LAUNCHES, EXEC_DESTROYS,
       GRAPH_DESTROYS, PROGRAMMATIC_LAUNCHES, PROGRAMMATIC_EDGES, ORDINARY_EDGES_ADDED, NUM_COUNTS };
static long long counts[NUM_COUNTS];
void fake_graph_calls(long long* out) { for (int i = 0; i < NUM_COUNTS; ++i) out[i] = __atomic_load_n(&counts[i], __ATOMIC_RELAXED); }
static void count(int what) { __atomic_add_fetch(&counts[what], 1, __ATOMIC_RELAXED); }
/* fake_fail(names): the graph calls of these exported names (comma-separated) fail from now on ("": none);
   cuGraphAddDependencies_v2 then refuses programmatic edges only. */
static char fail_call[128];
void fake_fail(const char* names) { snprintf(fail_call, sizeof(fail_call), "%s", names); }
static int failing(const char* name) {
  const size_t n = strlen(name);
  for (const char* p = fail_call; (p = strstr(p, name)) != NULL; p += n)
    if ((p == fail_call || p[-1] == ',') && (p[n] == ',' || p[n] == '\0')) return 1;
  return 0;
}
/* Calls counted for tests (fake_calls reads them): copies and synchronisations. */
static int copies_to_device, copies_to_host, synchronizations, sync_copies;
void fake_calls(int* htod, int* dtoh, int* syncs) { *htod = copies_to_device; *dtoh = copies_to_host; *syncs = synchronizations; }
CUresult cuGetErrorName(CUresult e, const char** s) { *s = e ? "CUDA_ERROR_FAKE" : "CUDA_SUCCESS"; return 0; }
CUresult cuGetErrorString(CUresult e, const char** s) { *s = e ? "fake failure" : "no error"; return 0; }
CUresult cuInit(unsigned f) { (void)f; return 0; }
CUresult cuDriverGetVersion(int* v) { *v = 13000; return 0; }
CUresult cuDeviceGetCount(int* n) { *n = 2; return 0; }
CUresult cuDeviceGet(int* d, int i) { *d = i; return 0; }
CUresult cuDeviceGetName(char* s, int n, int d) { (void)d; snprintf(s, n, "Fake GPU"); return 0; }
/* The devices' compute capability, major*10+minor: sm_90 unless fake_compute_capability changes it. */
static int compute_capability = 90;
void fake_compute_capability(int cc) { compute_capability = cc; }
CUresult cuDeviceGetAttribute(int* v, int attr, int d) {
  (void)d;
  *v = attr == 75 ? compute_capability / 10 : attr == 76 ? compute_capability % 10 : attr == 97 ? 232448 : 0;
  return 0;
}
CUresult cuDevicePrimaryCtxRetain(void** c, int d) { (void)d; *c = (void*)1; return 0; }
CUresult cuDevicePrimaryCtxRelease_v2(int d) {
  (void)d;
  fprintf(stderr, "fake: context released after %d launches, %d staging copies, %d synchronous copies, "
          "%lld graph launches, %lld direct launches\n", launches, copies_to_device + copies_to_host, sync_copies,
          counts[GRAPH_LAUNCHES], counts[DIRECT_LAUNCHES]);
  return 0;
}
CUresult cuCtxSetCurrent(void* c) { (void)c; return 0; }
CUresult cuStreamCreate(void** s, unsigned f) { (void)f; *s = (void*)2; return 0; }
CUresult cuStreamDestroy_v2(void* s) { fprintf(stderr, "fake: stream %p destroyed\n", s); return 0; }
/* Host functions run at the next synchronisation (kernels run at launch). */
typedef void (*HostFn)(void*);
static HostFn pending_fn;
static void* pending_data;
CUresult cuStreamSynchronize(void* s) {
  (void)s;
  __atomic_add_fetch(&synchronizations, 1, __ATOMIC_RELAXED);
  if (pending_fn) { HostFn fn = pending_fn; pending_fn = 0; fn(pending_data); }
  return 0;
}
CUresult cuCtxSynchronize(void) { return cuStreamSynchronize((void*)2); }
CUresult cuLaunchHostFunc(void* s, HostFn fn, void* data) { (void)s; pending_fn = fn; pending_data = data; return 0; }
/* Streams 0x2 (created) and 0x5 belong to context 0x1; 0x6 to another one; others are invalid. */
CUresult cuStreamGetCtx(void* s, void** c) {
  if (s == (void*)2 || s == (void*)5) { *c = (void*)1; return 0; }
  if (s == (void*)6) { *c = (void*)9; return 0; }
  return 400;
}
/* Device time: each launch takes 125 us; an event records the clock. */
static unsigned long long device_ns;
CUresult cuEventCreate(unsigned long long** e, unsigned f) { (void)f; *e = calloc(1, 8); return *e ? 0 : 2; }
CUresult cuEventDestroy_v2(unsigned long long* e) { free(e); return 0; }
CUresult cuEventRecord(unsigned long long* e, void* s) { (void)s; *e = device_ns; return 0; }
CUresult cuEventElapsedTime_v2(float* ms, unsigned long long* a, unsigned long long* b) { *ms = (float)((*b - *a) / 1e6); return 0; }
/* Fresh device memory holds garbage, as on a GPU. Allocations counted for tests (fake_allocations reads them):
   all made so far, and those not freed yet. */
static long long allocations, live_allocations;
void fake_allocations(long long* total, long long* live) {
  *total = __atomic_load_n(&allocations, __ATOMIC_RELAXED); *live = __atomic_load_n(&live_allocations, __ATOMIC_RELAXED);
}
CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t n) {
  *p = (CUdeviceptr)aligned_alloc(256, (n + 255) / 256 * 256);
  if (*p) memset((void*)*p, 0xA5, n);
  if (*p) { __atomic_add_fetch(&allocations, 1, __ATOMIC_RELAXED); __atomic_add_fetch(&live_allocations, 1, __ATOMIC_RELAXED); }
  return *p ? 0 : 2;
}
CUresult cuMemFree_v2(CUdeviceptr p) { free((void*)p); __atomic_sub_fetch(&live_allocations, 1, __ATOMIC_RELAXED); return 0; }
static unsigned long long zeroed_bytes;
unsigned long long fake_zeroed_bytes(void) { return zeroed_bytes; }
CUresult cuMemsetD8_v2(CUdeviceptr d, unsigned char v, size_t n) {
  memset((void*)d, v, n);
  if (v == 0) __atomic_add_fetch(&zeroed_bytes, n, __ATOMIC_RELAXED);
  return 0;
}
CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void* h, size_t n) {
  memcpy((void*)d, h, n); __atomic_add_fetch(&sync_copies, 1, __ATOMIC_RELAXED); return 0;
}
CUresult cuMemcpyDtoH_v2(void* h, CUdeviceptr d, size_t n) {
  memcpy(h, (void*)d, n); __atomic_add_fetch(&sync_copies, 1, __ATOMIC_RELAXED); return 0;
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* h, size_t n, void* s) {
  (void)s; memcpy((void*)d, h, n); __atomic_add_fetch(&copies_to_device, 1, __ATOMIC_RELAXED); return 0;
}
CUresult cuMemcpyDtoHAsync_v2(void* h, CUdeviceptr d, size_t n, void* s) {
  (void)s; memcpy(h, (void*)d, n); __atomic_add_fetch(&copies_to_host, 1, __ATOMIC_RELAXED); return 0;
}
/* Loads what runs on the device, as a driver does: a fake cubin ("\x7f" "ELF", then its arch) of the device's
   major and a minor up to its own, or fake PTX (".target sm_<arch>", NUL-terminated) of an arch up to the
   device's compute capability. */
CUresult cuModuleLoadDataEx(void** m, const void* image, unsigned n, void* o, void** v) {
  (void)n; (void)o; (void)v;
  const int cubin = memcmp(image, "\x7f" "ELF", 4) == 0;
  const char* target = cubin ? NULL : strstr((const char*)image, ".target sm_");
  int arch = 0;
  if (cubin) {
    arch = ((const unsigned char*)image)[4];
    if (arch / 10 != compute_capability / 10) return 200;
  } else if (target == NULL || sscanf(target, ".target sm_%d", &arch) != 1) {
    return 200;
  }
  if (arch > compute_capability) return 200;
  fprintf(stderr, "fake: module loaded from %s for sm_%d\n", cubin ? "a cubin" : "PTX", arch);
  *m = (void*)3;
  return 0;
}
CUresult cuModuleUnload(void* m) { (void)m; return 0; }
CUresult cuModuleGetFunction(void** f, void* m, const char* name) { (void)m; *f = (void*)4; return strcmp(name, "add_f32") ? 500 : 0; }
CUresult cuFuncSetAttribute(void* f, int a, int v) { (void)f; return a == 8 && v == 65536 ? 0 : 1; }
CUresult cuFuncGetAttribute(int* v, int a, void* f) { (void)f; *v = a == 0 ? 1024 : 0; return 0; }
/* add_f32(x, y, out, int32 cols), one CTA per row: the kernel of every fake payload */
static int valid_launch(void* f, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned smem) {
  return f == (void*)4 && gy == 1 && gz == 1 && bx == 128 && by == 1 && bz == 1 && smem == 65536;
}
static void run_add(unsigned gx, const float* x, const float* y, float* out, int cols) {
  usleep(100);  /* a kernel takes time: executes of several threads overlap */
  for (unsigned r = 0; r < gx; ++r)
    for (int c = 0; c < cols; ++c) out[r * cols + c] = x[r * cols + c] + y[r * cols + c];
  /* Atomic: the concurrency tests launch from several threads. */
  __atomic_add_fetch(&launches, 1, __ATOMIC_RELAXED);
  __atomic_add_fetch(&device_ns, 125000, __ATOMIC_RELAXED);
}
CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned smem, void* s, void** params, void** extra) {
  (void)s; (void)extra;
  if (!valid_launch(f, gy, gz, bx, by, bz, smem)) return 1;
  count(DIRECT_LAUNCHES);
  run_add(gx, *(const float**)params[0], *(const float**)params[1], *(float**)params[2], *(int*)params[3]);
  return 0;
}
#ifndef FAKE_NO_LAUNCH_KERNEL_EX
/* cuLaunchKernelEx (CUDA 12.0+): cuLaunchKernel's launch, counted as programmatic when its one attribute is
   CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION (6) set to 1. */
typedef struct {  /* CUlaunchAttribute */
  int id; char pad[4]; union { char pad[64]; int programmatic_stream_serialization_allowed; void* align; } value;
} LaunchAttribute;
typedef struct {  /* CUlaunchConfig */
  unsigned gx, gy, gz, bx, by, bz, smem; void* stream; LaunchAttribute* attrs; unsigned num_attrs;
} LaunchConfig;
CUresult cuLaunchKernelEx(const LaunchConfig* c, void* f, void** params, void** extra) {
  if (c->num_attrs != 1 || c->attrs[0].id != 6 || c->attrs[0].value.programmatic_stream_serialization_allowed != 1)
    return 1;
  const CUresult r = cuLaunchKernel(f, c->gx, c->gy, c->gz, c->bx, c->by, c->bz, c->smem, c->stream, params,
                                    extra);
  if (r == 0) count(PROGRAMMATIC_LAUNCHES);
  return r;
}
#endif
#ifndef FAKE_NO_GRAPHS
/* The graph API: kernel nodes of add_f32 in a chain, run by cuGraphLaunch as cuLaunchKernel runs them. */
typedef struct {  /* CUDA_KERNEL_NODE_PARAMS_v2 */
  void* func; unsigned gx, gy, gz, bx, by, bz, smem; void** params; void** extra; void* kern; void* ctx;
} NodeParams;
typedef struct { unsigned gx; unsigned long long values[4]; } Launch;  /* what a node runs */
#define MAX_NODES 8
/* Node handles: Launch*. joined[i]: node i depends on node i - 1, from cuGraphAddKernelNode_v2 or an edge. */
typedef struct { int n; Launch* nodes[MAX_NODES]; int joined[MAX_NODES]; } Graph;
typedef struct { int n; Launch* from[MAX_NODES]; Launch launches[MAX_NODES]; } Exec;
static CUresult take(Launch* l, const NodeParams* p) {
  if (!valid_launch(p->func, p->gy, p->gz, p->bx, p->by, p->bz, p->smem) || p->extra || p->kern || p->ctx) return 1;
  l->gx = p->gx;
  for (int i = 0; i < 4; ++i) memcpy(&l->values[i], p->params[i], 8);  /* read during the call, as the driver does */
  return 0;
}
CUresult cuGraphCreate(Graph** g, unsigned flags) {
  if (failing("cuGraphCreate") || flags) return 999;
  *g = calloc(1, sizeof(Graph)); count(GRAPH_CREATES); return 0;
}
CUresult cuGraphAddKernelNode_v2(Launch** node, Graph* g, Launch** deps, size_t num_deps, const NodeParams* p) {
  if (failing("cuGraphAddKernelNode_v2") || g->n == MAX_NODES) return 999;
  /* A node depends on the one before or, until an edge joins them, on nothing: a chain in launch order. */
  if (num_deps > 1 || (num_deps == 1 && (g->n == 0 || deps[0] != g->nodes[g->n - 1]))) return 1;
  Launch* l = calloc(1, sizeof(Launch));
  if (take(l, p)) { free(l); return 1; }
  g->joined[g->n] = num_deps == 1;
  g->nodes[g->n++] = l; *node = l; count(NODES_ADDED); return 0;
}
#ifndef FAKE_NO_GRAPH_ADD_DEPENDENCIES
/* cuGraphAddDependencies_v2 (CUDA 12.3+): joins a node to the one before, by an ordinary edge (no edge data, or
   zeroed) or a programmatic one (type CU_GRAPH_DEPENDENCY_TYPE_PROGRAMMATIC from the upstream kernel node's
   CU_GRAPH_KERNEL_NODE_PORT_PROGRAMMATIC, both 1); edges of each type counted. */
typedef struct { unsigned char from_port, to_port, type, reserved[5]; } EdgeData;  /* CUgraphEdgeData */
CUresult cuGraphAddDependencies_v2(Graph* g, Launch** from, Launch** to, const EdgeData* edges, size_t n) {
  static const EdgeData ordinary;
  const EdgeData* e = edges ? edges : &ordinary;
  int i = 1;
  while (i < g->n && g->nodes[i] != to[0]) ++i;
  if (n != 1 || i >= g->n || from[0] != g->nodes[i - 1] || g->joined[i] || e->to_port) return 1;
  for (int b = 0; b < 5; ++b) if (e->reserved[b]) return 1;
  if (e->type == 1 && e->from_port == 1) {
    if (failing("cuGraphAddDependencies_v2")) return 999;
    count(PROGRAMMATIC_EDGES);
  } else if (e->type == 0 && e->from_port == 0) {
    count(ORDINARY_EDGES_ADDED);
  } else {
    return 1;
  }
  g->joined[i] = 1;
  return 0;
}
#endif
CUresult cuGraphInstantiateWithFlags(Exec** e, Graph* g, unsigned long long flags) {
  if (failing("cuGraphInstantiateWithFlags") || flags) return 999;
  for (int i = 1; i < g->n; ++i) if (!g->joined[i]) return 1;  /* not a chain */
  *e = calloc(1, sizeof(Exec));
  (*e)->n = g->n;
  for (int i = 0; i < g->n; ++i) { (*e)->from[i] = g->nodes[i]; (*e)->launches[i] = *g->nodes[i]; }
  count(INSTANTIATES); return 0;
}
CUresult cuGraphExecKernelNodeSetParams_v2(Exec* e, Launch* node, const NodeParams* p) {
  if (failing("cuGraphExecKernelNodeSetParams_v2")) return 999;
  for (int i = 0; i < e->n; ++i) {
    if (e->from[i] == node) { if (take(&e->launches[i], p)) return 1; count(NODE_UPDATES); return 0; }
  }
  return 1;
}
CUresult cuGraphLaunch(Exec* e, void* s) {
  (void)s;
  if (failing("cuGraphLaunch")) return 999;
  count(GRAPH_LAUNCHES);
  for (int i = 0; i < e->n; ++i) {
    const Launch* l = &e->launches[i];
    run_add(l->gx, (const float*)l->values[0], (const float*)l->values[1], (float*)l->values[2], (int)l->values[3]);
  }
  return 0;
}
CUresult cuGraphExecDestroy(Exec* e) { free(e); count(EXEC_DESTROYS); return 0; }
CUresult cuGraphDestroy(Graph* g) {
  for (int i = 0; i < g->n; ++i) free(g->nodes[i]);
  free(g); count(GRAPH_DESTROYS); return 0;
}
#endif
"""


def build_fake_driver(folder: Path, graphs: bool = True, launch_kernel_ex: bool = True,
                      graph_add_dependencies: bool = True) -> Path:
    """folder/libcuda.so.1 built from FAKE_DRIVER_C; None without a C compiler. Without what a
    driver before some CUDA version lacks: graphs=False, the graph API (its _v2 kernel-node
    calls are 12.0's); launch_kernel_ex=False, cuLaunchKernelEx (12.0);
    graph_add_dependencies=False, cuGraphAddDependencies_v2 (12.3)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    (folder / "fake_cuda.c").write_text(FAKE_DRIVER_C)
    lacks = {"-DFAKE_NO_GRAPHS": not graphs, "-DFAKE_NO_LAUNCH_KERNEL_EX": not launch_kernel_ex,
             "-DFAKE_NO_GRAPH_ADD_DEPENDENCIES": not graph_add_dependencies}
    subprocess.run([compiler, "-shared", "-fPIC", "-O1", *(flag for flag, on in lacks.items() if on), "-o",
                    str(folder / "libcuda.so.1"), str(folder / "fake_cuda.c")], check=True)
    return folder


def fake_env(folder: Path) -> dict:
    return {**os.environ, "LD_LIBRARY_PATH": f"{folder}:{os.environ.get('LD_LIBRARY_PATH', '')}"}


# A libcuda.so.1 from before cuLaunchHostFunc and friends: it loads, but lacks entry points.
OLD_DRIVER_C = r"""
typedef int CUresult;
CUresult cuGetErrorName(CUresult e, const char** s) { *s = "CUDA_ERROR_OLD"; return 0; }
CUresult cuInit(unsigned f) { (void)f; return 0; }
"""


def build_old_driver(folder: Path) -> Path:
    """folder/libcuda.so.1 built from OLD_DRIVER_C; None without a C compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    (folder / "old_cuda.c").write_text(OLD_DRIVER_C)
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(folder / "libcuda.so.1"), str(folder / "old_cuda.c")],
                   check=True)
    return folder
