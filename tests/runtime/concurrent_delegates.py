"""Run as a script: threads initialising, executing and destroying delegates through the
C API at once (ctypes releases the GIL around each call, so the calls overlap).

    concurrent_delegates.py PAYLOAD... : each of 8 threads, 25 rounds: init a delegate from
        one of the payloads (float32 [rows, 64] x + y, rows from the payload), execute it
        3 times on its own arrays, destroy it; meanwhile 4 threads execute one shared
        delegate. Prints JSON: init/execute codes seen, wrong outputs, modules cached at
        the peak and at the end.
"""

import json
import sys
import threading

import numpy as np

import cuda_gqa.runtime as cr
import delegate_api

THREADS, ROUNDS, SHARED_THREADS, SHARED_ROUNDS = 8, 25, 4, 50


def add_once(lib, handle, rows, seed) -> tuple[int, bool]:
    x = np.random.default_rng(seed).standard_normal((rows, 64)).astype(np.float32)
    y = np.full((rows, 64), float(seed % 7), np.float32)
    out = np.zeros_like(x)
    rc = delegate_api.execute(lib, handle, [delegate_api.host_tensor(a) for a in (x, y, out)])
    return rc, rc == 0 and bool(np.array_equal(out, x + y))


def main():
    payloads = [(open(path, "rb").read(), rows) for path, rows in zip(sys.argv[1::2], map(int, sys.argv[2::2]))]
    lib = delegate_api.load(cr.library_path())
    lock = threading.Lock()
    report = {"init": {}, "execute": {}, "wrong_outputs": 0, "peak_modules": 0}

    def count(kind, rc):
        with lock:
            report[kind][str(rc)] = report[kind].get(str(rc), 0) + 1

    def own_delegates(worker):
        for r in range(ROUNDS):
            payload, rows = payloads[(worker + r) % len(payloads)]
            rc, handle = delegate_api.init(lib, payload)
            count("init", rc)
            if handle is None:
                continue
            with lock:
                report["peak_modules"] = max(report["peak_modules"], lib.cuda_gqa_loaded_module_count())
            for i in range(3):
                rc, ok = add_once(lib, handle, rows, worker * 1000 + r * 10 + i)
                count("execute", rc)
                if rc == 0 and not ok:
                    with lock:
                        report["wrong_outputs"] += 1
            lib.cuda_gqa_delegate_destroy(handle)

    shared_payload, shared_rows = payloads[0]
    rc, shared = delegate_api.init(lib, shared_payload)
    count("init", rc)

    def shared_delegate(worker):
        for r in range(SHARED_ROUNDS):
            rc, ok = add_once(lib, shared, shared_rows, 10**6 + worker * 1000 + r)
            count("execute", rc)
            if rc == 0 and not ok:
                with lock:
                    report["wrong_outputs"] += 1

    threads = [threading.Thread(target=own_delegates, args=(w,)) for w in range(THREADS)]
    if shared is not None:
        threads += [threading.Thread(target=shared_delegate, args=(w,)) for w in range(SHARED_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lib.cuda_gqa_delegate_destroy(shared)
    report["modules_at_end"] = lib.cuda_gqa_loaded_module_count()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
