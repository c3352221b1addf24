"""The checks behind the rules of ``rules.toml``; each returns findings for a whole module's sources."""

from __future__ import annotations

from collections.abc import Callable
from tree_sitter import Node

from kmodkit.lint.concurrency import barrier_without_comment, plain_access_of_shared, sleep_under_spinlock
from kmodkit.lint.findings import LintFinding, ModuleSources
from kmodkit.lint.source import SourceFile, string_value

#: include/linux/license.h: license_is_gpl_compatible()
GPL_COMPATIBLE = frozenset({"GPL", "GPL v2", "GPL and additional rights", "Dual BSD/GPL", "Dual MIT/GPL",
                            "Dual MPL/GPL"})
#: the S_I* permission macros of include/linux/stat.h and include/uapi/linux/stat.h
PERMISSION_MACROS = {
    "S_IRWXU": 0o700, "S_IRUSR": 0o400, "S_IWUSR": 0o200, "S_IXUSR": 0o100,
    "S_IRWXG": 0o070, "S_IRGRP": 0o040, "S_IWGRP": 0o020, "S_IXGRP": 0o010,
    "S_IRWXO": 0o007, "S_IROTH": 0o004, "S_IWOTH": 0o002, "S_IXOTH": 0o001,
    "S_IRWXUGO": 0o777, "S_IALLUGO": 0o7777, "S_IRUGO": 0o444, "S_IWUGO": 0o222, "S_IXUGO": 0o111,
}
#: module_param variants: macro -> index of the parameter's name argument (the permission is the last)
PARAM_MACROS = {
    "module_param": 0, "module_param_named": 0, "module_param_array": 0, "module_param_array_named": 0,
    "module_param_string": 0, "module_param_cb": 0, "module_param_unsafe": 0, "module_param_named_unsafe": 0,
    "module_param_cb_unsafe": 0, "core_param": 0,
}
EXPORT_MACROS = frozenset({"EXPORT_SYMBOL", "EXPORT_SYMBOL_GPL", "EXPORT_SYMBOL_NS", "EXPORT_SYMBOL_NS_GPL",
                           "EXPORT_SYMBOL_FOR_MODULES"})


Check = Callable[[ModuleSources], list[LintFinding]]


def _main_file(m: ModuleSources) -> SourceFile:
    # where module-wide findings go: the file with module_init, else the first
    for s in m.sources:
        if any(c.name == "module_init" for c in s.calls):
            return s
    return m.sources[0]


def old_entry_points(m: ModuleSources) -> list[LintFinding]:
    """init_module/cleanup_module defined by name."""
    out = []
    for s in m.sources:
        for d in s.definitions:
            if d.function and not d.prototype and d.name in ("init_module", "cleanup_module"):
                new = "module_init" if d.name == "init_module" else "module_exit"
                out.append(LintFinding(str(s.path), d.line, "old-entry-points",
                                   f"'{d.name}' is the old entry point; use a static function and {new}()"))
    return out


def _license(m: ModuleSources) -> tuple[SourceFile, int, str | None] | None:
    for s in m.sources:
        for c in s.calls:
            if c.name == "MODULE_LICENSE":
                value = string_value(s, c.args[0]) if c.args else None
                return s, c.line, value
    return None


def missing_license(m: ModuleSources) -> list[LintFinding]:
    """No MODULE_LICENSE in any file."""
    if _license(m) is not None:
        return []
    return [LintFinding(str(_main_file(m).path), 1, "missing-license",
                    'no MODULE_LICENSE(): the module taints the kernel; add MODULE_LICENSE("GPL")')]


def gpl_only_symbol(m: ModuleSources) -> list[LintFinding]:
    """GPL-only symbols used when the licence is not GPL-compatible."""
    lic = _license(m)
    if m.gpl_only is None or lic is None or lic[2] is None or lic[2] in GPL_COMPATIBLE:
        return []
    defined = {d.name for s in m.sources for d in s.definitions if not d.prototype}
    out = []
    for s in m.sources:
        for name, line in sorted(s.identifiers().items(), key=lambda kv: kv[1]):
            if name in m.gpl_only and name not in defined:
                out.append(LintFinding(str(s.path), line, "gpl-only-symbol",
                                   f"'{name}' is exported GPL-only, and MODULE_LICENSE is \"{lic[2]}\""))
    return out


