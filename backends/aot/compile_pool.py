"""Worker processes that run Triton compilations side by side.

Compiling a kernel is CPU-bound Python and MLIR plus a ptxas subprocess,
so threads do not overlap it: each compile goes to one of a few worker
processes (as many as this process may use CPUs; $CUDA_GQA_COMPILE_WORKERS
overrides, 1 compiles in this process). Within `compiling_together()`,
compile_in_batch() starts compilations on as many threads, each waiting for
its worker, and logs a progress line as each finishes; the batch ends when
all have (attention_plan runs every (kernel, arch) of a payload in one).

Workers are started with "spawn" (torch's threads make fork unsafe) once
per process and reused. The kernel travels by import path; a kernel that
cannot (defined in __main__ or a closure), or a pool that broke, is
compiled in this process instead.
"""

from __future__ import annotations

import importlib
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
    """Compilations started together; counts them for the progress lines."""

    def __init__(self, threads: ThreadPoolExecutor):
        self.threads = threads
        self.start = time.perf_counter()
        self.lock = threading.Lock()
        self.submitted = self.finished = 0
        self.on_exit: list[Callable[[], None]] = []

    def submit(self, compile_one: Callable[[int], CompiledKernel], arch: int) -> Future:
        with self.lock:
            self.submitted += 1
        future = self.threads.submit(compile_one, arch)
        future.add_done_callback(lambda f: self._log(f, arch))
        return future

    def _log(self, future: Future, arch: int) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        with self.lock:
            self.finished += 1
            finished, submitted = self.finished, self.submitted
        logger.info("compiled %s sm_%d (%d/%d, %.1f s)", future.result().name, arch, finished, submitted,
                    time.perf_counter() - self.start)


_batch: ContextVar[Optional[_Batch]] = ContextVar("cuda_gqa_compile_batch", default=None)


@contextmanager
def compiling_together() -> Iterator[None]:
    """Compilations started inside (compile_in_batch) run side by side; on exit,
    once all have finished, the callbacks given to compile_in_batch run in
    order. Nested uses join the outermost batch."""
    if _batch.get() is not None:
        yield
        return
    with ThreadPoolExecutor(max_workers=worker_count(), thread_name_prefix="cuda_gqa_compile") as threads:
        batch = _Batch(threads)
        token = _batch.set(batch)
        try:
            yield
            for callback in batch.on_exit:
                callback()
        except BaseException:
            threads.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            _batch.reset(token)


def compile_in_batch(compile_one: Callable[[int], CompiledKernel], archs: list[int],
                     use: Callable[[list[CompiledKernel]], None]) -> None:
    """Start compile_one(arch) for each arch in the current batch (or in one of
    their own, finished before returning); use(the results, in arch order) runs
    when the batch ends."""
    with compiling_together():
        batch = _batch.get()
        futures = [batch.submit(compile_one, arch) for arch in archs]
        batch.on_exit.append(lambda: use([future.result() for future in futures]))
