"""Worker processes that run Triton compilations side by side.

Compiling a kernel is CPU-bound Python and MLIR plus a ptxas subprocess,
so threads do not overlap it: each compile goes to one of a few worker
processes (as many as this process may use CPUs; $CUDA_GQA_COMPILE_WORKERS
overrides, 1 compiles in this process). compile_in_batch() calls made within
`compiling_together()` are collected; when it exits they all start, on as
many threads, each waiting for its worker, and a progress line ("k/n") is
logged as each finishes (attention_plan runs every (kernel, arch) of a
payload in one batch). Collecting first is what makes n the batch's total.

Workers are started with "spawn" (torch's threads make fork unsafe) once
per process and reused. The kernel travels by import path; a kernel that
cannot (defined in __main__ or a closure), or a pool that broke, is
compiled in this process instead.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator, Optional

from .compiled_kernel import CompiledKernel

logger = logging.getLogger(__name__)

WORKERS_ENV = "CUDA_GQA_COMPILE_WORKERS"

_lock = threading.Lock()
_pool: Optional[ProcessPoolExecutor] = None


def worker_count() -> int:
    """$CUDA_GQA_COMPILE_WORKERS, else the CPUs this process may run on."""
    configured = os.environ.get(WORKERS_ENV, "").strip()
    if configured:
        if not configured.isdigit() or int(configured) < 1:
            raise ValueError(f"{WORKERS_ENV} must be a positive integer, got {configured!r}")
        return int(configured)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _resolve(module: str, name: str):
    """The object `name` (a qualified name) of `module`, imported."""
    found = importlib.import_module(module)
    for part in name.split("."):
        found = getattr(found, part)
    return found


def _import_path(fn) -> Optional[tuple[str, str]]:
    """(module, qualified name) under which a worker finds `fn`, or None."""
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module or not name or module == "__main__" or "<locals>" in name:
        return None
    try:
        found = _resolve(module, name)
    except (ImportError, AttributeError):
        return None
    return (module, name) if found is fn else None


def _compile_by_import_path(module: str, name: str, spec: dict) -> CompiledKernel:
    """Runs in a worker."""
    from .triton_to_cubin import compile_uncached

    return compile_uncached(_resolve(module, name), **spec)


def _get_pool(workers: int) -> ProcessPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
        return _pool


def _drop_pool(broken: ProcessPoolExecutor) -> None:
    global _pool
    with _lock:
        if _pool is broken:
            _pool = None
    broken.shutdown(wait=False, cancel_futures=True)


def _compile_in_this_process(compile_here: Callable[..., CompiledKernel], fn, spec: dict) -> CompiledKernel:
    # Triton parses kernel sources with ast.parse, which CPython 3.11 does not
    # allow in two threads at once: compilations here take turns.
    with _in_process_lock:
        return compile_here(fn, **spec)


_in_process_lock = threading.Lock()


def run_compile(compile_here: Callable[..., CompiledKernel], fn, spec: dict) -> CompiledKernel:
    """compile_here(fn, **spec), in a worker process when there are several."""
    workers = worker_count()
    path = _import_path(fn) if workers > 1 else None
    if path is None:
        return _compile_in_this_process(compile_here, fn, spec)
    pool = _get_pool(workers)
    try:
        return pool.submit(_compile_by_import_path, *path, spec).result()
    except BrokenProcessPool as e:
        logger.warning("compile worker pool broke (%s); compiling in this process. Workers import the main "
                       "module: a script run as `python script.py` needs its top-level code under "
                       "`if __name__ == \"__main__\":`", e)
        _drop_pool(pool)
        return _compile_in_this_process(compile_here, fn, spec)


class _Batch:
    """Compilations asked for inside one compiling_together(). They start only
    when it exits, all at once, so each progress line can say "k of all"."""

    def __init__(self):
        # (compile_one, archs, use), as compile_in_batch was given them
        self.jobs: list[tuple[Callable[[int], CompiledKernel], list[int],
                              Callable[[list[CompiledKernel]], None]]] = []

    def run(self) -> None:
        """Compile every (job, arch) side by side, then hand each job its results in order."""
        total = sum(len(archs) for _, archs, _ in self.jobs)
        start, finished = time.perf_counter(), itertools.count(1)  # next(): one C call, thread-safe under the GIL

        def log(future: Future, arch: int) -> None:
            if future.cancelled() or future.exception() is not None:
                return
            logger.info("compiled %s sm_%d (%d/%d, %.1f s)", future.result().name, arch, next(finished), total,
                        time.perf_counter() - start)

        workers = max(1, min(worker_count(), total))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cuda_gqa_compile") as threads:
            try:
                started = []
                for compile_one, archs, use in self.jobs:
                    futures = [threads.submit(compile_one, arch) for arch in archs]
                    for future, arch in zip(futures, archs):
                        future.add_done_callback(lambda f, arch=arch: log(f, arch))
                    started.append((futures, use))
                for futures, use in started:
                    use([future.result() for future in futures])
            except BaseException:
                threads.shutdown(wait=True, cancel_futures=True)
                raise


_batch: ContextVar[Optional[_Batch]] = ContextVar("cuda_gqa_compile_batch", default=None)


@contextmanager
def compiling_together() -> Iterator[None]:
    """Compilations asked for inside (compile_in_batch) start when it exits,
    side by side; once all have finished, the `use` callbacks given to
    compile_in_batch run in the order they were given. Nested uses join the
    outermost batch."""
    if _batch.get() is not None:
        yield
        return
    batch = _Batch()
    token = _batch.set(batch)
    try:
        yield
    finally:
        _batch.reset(token)
    batch.run()


def compile_in_batch(compile_one: Callable[[int], CompiledKernel], archs: list[int],
                     use: Callable[[list[CompiledKernel]], None]) -> None:
    """Compile compile_one(arch) for each arch with the rest of the current batch
    (or in one of their own, finished before returning); use(the results, in
    arch order) runs when the batch ends, after the `use` of earlier calls."""
    with compiling_together():
        _batch.get().jobs.append((compile_one, list(archs), use))