def export_prefix(m: ModuleSources) -> list[LintFinding]:
    """Exported names without the module's name as prefix."""
    out = []
    prefix = m.name.lower() + "_"
    for s in m.sources:
        for c in s.calls:
            if c.name in EXPORT_MACROS and c.args:
                sym = s.text(c.args[0])
                if not sym.lower().startswith(prefix):
                    out.append(LintFinding(str(s.path), c.line, "export-prefix",
                                       f"exported '{sym}' lacks the module prefix '{prefix}'"))
    return out


def _permission(s: SourceFile, node: Node) -> int | None:
    # a constant permission expression: octal literals and S_I* macros joined with |
    if node.type == "number_literal":
        text = s.text(node).rstrip("uUlL")
        try:
            return int(text, 8) if text.startswith("0") and not text.lower().startswith("0x") else int(text, 0)
        except ValueError:
            return None
    if node.type == "identifier":
        return PERMISSION_MACROS.get(s.text(node))
    if node.type == "parenthesized_expression" and node.named_children:
        return _permission(s, node.named_children[0])
    if node.type == "binary_expression":
        op = node.child_by_field_name("operator")
        left, right = node.child_by_field_name("left"), node.child_by_field_name("right")
        if op is None or left is None or right is None or s.text(op) != "|":
            return None
        a, b = _permission(s, left), _permission(s, right)
        return None if a is None or b is None else a | b
    return None


def param_writable_by_others(m: ModuleSources) -> list[LintFinding]:
    """Parameters whose permission has S_IWOTH."""
    out = []
    for s in m.sources:
        for c in s.calls:
            if c.name in PARAM_MACROS and len(c.args) >= 3:
                perm = _permission(s, c.args[-1])
                if perm is not None and perm & 0o002:
                    name = s.text(c.args[PARAM_MACROS[c.name]])
                    out.append(LintFinding(str(s.path), c.line, "param-writable-by-others",
                                       f"parameter '{name}' has permissions {perm:04o}: others may write it, which "
                                       "the kernel refuses at build time; use 0644 or 0444"))
    return out


def param_no_desc(m: ModuleSources) -> list[LintFinding]:
    """Parameters without MODULE_PARM_DESC."""
    described = {s.text(c.args[0]) for s in m.sources for c in s.calls if c.name == "MODULE_PARM_DESC" and c.args}
    out = []
    for s in m.sources:
        for c in s.calls:
            if c.name in PARAM_MACROS and c.args:
                name = s.text(c.args[PARAM_MACROS[c.name]])
                if name not in described:
                    out.append(LintFinding(str(s.path), c.line, "param-no-desc",
                                       f"parameter '{name}' has no MODULE_PARM_DESC({name}, \"...\")"))
    return out


def missing_version(m: ModuleSources) -> list[LintFinding]:
    """No MODULE_VERSION in any file."""
    if any(c.name == "MODULE_VERSION" for s in m.sources for c in s.calls):
        return []
    return [LintFinding(str(_main_file(m).path), 1, "missing-version",
                    'no MODULE_VERSION(): add MODULE_VERSION("0.1.0") so loaded versions can be told apart')]


def non_static_global(m: ModuleSources) -> list[LintFinding]:
    """File-scope definitions neither static nor exported (prototypes and extern declarations excepted).

    A module's translation units share names on purpose: a name declared in one of the project's headers,
    or used by another file of the same module, must stay global (static would break the link).
    """
    exported = {s.text(c.args[0]) for s in m.sources for c in s.calls if c.name in EXPORT_MACROS and c.args}
    declared = {d.name for h in m.headers for d in h.definitions}
    used = {s.path: set(s.identifiers()) for s in m.sources} if len(m.sources) > 1 else {}
    out = []
    for s in m.sources:
        elsewhere = set().union(*(names for path, names in used.items() if path != s.path)) if used else set()
        for d in s.definitions:
            if d.storage or d.prototype or d.name in exported or d.name in ("init_module", "cleanup_module"):
                continue
            if d.name in declared or d.name in elsewhere:
                continue
            kind = "function" if d.function else "variable"
            out.append(LintFinding(str(s.path), d.line, "non-static-global",
                               f"{kind} '{d.name}' is global but not exported; make it static"))
    return out


#: rule id -> its check, in the order of rules.toml
CHECKS: dict[str, Check] = {
    "old-entry-points": old_entry_points,
    "missing-license": missing_license,
    "gpl-only-symbol": gpl_only_symbol,
    "export-prefix": export_prefix,
    "param-writable-by-others": param_writable_by_others,
    "param-no-desc": param_no_desc,
    "missing-version": missing_version,
    "non-static-global": non_static_global,
    "barrier-without-comment": barrier_without_comment,
    "plain-access-of-shared": plain_access_of_shared,
    "sleep-under-spinlock": sleep_under_spinlock,
}
