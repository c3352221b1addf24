"""The one way kmodkit fans a batch out to worker processes.

Every batch (sign, verify, info, ``info --summary``, the index's reader and
renderers) asks :func:`jobs_for` how many workers it gets — the job count
and the "not worth forking below N items" threshold live here, and only
here — and runs through :func:`fan_out` or :func:`worker_pool`.

Workers are forked: a batch's state (a private key, loaded certificates)
reaches them without pickling.  They are bound to the parent's life: the
kernel kills a worker when its parent dies (``PR_SET_PDEATHSIG``), a worker
whose parent died while it started exits at once, and :mod:`kmodkit.fileio`
renames nothing into place once a worker's parent is gone.  So killing a
``kmodkit sign`` leaves no process holding the key or replacing files.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from concurrent.futures import Executor

T = TypeVar("T")
R = TypeVar("R")

#: more workers than this stop paying: the batches are bound by the disk and the parent's merging
MAX_JOBS = 8
#: prctl(2) option: the signal this process gets when the thread that forked it ends
_PR_SET_PDEATHSIG = 1


class Cost(enum.Enum):
    """How much work one item of a batch is; the value is the smallest batch worth forking workers for."""

    #: a private-key operation per item (milliseconds each): ``sign``
    SIGN = 8
    #: parse one module file and check or render it: ``verify``, ``info``, ``info --summary``
    READ = 64
    #: the index's column-wise read of one file (tens of microseconds each)
    SCAN = 400


def default_jobs() -> int:
    """Workers when the user names no number: the CPUs this process may run on, at most :data:`MAX_JOBS`."""
    return max(1, min(len(os.sched_getaffinity(0)), MAX_JOBS))


def jobs_for(count: int, cost: Cost, jobs: int | None = None) -> int:
    """How many worker processes a batch of ``count`` items of ``cost`` gets; 0: run it in this process.

    ``jobs`` is the user's number (None: :func:`default_jobs`); 0 or 1 means
    no workers, as does a batch smaller than ``cost.value``.
    """
    jobs = default_jobs() if jobs is None else jobs
    if jobs <= 1 or count < cost.value:
        return 0
    return min(jobs, count)


def chunks(items: Sequence[T], jobs: int, per_job: int = 4, most: int | None = None) -> list[list[T]]:
    """``items`` cut in order into about ``jobs * per_job`` pieces (each at most ``most`` long); [] when empty."""
    size = max(1, -(-len(items) // max(1, jobs * per_job)))
    if most is not None:
        size = min(size, most)
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


@contextmanager
def worker_pool(jobs: int) -> Iterator[Executor | None]:
    """``jobs`` forked worker processes bound to this process's life; None when ``jobs`` <= 1.

    The processes start at the first task, so a run that hands out nothing
    pays nothing.  Submit from the main thread: a worker dies with the
    thread that forked it.
    """
    if jobs <= 1:
        yield None
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_bind_to_parent,
                             initargs=(os.getpid(),)) as pool:
        yield pool


def fan_out(func: Callable[[T], R], args: Iterable[T], jobs: int) -> Iterator[R]:
    """``func(a)`` for each ``a`` of ``args``, in order: in ``jobs`` workers (:func:`worker_pool`), else here.

    Results come as they are ready, in order; ``func`` must be a module-level
    function (it is pickled by name) and its results picklable.
    """
    if jobs <= 1:
        yield from map(func, args)
        return
    with worker_pool(jobs) as pool:
        assert pool is not None
        yield from pool.map(func, args)


def _bind_to_parent(parent: int) -> None:
    # the initializer of every worker: die with the parent, and close the race where the parent
    # died between the fork and the prctl (the worker was reparented already then)
    import ctypes
    import signal

    from kmodkit import fileio

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # no prctl (not Linux): the parent check in fileio still stops renames
    fileio.bind_to_parent(parent)
    if os.getppid() != parent:
        os._exit(1)
