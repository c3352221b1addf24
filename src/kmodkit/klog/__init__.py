"""Crash diagnosis: kernel reports in logs, structured and decoded to source lines.

``logread`` finds reports in any kernel log, ``report`` structures one, ``kinds.toml`` is the table of
report kinds; ``symbolize`` turns module frames into file:line with DWARF (pyelftools), ``disasm``
decodes the ``Code:`` line (capstone), ``diagnose`` is the one object the CLI drives.
"""
