"""The one place that says where kmodkit keeps its caches: ``$XDG_CACHE_HOME/kmodkit``.

``info --json`` documents, kernels' extracted certificates, unpacked kernel
images, the KVM probe, build copies and VM run logs all live under it.
Deleting any of it only costs time.
"""

from __future__ import annotations

import os


def cache_dir(*parts: str) -> str:
    """``$XDG_CACHE_HOME/kmodkit/PARTS...`` (``~/.cache`` when the variable is unset, empty or relative).

    Nothing is created: the writer makes the directories it writes into.
    The XDG base-directory spec says a relative value is invalid and must be
    ignored; it would also make the cache depend on the working directory.
    """
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "kmodkit", *parts)
