"""What an index is built from: the tree, its depmod.d rules, the module files that win.

:class:`TreeInputs` names the tree ``BASEDIR/lib/modules/KVER``, its depmod.d
configuration and the kernel's own symbol files, and is validated when
built.  :meth:`TreeInputs.walk` walks the tree as depmod does (readdir order,
``build``/``source`` and ``exclude`` directories skipped), picks the file that
wins for each module name and stats it.

This module is on ``kmodkit index``'s quick path (nothing changed since the
last index), so it imports nothing heavy: no module reader, no dataclasses,
no hashlib.  A directory listing is reused from the last walk while the
directory's mtime and inode are unchanged (adding, removing or renaming an
entry changes them); the file stats are always taken afresh.
"""

from __future__ import annotations

import enum
import errno
import os
import re
import stat
import time
from collections.abc import Callable
from typing import NamedTuple

from kmodkit.errors import NotFoundError, UserError
from kmodkit.index.depmodconf import DepmodConfig
from kmodkit.modfile.modname import MODULE_SUFFIXES, module_name  # import-free: the quick path loads no reader

#: the files depmod writes, in the order it writes them
INDEX_FILES = (
    "modules.dep", "modules.dep.bin", "modules.alias", "modules.alias.bin", "modules.softdep",
    "modules.symbols", "modules.symbols.bin", "modules.builtin.bin", "modules.builtin.alias.bin",
    "modules.devname",
)

#: every file some kmod's depmod writes (kmod 33 added modules.weakdep)
ALL_INDEX_FILES = INDEX_FILES[:5] + ("modules.weakdep",) + INDEX_FILES[5:]


class KmodCompat(enum.Enum):
    """Which kmod's depmod the index is byte-identical to.

    Both kmods read either index: the files differ only in layout and in
    modules.weakdep, which kmod 30 neither writes nor reads.
    """

    KMOD30 = "30"  #: Debian 12: trie nodes written children first, no modules.weakdep
    KMOD34 = "34"  #: Debian 13: trie nodes in pre-order (kmod dada048cbf57), modules.weakdep (kmod 05828b4a)

    @property
    def index_files(self) -> tuple[str, ...]:
        """The files this kmod's depmod writes, in its order."""
        return ALL_INDEX_FILES if self is KmodCompat.KMOD34 else INDEX_FILES

    @property
    def weakdep(self) -> bool:
        """Whether this kmod knows weak dependencies (modules.weakdep, ``weakdep`` lines)."""
        return self is KmodCompat.KMOD34

    @classmethod
    def detect(cls, root: str = "/") -> KmodCompat:
        """The kmod installed under ``root`` (the one whose depmod would otherwise run); KMOD30 when unknown.

        A feature test, not a version number: a kmod whose binary names
        modules.weakdep writes it, and (kmod 34, Debian 13) writes pre-order tries.
        """
        for path in ("usr/bin/kmod", "bin/kmod"):
            try:
                with open(os.path.join(root, path), "rb") as f:
                    return cls.KMOD34 if b"modules.weakdep" in f.read(4 << 20) else cls.KMOD30
            except OSError:
                continue
        return cls.KMOD30


#: the other files of the tree that depmod reads
TREE_FILES = ("modules.order", "modules.builtin", "modules.builtin.modinfo")

# A file or directory changed less than this long ago may change again within
# the same timestamp tick (ext4 stamps with a coarse clock): its stat is not
# trusted by the next run (the "racy" entries of git's index).
_RACY_NS = 2_000_000_000

#: (size, mtime_ns, inode) of a file; None when it changed too recently to be trusted later
StatKey = tuple[int, int, int] | None
#: a directory's (mtime_ns, inode, [(entry name, its module name; None for a directory)]),
#: its subdirectories and module files in readdir order
DirListing = tuple[int, int, list[tuple[str, str | None]]]


def stat_key(st: os.stat_result, now_ns: int) -> StatKey:
    """What identifies a file's version: size, mtime and inode; None when changed too recently."""
    if st.st_mtime_ns >= now_ns - _RACY_NS:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


class TreeWalk(NamedTuple):
    """The module files of a tree, as depmod picks them."""

    chosen: dict[str, str]  #: module name -> path of the file that wins, in walk order
    stats: dict[str, StatKey]  #: path -> its stat key, for every chosen file
    errors: list[str]  #: ``DIR: why`` for directories that could not be read
    vanished: list[tuple[str, str]]  #: (path, why) for chosen files that could not be stat'ed
    listings: dict[str, DirListing]  #: directory listings to reuse next time (racy ones left out)
    now_ns: int  #: the wall clock when the walk began
    unsupported: list[tuple[str, str]]  #: (path, what it is) of entries neither a directory nor a regular file


