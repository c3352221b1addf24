"""The concurrency rules: barriers without a pairing comment, plain accesses of shared variables, sleeping
under a spinlock.  The kernel calls they know are tables in ``concurrency.toml``.

The analysis is per function and in source order, without following calls or control flow: a lock region
runs from a spin_lock* call to the unlock that brings the count back to zero.  Where that is unsure (an
unlock on an early-return path), it errs towards saying nothing.
"""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from tree_sitter import Node

from kmodkit.lint.findings import LintFinding, ModuleSources
from kmodkit.lint.source import SourceFile, declared_name, descendants

_FILE_SCOPE = frozenset({"translation_unit", "preproc_if", "preproc_ifdef", "preproc_else", "preproc_elif",
                         "preproc_elifdef"})
_INIT_EXIT = re.compile(r"\b__(init|exit)\b")


@dataclass(frozen=True)
class _Tables:
    barriers: frozenset[str]
    marked: frozenset[str]
    lock: frozenset[str]
    unlock: frozenset[str]
    sleeping: frozenset[str]
    gfp_allocators: frozenset[str]
    gfp_sleeping: frozenset[str]
    handler_types: frozenset[str]
    registrations: dict[str, int]
    scalars: frozenset[str]


@functools.cache
def _tables() -> _Tables:
    t: dict[str, Any] = tomllib.loads(resources.files("kmodkit.lint").joinpath("concurrency.toml").read_text())
    return _Tables(frozenset(t["barriers"]), frozenset(t["marked_accesses"]), frozenset(t["spin_lock"]),
                   frozenset(t["spin_unlock"]), frozenset(t["sleeping"]), frozenset(t["gfp_allocators"]),
                   frozenset(t["gfp_sleeping"]), frozenset(t["handler_return_types"]),
                   dict(t["handler_registrations"]), frozenset(t["scalar_types"]))


def _calls(src: SourceFile, node: Node) -> list[tuple[str, Node]]:
    # (name, call node) of every call by plain name below node, in source order
    out = []
    for n in descendants(node):
        if n.type == "call_expression":
            fn = n.child_by_field_name("function")
            if fn is not None and fn.type == "identifier":
                out.append((src.text(fn), n))
    return out


def _args(call: Node) -> list[Node]:
    args = call.child_by_field_name("arguments")
    return list(args.named_children) if args is not None else []


def _line(node: Node) -> int:
    return node.start_point[0] + 1


def _lock_regions(src: SourceFile, fn: Node) -> list[tuple[int, int, str, int]]:
    """(start byte, end byte, lock call, its line) of each region of ``fn`` where a spinlock is held."""
    t = _tables()
    out: list[tuple[int, int, str, int]] = []
    depth, start, first = 0, 0, ("", 0)
    for name, call in _calls(src, fn):
        if name in t.lock:
            if depth == 0:
                start, first = call.end_byte, (name, _line(call))
            depth += 1
        elif name in t.unlock and depth > 0:
            depth -= 1
            if depth == 0:
                out.append((start, call.start_byte, *first))
    if depth > 0:
        out.append((start, fn.end_byte, *first))
    return out


def barrier_without_comment(m: ModuleSources) -> list[LintFinding]:
    """Memory barriers with no comment on their line or the three lines above."""
    t = _tables()
    out = []
    for s in m.sources:
        commented: set[int] = set()
        for n in descendants(s.tree.root_node):
            if n.type == "comment":
                commented.update(range(n.start_point[0] + 1, n.end_point[0] + 2))
        for fn in s.functions:
            for name, call in _calls(s, fn):
                line = _line(call)
                if name in t.barriers and not commented & set(range(line - 3, line + 1)):
                    out.append(LintFinding(str(s.path), line, "barrier-without-comment",
                                           f"{name}() without a comment: say which barrier it pairs with and "
                                           "what it orders"))
    return out


def sleep_under_spinlock(m: ModuleSources) -> list[LintFinding]:
    """Calls that may sleep between a spin_lock* and its spin_unlock*."""
    t = _tables()
    out = []
    for s in m.sources:
        for fn in s.functions:
            regions = _lock_regions(s, fn)
            if not regions:
                continue
            for name, call in _calls(s, fn):
                held = next((r for r in regions if r[0] <= call.start_byte < r[1]), None)
                if held is None:
                    continue
                why = ""
                if name in t.sleeping:
                    why = "may sleep"
                elif name in t.gfp_allocators:
                    gfp = {s.text(n) for a in _args(call) for n in [a, *descendants(a)] if n.type == "identifier"}
                    flags = sorted(gfp & t.gfp_sleeping)
                    if flags:
                        why = f"with {flags[0]} may sleep (use GFP_ATOMIC, or allocate before taking the lock)"
                if why:
                    out.append(LintFinding(str(s.path), _line(call), "sleep-under-spinlock",
                                           f"{name}() {why}, and {held[2]}() at line {held[3]} holds a spinlock "
                                           "here"))
    return out


def _file_scope_variables(s: SourceFile) -> dict[str, bool]:
    # name -> whether it is a plain scalar (not a pointer, array, lock, atomic or structure)
    scalars = _tables().scalars
    out: dict[str, bool] = {}
    for d in descendants(s.tree.root_node):
        if d.type != "declaration" or d.parent is None or d.parent.type not in _FILE_SCOPE:
            continue
        kind = d.child_by_field_name("type")
        scalar = kind is not None and " ".join(s.text(kind).split()) in scalars
        for decl in d.children_by_field_name("declarator"):
            inner = decl.child_by_field_name("declarator") if decl.type == "init_declarator" else decl
            if inner is not None and inner.type == "identifier":
                out[s.text(inner)] = scalar
    return out


