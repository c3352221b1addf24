"""``kmodkit lint``: checks of module source through tree-sitter's C parser, rules in ``rules.toml``.

The entry point is :class:`kmodkit.lint.linter.Linter`; each rule is documented with a bad and a
good example (:func:`kmodkit.lint.rules.rules`).
"""