class TreeInputs:
    """The inputs of one tree's index; raises :class:`UserError` / :class:`NotFoundError` when wrong.

    ``symvers`` (-E) or ``system_map`` (-F) name the kernel's own symbols;
    ``config_paths`` the depmod.d directories or files (None: the system's).
    """

    def __init__(self, kver: str, basedir: str | None = None, *, config_paths: list[str] | None = None,
                 symvers: str | None = None, system_map: str | None = None,
                 compat: KmodCompat | None = None) -> None:
        if not re.match(r"\d+\.\d+", kver):
            raise UserError(kver, "is not a kernel release (expected e.g. 6.1.0-13-amd64)")
        self.kver = kver
        root = os.path.abspath(basedir) if basedir else ""
        #: the tree's directory
        self.dirname = f"{root}/lib/modules/{kver}"
        if not os.path.isdir(self.dirname):
            raise NotFoundError(self.dirname, "no such module directory",
                                "install the kernel's modules or pass the right -b BASEDIR and KVER")
        for what, path in (("-E", symvers), ("-F", system_map)):
            if path is not None and not os.path.isfile(path):
                raise NotFoundError(path, f"no such file (given with {what})")
        #: depmod.d settings
        self.config = DepmodConfig.load(kver, config_paths)
        #: Module.symvers given with -E, or None
        self.symvers = symvers
        #: System.map given with -F, or None
        self.system_map = system_map
        self._skip = frozenset(("build", "source", *self.config.excludes))
        #: whose depmod the files follow (default: the kmod installed on this machine)
        self.compat = compat if compat is not None else KmodCompat.detect()

    def identity(self, now_ns: int) -> tuple[object, ...] | None:
        """Everything but the module files that the index depends on, as plain data to compare.

        The tree's other files and the kernel symbol files count by their stat
        key; None when one of them changed too recently to be trusted.
        """
        files: list[object] = []
        for path in [os.path.join(self.dirname, name) for name in TREE_FILES] + [self.symvers, self.system_map]:
            key: object = ()  # missing (or not given)
            if path is not None:
                try:
                    key = stat_key(os.stat(path), now_ns)
                except OSError:
                    pass
                if key is None:
                    return None
            files.append((path, key))
        return (self.dirname, repr(self.config), tuple(files), self.compat.value)

    # --- the walk ---------------------------------------------------------------

    def walk(self, listings: dict[str, DirListing] | None = None,
             found: Callable[[str], object] | None = None) -> TreeWalk:
        """The files that win for each module name; ``listings`` from an earlier walk are reused.

        ``found`` is called with each module file as the walk finds it (a file
        may later lose to another of the same name), so reading can start early.
        """
        try:
            w = self._walk_all(listings or {}, found)
        except _StaleListing:
            w = self._walk_all({}, found)
        chosen = set(w.chosen.values())
        w.vanished[:] = [v for v in w.vanished if v[0] in chosen]
        return w

    def _walk_all(self, old: dict[str, DirListing], found: Callable[[str], object] | None) -> TreeWalk:
        w = TreeWalk({}, {}, [], [], {}, time.time_ns(), [])
        self._walk(self.dirname, self.dirname, None, w, old, found)
        for ext in self.config.externals:
            if os.path.isdir(ext):
                self._walk(ext.rstrip("/"), ext.rstrip("/"), None, w, old, found)
        return w

    def _walk(self, directory: str, name: str, parent_fd: int | None, w: TreeWalk,
              old: dict[str, DirListing], found: Callable[[str], object] | None) -> None:
        # Directories are opened relative to their parent (``name`` in ``parent_fd``)
        # and files stat'ed relative to their directory: the kernel then resolves
        # one name, not the whole path.
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno == errno.ENOTDIR and old:  # a reused listing said "directory"
                raise _StaleListing(directory) from None
            w.errors.append(f"{directory}: {(exc.strerror or str(exc)).lower()}")
            return
        try:
            try:
                dst = os.fstat(fd)  # before listing: a change made after it shows in the next mtime
                hit = old.get(directory)
                if hit is not None and hit[0] == dst.st_mtime_ns and hit[1] == dst.st_ino:
                    entries = hit[2]
                else:
                    entries = _list(fd)
            except OSError as exc:
                w.errors.append(f"{directory}: {(exc.strerror or str(exc)).lower()}")
                return
            if dst.st_mtime_ns < w.now_ns - _RACY_NS:
                w.listings[directory] = (dst.st_mtime_ns, dst.st_ino, entries)
            skip = self._skip
            chosen, stats = w.chosen, w.stats
            trusted_before = w.now_ns - _RACY_NS
            prefix = directory + "/"
            stat_at, is_dir = os.stat, stat.S_ISDIR
            for entry, modname in entries:
                if entry in skip:
                    continue
                path = prefix + entry
                if modname is None:
                    self._walk(path, entry, fd, w, old, found)
                    continue
                if modname[:1] == _UNSUPPORTED:  # a FIFO, a device, a link to one or to nothing: depmod says so
                    w.unsupported.append((path, modname[1:]))
                    continue
                # the common case inline (4,000 files a run); a second file of the same name goes aside
                if modname in chosen:
                    if self._duplicate(modname, path, entry, fd, w) and found is not None:
                        found(path)
                    continue
                chosen[modname] = path
                try:
                    st = stat_at(entry, dir_fd=fd)
                except OSError as exc:
                    w.vanished.append((path, f"vanished during the scan: {(exc.strerror or '').lower()}"))
                    continue
                if is_dir(st.st_mode):  # a listing reused while a link changed its target
                    raise _StaleListing(path)
                stats[path] = (st.st_size, st.st_mtime_ns, st.st_ino) if st.st_mtime_ns < trusted_before else None
                if found is not None:
                    found(path)
        finally:
            os.close(fd)

    def _duplicate(self, modname: str, path: str, entry: str, dir_fd: int, w: TreeWalk) -> bool:
        # True when ``path`` now wins and was stat'ed
        old = w.chosen[modname]
        if self._old_wins(old, path, modname):
            return False
        del w.chosen[modname]
        w.stats.pop(old, None)
        w.chosen[modname] = path
        try:
            st = os.stat(entry, dir_fd=dir_fd)
        except OSError as exc:
            w.vanished.append((path, f"vanished during the scan: {(exc.strerror or '').lower()}"))
            return False
        if stat.S_ISDIR(st.st_mode):
            raise _StaleListing(path)
        w.stats[path] = stat_key(st, w.now_ns)
        return True

    def _old_wins(self, oldpath: str, newpath: str, modname: str) -> bool:
        # depmod_module_is_higher_priority: compares "DIR/NAME" without the extension
        cfg = self.config
        base = self.dirname + "/"

        def stem(path: str) -> str:
            d = os.path.dirname(path)
            return f"{d}/{os.path.basename(path)[:len(modname)]}"

        new_s, old_s = stem(newpath), stem(oldpath)
        rel_new = new_s[len(base):] if new_s.startswith(base) else None
        rel_old = old_s[len(base):] if old_s.startswith(base) else None
        for ov in cfg.overrides:
            if rel_new == ov:
                return False
            if rel_old == ov:
                return True
        bprio = oldprio = newprio = -1
        i = 0
        for se in cfg.searches:
            if se.builtin:
                bprio = i
            elif se.external:
                for ext in cfg.externals:
                    if new_s.startswith(ext.rstrip("/") + "/"):
                        newprio = i
                    if old_s.startswith(ext.rstrip("/") + "/"):
                        oldprio = i
                    i += 1
            elif se.path is not None and rel_new is not None and rel_new.startswith(se.path + "/"):
                newprio = i
            elif se.path is not None and rel_old is not None and rel_old.startswith(se.path + "/"):
                oldprio = i
            i += 1
        if newprio < 0:
            newprio = bprio
        if oldprio < 0:
            oldprio = bprio
        return newprio <= oldprio


