"""The fleet report: a project's build, signature and ``check`` verdict for every (module, kernel) pair.

:mod:`.fleet` gathers the model from the homes that own each answer (``kbuild`` for targets and builds,
``signing`` for trust, ``check`` for verdicts and ABI differences); :mod:`.html` writes it as one
self-contained page.  The text table and the exit status belong to ``kmodkit.cli.report``.
"""
