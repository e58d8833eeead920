"""Runs a kernel test script's cases in one fresh Python under TRITON_INTERPRET=1 (CPU).

The script defines run(case: dict) -> dict (JSON-serialisable); each case's
result comes back under its name. One interpreter process per test module
keeps the imports (torch, triton) to one.
"""

import json
import subprocess
import sys
import textwrap

PRELUDE = 'import json, os, sys\nos.environ["TRITON_INTERPRET"] = "1"\nimport torch\n'
EPILOGUE = ('\nfor name, case in json.loads(sys.stdin.read()).items():\n'
            '    print(json.dumps({"id": name, **run(case)}))\n')


def run_interpreted(script: str, cases: dict[str, dict]) -> dict[str, dict]:
    source = PRELUDE + textwrap.dedent(script) + EPILOGUE
    result = subprocess.run([sys.executable, "-c", source], input=json.dumps(cases), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return {r.pop("id"): r for r in map(json.loads, result.stdout.splitlines())}
