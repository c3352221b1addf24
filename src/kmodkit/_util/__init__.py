"""Private helpers shared by several domains (one home each): worker processes, the cache directory.

Not part of kmodkit's API; drgn keeps its equivalent in ``_drgn_util``.
"""
