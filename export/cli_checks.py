"""Argument checks the export CLIs run before any work: each bad value ends the command with one line
naming the flag and what it accepts, and exit status 2."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Iterable, Optional

from cuda_gqa.backends.compile_specs import SUPPORTED_ARCHS


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, "<prog>: error: <what>", without the usage."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def int_in(low: int, high: int) -> Callable[[str], int]:
    """argparse type: an integer in [low, high]; argparse names the flag in front of the message."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer (accepted: {low} to {high})") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside the accepted range {low} to {high}")
        return value

    return parse


def archs_list(text: str, allow_none: bool = False) -> str:
    """argparse type: comma-separated sm_NN archs of SUPPORTED_ARCHS (or 'none' when allowed)."""
    if allow_none and text == "none":
        return text
    accepted = ", ".join(f"sm_{a}" for a in SUPPORTED_ARCHS) + (" or 'none'" if allow_none else "")
    parts = [p.strip().lower().removeprefix("sm_") for p in text.split(",")]
    if not parts or any(not p.isdigit() or int(p) not in SUPPORTED_ARCHS for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {accepted}")
    return text


def writable_target(path: Path, *, is_dir: bool) -> Optional[str]:
    """None when `path` can be written (a folder to create or fill when is_dir, else a file), else why not."""
    if path.exists():
        if is_dir and not path.is_dir():
            return f"{path} exists and is not a folder"
        if not is_dir and path.is_dir():
            return f"{path} is a folder, not a file"
        if not os.access(path, os.W_OK):
            return f"{path} is not writable"
        return None
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{ancestor} (a parent of {path}) is not a folder"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"{ancestor} (a parent of {path}) is not writable"
    return None


def fail(parser: argparse.ArgumentParser, flag: str, why: str) -> None:
    parser.error(f"argument {flag}: {why}")


def check_all(parser: argparse.ArgumentParser, problems: Iterable[tuple[bool, str, str]]) -> None:
    """Ends the command at the first (bad, flag, why) whose bad is true."""
    for bad, flag, why in problems:
        if bad:
            fail(parser, flag, why)


def exit_with(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2
