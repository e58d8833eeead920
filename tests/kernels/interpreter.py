"""Runs kernel cases through interpret_cases.py (TRITON_INTERPRET=1) in a subprocess."""

import json
import subprocess
import sys
from pathlib import Path

# bf16 runs on the GPU only (tests/kernels/*_gpu.py): Triton 3.9's
# interpreter computes tl.dot on bf16 operands wrongly (a 16x16 bf16 x @ x is
# off by 1e10 there while a bf16 load/store round trip is exact).
TOLERANCE = {"float16": 2e-3, "float32": 1e-4}


def run_cases(cases: dict[str, dict]) -> dict[str, dict]:
    """{name: case} -> {name: {"max_abs_err", "nan", "splits"}}."""
    payload = [dict(case, id=name) for name, case in cases.items()]
    result = subprocess.run([sys.executable, str(Path(__file__).with_name("interpret_cases.py"))],
                            input=json.dumps(payload), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return {r["id"]: r for r in map(json.loads, result.stdout.splitlines())}


def assert_close(result: dict, dtype: str) -> None:
    assert not result["nan"], f"{result['id']}: NaN in the output"
    err = result["max_abs_err"]
    assert err <= TOLERANCE[dtype], f"{result['id']}: max abs error {err:.2e}"
