"""Which machine kmodkit looks at: this one ("/") or a directory that stands for another.

A :class:`Root` is the one way to point kmodkit at a fake machine (a test fixture, a mounted
image, ``doctor --root``): every path of that machine (/lib/modules, /etc/os-release, /proc, /sys,
PATH entries, the absolute target of a /lib/modules/KVER/build link) is re-rooted through
:meth:`Root.join`, never by joining strings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Root:
    """The root directory of the machine kmodkit reads."""

    path: Path = Path("/")  #: "/" for this machine, else the directory holding the other machine's /

    @classmethod
    def of(cls, root: Root | str | Path | None) -> Root:
        """``root`` as a Root: a Root as it is, a path as the root it names, None as this machine's."""
        if isinstance(root, Root):
            return root
        return cls(Path(root)) if root is not None else HOST

    @property
    def is_host(self) -> bool:
        """Whether this is the machine kmodkit runs on."""
        return self.path == Path("/")

    def join(self, path: str | Path) -> Path:
        """The machine's ``path`` (absolute, or relative to its /) as a path on this machine, never above the root."""
        # normpath first: the machine's "/../x" is its "/x", never a path above the root
        rel = Path(os.path.normpath(os.path.join("/", path))).relative_to("/")
        return self.path / rel

    def resolve_link(self, link: Path) -> Path | None:
        """The directory a symlink of the machine points to (an absolute target is the machine's own path).

        ``link`` itself when it is a directory and not a link; None when the target is not a directory.
        """
        try:
            target = os.readlink(link)
        except OSError:
            return link if link.is_dir() else None
        p = self.join(target) if os.path.isabs(target) else link.parent / target
        return p if p.is_dir() else None

    def __str__(self) -> str:
        return str(self.path)


#: this machine
HOST = Root()
