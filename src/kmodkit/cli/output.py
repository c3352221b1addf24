"""Shared output helpers of the CLI: JSON, error reports (text or JSON), colour, plain lines.

With ``--json`` every error is the one error object ``{"what", "why", "fix", "exit"}``
(:func:`kmodkit.errors.error_object`; schema in ``cli/error.schema.json``), always under the key
``"error"``: a command that fails as a whole prints ``{"error": E}`` (and ``"errors"``, the batch items
that failed before it); a batch's failed items go into the command's own document, as ``{"error": E, ...}``
elements of a list document, or in the ``"errors"`` list of an object document.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from kmodkit.errors import ItemError, KmodkitError


class _JsonErrors:
    # the state of one --json run: item errors not yet written, and whether a document is on stdout
    collecting = False
    pending: list[dict[str, Any]] = []
    printed = False


def collect_errors(on: bool = True) -> None:
    """Collect errors for the JSON document (``--json``) instead of writing ``error:`` lines (the CLI calls it)."""
    _JsonErrors.collecting = on
    _JsonErrors.pending = []
    _JsonErrors.printed = False


def print_json(obj: Any, compact: bool = False) -> None:
    """Write ``obj`` as JSON with a trailing newline to stdout: indented, or on one line with ``compact``.

    ``compact`` is for large documents: it uses the C encoder, many times faster.  Batch items that failed
    (:func:`report_item` under ``--json``) join a list document as elements, an object document as ``"errors"``.
    """
    obj = _with_pending(obj)
    if compact:
        sys.stdout.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=_default))
    else:
        sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False, default=_default))
    sys.stdout.write("\n")
    _JsonErrors.printed = True


def mark_printed() -> None:
    """Say that a command wrote its JSON document to stdout itself (streamed bytes)."""
    _JsonErrors.printed = True


def _with_pending(obj: Any) -> Any:
    pending, _JsonErrors.pending = _JsonErrors.pending, []
    if not pending:
        return obj
    if isinstance(obj, list):
        return [*obj, *pending]
    if isinstance(obj, dict):
        errors = obj.get("errors")
        return {**obj, "errors": [*(errors if isinstance(errors, list) else ()), *pending]}
    _JsonErrors.pending = pending  # a document of another shape: finish_errors says them
    return obj


def _default(obj: Any) -> Any:
    to_json = getattr(obj, "to_json", None)
    if callable(to_json):
        return to_json()
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj).hex()
    if hasattr(obj, "value") and hasattr(obj, "name"):  # enums
        return obj.value
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def error_record(err: ItemError | KmodkitError) -> dict[str, Any]:
    """A failed item as it stands in a JSON document: ``{"error": E}``, with ``"path"`` for an item."""
    from kmodkit.errors import KmodkitError

    if isinstance(err, KmodkitError):
        return {"error": err.to_json()}
    return err.to_json()


def report_item(err: ItemError | KmodkitError) -> None:
    """Report one failed batch item: ``error: PATH: MESSAGE; FIX`` on stderr (stdout flushed first), or under
    ``--json`` a record of the command's JSON document."""
    if _JsonErrors.collecting:
        _JsonErrors.pending.append(error_record(err))
        return
    sys.stdout.flush()
    sys.stderr.write(f"error: {err}\n")


def error_line(subject: str, problem: str, exit_status: int = 2) -> None:
    """Report one failed batch item as ``error: SUBJECT: PROBLEM`` on stderr, or under ``--json`` in the document."""
    if _JsonErrors.collecting:
        from kmodkit.errors import error_object

        _JsonErrors.pending.append({"error": error_object(subject, problem, None, exit_status)})
        return
    sys.stderr.write(f"error: {subject}: {problem}\n")


def print_error(error: dict[str, Any]) -> bool:
    """Print ``{"error": error}`` (and the items that failed before it) as the run's JSON document;
    False when a document is on stdout already (the caller then says it as text)."""
    if _JsonErrors.printed:
        return False
    pending, _JsonErrors.pending = _JsonErrors.pending, []
    print_json({"error": error, **({"errors": pending} if pending else {})})
    return True


def finish_errors(status: int) -> int:
    """End a ``--json`` run: item errors no document took are printed as a failure document of their own (or as
    text lines when a document is out already); returns ``status``."""
    pending = _JsonErrors.pending
    if not pending:
        return status
    if not _JsonErrors.printed:
        worst = max(pending, key=lambda r: int(r["error"]["exit"]))
        _JsonErrors.pending = [r for r in pending if r is not worst]
        print_error(worst["error"])
    else:
        for r in pending:
            e = r["error"]
            sys.stderr.write(f"error: {e['what']}: {e['why']}" + (f"; {e['fix']}" if e["fix"] else "") + "\n")
    _JsonErrors.pending = []
    return status


#: the one table of colours: a status word's ANSI SGR code
_COLOURS = {"ok": "32", "warn": "33", "fail": "1;31", "info": "2", "note": "36"}


def use_colour(stream: TextIO | None = None) -> bool:
    """Whether to colour text for ``stream`` (default stdout): a terminal, NO_COLOR unset or empty
    (https://no-color.org), TERM not ``dumb``."""
    stream = sys.stdout if stream is None else stream
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def paint(text: str, status: str, stream: TextIO | None = None) -> str:
    """``text`` in the colour of ``status`` (ok, warn, fail, info, note) when :func:`use_colour`, else as it is."""
    code = _COLOURS.get(status)
    if code is None or not use_colour(stream):
        return text
    return f"\x1b[{code}m{text}\x1b[0m"
