"""Shared output helpers of the CLI: JSON, tables, plain lines."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kmodkit.errors import ItemError


def print_json(obj: Any, compact: bool = False) -> None:
    """Write ``obj`` as JSON with a trailing newline to stdout: indented, or on one line with ``compact``.

    ``compact`` is for large documents: it uses the C encoder, many times faster.
    """
    if compact:
        sys.stdout.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=_default))
    else:
        sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False, default=_default))
    sys.stdout.write("\n")


def _default(obj: Any) -> Any:
    to_json = getattr(obj, "to_json", None)
    if callable(to_json):
        return to_json()
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj).hex()
    if hasattr(obj, "value") and hasattr(obj, "name"):  # enums
        return obj.value
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def report_item(err: ItemError) -> None:
    """Report one failed batch item on stderr, as ``error: PATH: MESSAGE; FIX`` (stdout flushed first)."""
    sys.stdout.flush()
    sys.stderr.write(f"error: {err}\n")


def error_line(subject: str, problem: str) -> None:
    """Report one failed batch item on stderr, as ``error: SUBJECT: PROBLEM``."""
    sys.stderr.write(f"error: {subject}: {problem}\n")
