"""The fuzz harness: mutated copies of real modules through every reader-facing command, in batches.

``corpus`` makes the inputs (a seeded generator: input I of seed S is always
the same bytes, so a finding is reproduced from its seed and index alone; the
same mutations are offered to hypothesis as strategies); ``harness`` runs
``kmodkit`` on batches of them and checks the README's promises: exit status
never 4, no traceback, no hang, each bad item its own ``error:`` line naming
it, good files still processed in the same batch.  ``benchmarks/fuzz.py`` is
the long run; ``tests/test_fuzz_cli.py`` runs a sample every time.
"""