def _handlers(m: ModuleSources) -> set[str]:
    # functions that run in interrupt or timer context: by return type, or registered as such
    t = _tables()
    out = set()
    for s in m.sources:
        for fn in s.functions:
            kind = fn.child_by_field_name("type")
            name = s.function_name(fn)
            if name and kind is not None and " ".join(s.text(kind).split()) in t.handler_types:
                out.add(name)
        # registrations in functions (timer_setup(...)) and at file scope (DEFINE_TIMER(...))
        registered = [(name, _args(call)) for fn in s.functions for name, call in _calls(s, fn)]
        registered += [(c.name, list(c.args)) for c in s.calls]
        # "static DEFINE_TIMER(t, fn);" parses as a declaration whose type is a macro with type-like arguments
        for d in descendants(s.tree.root_node):
            kind = d.child_by_field_name("type") if d.type == "declaration" else None
            if kind is not None and kind.type == "macro_type_specifier":
                words = [n for n in descendants(kind) if n.type in ("identifier", "type_identifier")]
                if words:
                    registered.append((s.text(words[0]), words[1:]))
        for call_name, args in registered:
            index = t.registrations.get(call_name)
            if index is not None and index < len(args):
                arg = args[index]
                if arg.type == "pointer_expression" and arg.named_children:
                    arg = arg.named_children[-1]
                if arg.type in ("identifier", "type_identifier"):
                    out.add(s.text(arg))
    return out


def _written(s: SourceFile, ident: Node) -> bool:
    # the identifier is stored to: the left side of an assignment (=, +=, ...) or the operand of ++/--
    parent = ident.parent
    if parent is None:
        return False
    if parent.type == "assignment_expression":
        return parent.child_by_field_name("left") == ident
    return parent.type == "update_expression"


def _accessed(s: SourceFile, ident: Node) -> bool:
    # True when an identifier is a plain load or store: not marked, not address-taken, not in sizeof
    t = _tables()
    node: Node | None = ident.parent
    child = ident
    while node is not None and node.type != "function_definition":
        # (tree-sitter hands out a new Node object on each access: compare with ==, never with "is")
        if node.type == "pointer_expression" and child == node.child_by_field_name("argument") \
                and s.text(node).startswith("&"):
            return False
        if node.type in ("sizeof_expression", "alignof_expression"):
            return False
        if node.type == "call_expression":
            fn = node.child_by_field_name("function")
            if fn is not None and s.text(fn) in t.marked:
                return False
        child, node = node, node.parent
    return True


def plain_access_of_shared(m: ModuleSources) -> list[LintFinding]:
    """Plain loads and stores of file-scope variables that are elsewhere accessed with READ_ONCE/WRITE_ONCE
    (or the like), or that an interrupt or timer handler uses."""
    t = _tables()
    variables: dict[str, bool] = {}
    for s in m.sources:
        variables.update(_file_scope_variables(s))
    handlers = _handlers(m)
    # a variable no function stores to (a parameter set at load time) has nothing to race with
    written = {s.text(n) for s in m.sources for fn in s.functions for n in descendants(fn)
               if n.type == "identifier" and _written(s, n)}
    shared: dict[str, str] = {}  # variable -> why it is shared
    marked: set[str] = set()  # the variables shared by a marked access: every plain access counts, a handler's too
    for s in m.sources:
        for fn in s.functions:
            name = s.function_name(fn)
            for call_name, call in _calls(s, fn):
                args = _args(call)
                if call_name in t.marked and args:
                    arg = args[0]
                    if arg.type == "pointer_expression" and arg.named_children:
                        arg = arg.named_children[-1]
                    if arg.type == "identifier" and s.text(arg) in variables and s.text(arg) not in marked:
                        shared[s.text(arg)] = f"accessed with {call_name}() at {s.path.name}:{_line(call)}"
                        marked.add(s.text(arg))
            if name in handlers:
                for n in descendants(fn):
                    if n.type == "identifier" and variables.get(s.text(n)) and s.text(n) in written \
                            and _accessed(s, n):
                        shared.setdefault(s.text(n), f"used by the interrupt/timer handler {name}()")
    out = []
    for s in m.sources:
        for fn in s.functions:
            name = s.function_name(fn)
            body = fn.child_by_field_name("body")
            head = s.data[fn.start_byte:body.start_byte if body is not None else fn.end_byte].decode(errors="replace")
            if _INIT_EXIT.search(head) or body is None:
                continue
            # a handler's own plain accesses of what only handlers and locked code share are its business
            checked = marked if name in handlers else set(shared)
            nodes = descendants(fn)
            # parameters and locals of the same name hide the file-scope variable
            local = {declared_name(s, decl) for d in nodes if d.type in ("declaration", "parameter_declaration")
                     for decl in d.children_by_field_name("declarator")}
            regions = _lock_regions(s, fn)
            reported: set[str] = set()
            for n in nodes:
                var = s.text(n) if n.type == "identifier" else ""
                if var not in checked or var in local or var in reported or not _accessed(s, n):
                    continue
                if any(r[0] <= n.start_byte < r[1] for r in regions):
                    continue
                reported.add(var)
                out.append(LintFinding(str(s.path), _line(n), "plain-access-of-shared",
                                       f"plain access of '{var}', which is {shared[var]}; use READ_ONCE()/"
                                       "WRITE_ONCE() (or a lock) so the compiler cannot tear, fuse or re-read it"))
    return out
