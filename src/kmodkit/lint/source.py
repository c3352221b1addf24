"""C source of a module, parsed with tree-sitter's C grammar into the facts the lint rules need.

Kernel macros at file scope (``module_init(x);``, ``MODULE_LICENSE("GPL");``) parse as calls; attributes
such as ``__init`` parse as error nodes inside a definition, which leaves its storage class and
declarator intact.  Items inside ``#if``/``#ifdef`` blocks count as file scope.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import tree_sitter_c
from tree_sitter import Language, Node, Parser

#: preprocessor blocks whose children are still file-scope items
_PREPROC_BLOCKS = frozenset({"preproc_if", "preproc_ifdef", "preproc_else", "preproc_elif", "preproc_elifdef"})


@dataclass(frozen=True)
class MacroCall:
    """A file-scope call such as ``module_param(level, int, 0444);``."""

    name: str  #: the macro's name
    args: tuple[Node, ...]  #: its argument nodes
    line: int  #: 1-based line


@dataclass(frozen=True)
class Definition:
    """A file-scope function definition or variable declaration."""

    name: str  #: the declared name
    line: int  #: 1-based line
    storage: str  #: "static", "extern" or "" (none)
    function: bool  #: a function (definition or prototype) rather than a variable
    prototype: bool  #: a function declaration without a body


@functools.cache
def _parser() -> Parser:
    return Parser(Language(tree_sitter_c.language()))


class SourceFile:
    """One parsed C file: its file-scope macro calls, definitions and the identifiers it uses."""

    def __init__(self, path: Path, data: bytes) -> None:
        #: the file, as named
        self.path = path
        self.data = data
        self.tree = _parser().parse(data)
        #: file-scope macro calls, in order
        self.calls: list[MacroCall] = []
        #: file-scope definitions and declarations, in order
        self.definitions: list[Definition] = []
        #: file-scope function definitions (their nodes), in order
        self.functions: list[Node] = []
        #: the paths of its quoted ``#include "..."`` lines, in order
        self.includes: list[str] = []
        for item in self._items(self.tree.root_node):
            self._collect(item)

    @classmethod
    def read(cls, path: Path) -> SourceFile:
        """Parse the file at ``path`` (OSError when it cannot be read)."""
        return cls(path, path.read_bytes())

    def text(self, node: Node) -> str:
        """The source text of ``node``."""
        return self.data[node.start_byte:node.end_byte].decode(errors="replace")

    def identifiers(self) -> dict[str, int]:
        """Every identifier used in the file -> the line it is first used on."""
        out: dict[str, int] = {}
        stack = [self.tree.root_node]
        while stack:
            node = stack.pop()
            if node.type == "identifier":
                name = self.text(node)
                line = node.start_point[0] + 1
                if name not in out or line < out[name]:
                    out[name] = line
            stack.extend(node.children)
        return out

    def function_name(self, fn: Node) -> str | None:
        """The name a function definition defines, None when it has none the parser can see."""
        decl = fn.child_by_field_name("declarator")
        return declared_name(self, decl) if decl is not None else None

    def _items(self, node: Node) -> list[Node]:
        out = []
        for child in node.named_children:
            if child.type in _PREPROC_BLOCKS:
                out.extend(self._items(child))
            else:
                out.append(child)
        return out

    def _collect(self, item: Node) -> None:
        line = item.start_point[0] + 1
        if item.type == "preproc_include":
            path = item.child_by_field_name("path")
            if path is not None and path.type == "string_literal":
                value = string_value(self, path)
                if value:
                    self.includes.append(value)
            return
        if item.type == "expression_statement":
            call = item.named_children[0] if item.named_children else None
            if call is not None and call.type == "call_expression":
                fn = call.child_by_field_name("function")
                args = call.child_by_field_name("arguments")
                if fn is not None and fn.type == "identifier" and args is not None:
                    self.calls.append(MacroCall(self.text(fn), tuple(args.named_children), line))
            return
        if item.type not in ("declaration", "function_definition"):
            return
        storage = ""
        for child in item.named_children:
            if child.type == "storage_class_specifier":
                word = self.text(child)
                if word in ("static", "extern"):
                    storage = word
        if item.type == "function_definition":
            self.functions.append(item)
            decl = item.child_by_field_name("declarator")
            name = declared_name(self, decl) if decl is not None else None
            if name:
                self.definitions.append(Definition(name, line, storage, True, False))
            return
        for decl in item.children_by_field_name("declarator"):
            name = declared_name(self, decl)
            if name:
                is_fn = _is_function_declarator(decl)
                self.definitions.append(Definition(name, decl.start_point[0] + 1, storage, is_fn, is_fn))


def descendants(node: Node) -> list[Node]:
    """Every node below ``node``, in source order (``node`` itself excluded)."""
    out: list[Node] = []
    stack = list(reversed(node.children))
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(reversed(n.children))
    return out


def declared_name(src: SourceFile, decl: Node) -> str | None:
    """The name a declarator declares (``*p``, ``p[4]``, ``f(void)``, ``p = 1``), None when it has none."""
    node: Node | None = decl
    while node is not None:
        if node.type == "identifier":
            return src.text(node)
        inner = node.child_by_field_name("declarator")
        if inner is None:
            ident = next((c for c in node.named_children if c.type == "identifier"), None)
            return src.text(ident) if ident is not None else None
        node = inner
    return None


def _is_function_declarator(decl: Node) -> bool:
    node: Node | None = decl
    while node is not None:
        if node.type == "function_declarator":
            return True
        if node.type in ("init_declarator", "parenthesized_declarator"):
            return False
        node = node.child_by_field_name("declarator")
    return False


def string_value(src: SourceFile, node: Node) -> str | None:
    """The value of a string literal argument (adjacent literals joined); None for anything else."""
    if node.type == "string_literal":
        return "".join(src.text(c) for c in node.named_children if c.type in ("string_content", "escape_sequence"))
    if node.type == "concatenated_string":
        parts = [string_value(src, c) for c in node.named_children]
        return None if any(p is None for p in parts) else "".join(p for p in parts if p is not None)
    return None
