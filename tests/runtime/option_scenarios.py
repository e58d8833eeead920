"""Run as a script (in a process of its own, so the driver it loads is the one
LD_LIBRARY_PATH names): for each scenario (name, [[key, value], ...]) of argv[1] (JSON),
reset CudaGqaBackend's options to their defaults, set the scenario's through ExecuTorch's
set_option (cuda_gqa.runtime.set_backend_option), read them back with get_option, then
init a delegate from the payload file argv[2] and execute it twice on x = arange, y = 0.5
(float32 [2, 64], host memory) through the C API. Prints one JSON object: per scenario what
was refused, the values read back, whether both outputs were x + y (or init's and
execute's error codes), the kernel time profiled meanwhile, and the stderr written
meanwhile (the backend's log lines)."""

import json
import os
import sys
import tempfile

import numpy as np

import cuda_gqa.runtime as cr
import delegate_api

DEFAULTS = {"device": 0, "stream": "0", "synchronize": True, "profile": False}


def run(options, payload, lib) -> dict:
    report = {"refused": []}
    for key, value in DEFAULTS.items():
        cr.set_backend_option(key, value)
    for key, value in options:
        try:
            cr.set_backend_option(key, value)
        except ValueError as error:
            report["refused"].append(str(error))
    report["values"] = {key: cr.get_backend_option(key) for key in DEFAULTS}
    before = cr.profiled_kernel_time_ns()
    rc, handle = delegate_api.init(lib, payload)
    report["init"] = rc
    if handle is None:
        return report
    x, y = np.arange(128, dtype=np.float32).reshape(2, 64), np.full((2, 64), 0.5, np.float32)
    matches, codes = True, []
    for _ in range(2):
        out = np.zeros((2, 64), np.float32)
        codes.append(delegate_api.execute(lib, handle, [delegate_api.host_tensor(a) for a in (x, y, out)]))
        matches &= bool(np.array_equal(out, x + y))
    lib.cuda_gqa_delegate_destroy(handle)
    report.update(execute=codes, matches=matches, profiled_ns=cr.profiled_kernel_time_ns() - before)
    return report


def main():
    scenarios, payload = json.loads(sys.argv[1]), open(sys.argv[2], "rb").read()
    lib = delegate_api.load(cr.library_path())
    results = {}
    for name, options in scenarios:
        log = tempfile.TemporaryFile()
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            results[name] = run(options, payload, lib)
        finally:
            os.dup2(saved, 2)
        log.seek(0)
        results[name]["stderr"] = log.read().decode(errors="replace")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
