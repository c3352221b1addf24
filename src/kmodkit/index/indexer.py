"""One run of ``kmodkit index``: the quick "nothing changed" check, the rebuild, the writing.

:class:`Indexer` ties the pieces together in the order that keeps a run
short: the cache and the walk first (light imports only), and only when
something changed the module reader, the model and the renderers, with the
files read by worker processes while the tree is still being walked.

    ix = Indexer("6.1.0-13-amd64", basedir="/srv/image")
    if ix.up_to_date() is None:          # None: the index must be rebuilt
        result, files = ix.rebuild()     # DepmodResult, name -> bytes
        ix.write(result, files)          # all files or none, then the cache
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kmodkit.fileio import finish_commit
from kmodkit.index.inputs import TreeInputs, TreeWalk

if TYPE_CHECKING:
    from kmodkit.index.cache import IndexCache
    from kmodkit.index.depfiles import WrittenIndex
    from kmodkit.index.depmod import DepmodResult


class Indexer:
    """The index of ``BASEDIR/lib/modules/KVER`` written to ``outdir``; validated when built.

    ``use_cache`` False reads every module and neither reads nor writes the cache.
    """

    def __init__(self, kver: str, basedir: str | None = None, *, outdir: str | None = None,
                 config_paths: list[str] | None = None, symvers: str | None = None,
                 system_map: str | None = None, errsyms: bool = False, jobs: int = 2,
                 use_cache: bool = True) -> None:
        #: the tree, its depmod.d rules and kernel symbol files
        self.inputs = TreeInputs(kver, basedir, config_paths=config_paths, symvers=symvers, system_map=system_map)
        #: where the index is written (default: the tree's directory)
        self.outdir = outdir or self.inputs.dirname
        finish_commit(self.outdir)  # a killed run's half-renamed index is completed before the quick check trusts it
        self.errsyms = errsyms
        self.jobs = jobs
        self._cache: IndexCache | None = None
        if use_cache:
            from kmodkit.index.cache import IndexCache

            self._cache = IndexCache.load(self.outdir)
        self._walk: TreeWalk | None = None
        self._identity: object = None

    def up_to_date(self) -> int | None:
        """How many modules were read to find the index current (written nothing but stats); None: rebuild.

        Never current with ``errsyms``: the unknown symbols are reported by a rebuild.
        """
        cache = self._cache
        if cache is None or not cache.paths:
            return None
        self._walk = walk = self.inputs.walk(cache.listings)
        self._identity = identity = self.inputs.identity(walk.now_ns)
        if self.errsyms:
            return None
        current, read = cache.is_current(identity, walk)
        if not current:
            return None
        if read or walk.listings != cache.listings:
            cache.save_head(identity, walk)
        return read

    @property
    def module_count(self) -> int:
        """How many module files the last walk found (0 before one)."""
        return len(self._walk.chosen) if self._walk is not None else 0

    def rebuild(self) -> tuple[DepmodResult, dict[str, bytes]]:
        """The model and every index file's bytes; raises DependencyCycleError on a loop."""
        from kmodkit.index.depfiles import render_all
        from kmodkit.index.depmod import Depmod
        from kmodkit.index.scan import Prefetch, worker_pool

        dm = Depmod(self.inputs.kver, errsyms=self.errsyms, jobs=self.jobs, inputs=self.inputs)
        cache = self._cache
        with worker_pool(self.jobs) as pool:
            read_early = None
            if self._walk is None:
                # with no records to reuse every file is read: start while the tree is still being walked
                fresh = cache is None or not cache.paths
                prefetch = Prefetch(pool) if pool is not None and fresh else None
                self._walk = self.inputs.walk(cache.listings if cache is not None else None,
                                              prefetch.add if prefetch is not None else None)
                self._identity = self.inputs.identity(self._walk.now_ns)
                read_early = prefetch.results if prefetch is not None else None
            result = dm.compute(self._walk, cache, pool, read_early)
            files = render_all(result, pool)
        return result, files

    def write(self, result: DepmodResult, files: dict[str, bytes]) -> WrittenIndex:
        """Write ``files`` atomically into :attr:`outdir`, then the cache (when used)."""
        from kmodkit.index.depfiles import write_index

        written = write_index(files, self.outdir)
        if self._cache is not None and self._walk is not None:
            self._cache.save(self._identity, self._walk, result.records)
        return written
