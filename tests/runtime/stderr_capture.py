"""What a scenario script's C++ callee logs: file descriptor 2 redirected while a step runs."""

import os
import tempfile


def run_capturing_stderr(step):
    """step()'s result and what was written to file descriptor 2 while it ran."""
    log = tempfile.TemporaryFile()
    saved = os.dup(2)
    os.dup2(log.fileno(), 2)
    try:
        result = step()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    log.seek(0)
    return result, log.read().decode(errors="replace")