class _StaleListing(Exception):
    """A reused directory listing no longer describes the directory."""


#: first character of the "module name" _list gives an entry that is neither a directory nor a regular file
#: (the rest says what it is): a module name never starts with a NUL
_UNSUPPORTED = "\0"


def _list(fd: int) -> list[tuple[str, str | None]]:
    """The subdirectories (module name None), module files and unsupported entries (a name starting with
    :data:`_UNSUPPORTED`) of the open directory ``fd``, in readdir order."""
    out: list[tuple[str, str | None]] = []
    with os.scandir(fd) as it:
        for entry in it:  # readdir order, as depmod walks
            name = entry.name
            try:
                if entry.is_dir():
                    out.append((name, None))
                elif not name.endswith(MODULE_SUFFIXES) or any(name == s for s in MODULE_SUFFIXES):
                    continue
                elif entry.is_file():
                    out.append((name, module_name(name)))
                else:  # depmod: "unsupported file type" (kmod's depmod_modules_search_dir)
                    out.append((name, _UNSUPPORTED + _kind(entry)))
            except OSError:
                continue
    return out


def _kind(entry: os.DirEntry[str]) -> str:
    try:
        mode = entry.stat().st_mode
    except OSError:
        return "a link to nothing"
    for test, what in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a regular file"
