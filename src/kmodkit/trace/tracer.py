"""``kmodkit trace``: the function_graph tracer filtered to one module's functions, around a workload.

A run, in order: find (or mount) tracefs, check that the module is loaded and
which of its functions ftrace can trace, save every control file the run
changes, filter function_graph to the module's functions (or, with ``graph``,
to everything they call), stream ``trace_pipe`` to a file while the workload
runs, then put every saved file back -- also when the workload fails, the
user presses Ctrl-C or a write is refused.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import IO

from kmodkit.errors import EnvironmentNotReady, NotFoundError, UserError
from kmodkit.trace.functions import ModuleFunctions, choose_functions, loaded_module
from kmodkit.trace.graph import CallNode, FunctionStats, GraphTrace
from kmodkit.trace.tracefs import TraceFs, session

log = logging.getLogger(__name__)

#: every control file a trace run may change, restored afterwards in this order (tracing_on handled apart)
CHANGED_FILES = ["tracing_on", "current_tracer", "set_ftrace_filter", "set_graph_function", "set_ftrace_pid",
                 "tracing_thresh", "max_graph_depth", "options/funcgraph-proc", "options/funcgraph-duration",
                 "options/funcgraph-cpu", "options/funcgraph-abstime", "options/funcgraph-tail",
                 "options/sleep-time", "options/function-fork", "buffer_size_kb"]

#: ring buffer per CPU during a run, KiB, when the current one is smaller: room for ~100,000 events a CPU
#: between two reads of trace_pipe
BUFFER_KB = 8192

#: option values the parser relies on: the task on every line, durations shown, sleep counted in a call's time
OPTIONS = {"options/funcgraph-proc": "1", "options/funcgraph-duration": "1", "options/funcgraph-cpu": "1",
           "options/funcgraph-abstime": "0", "options/funcgraph-tail": "0", "options/sleep-time": "1"}


@dataclass(frozen=True)
class TraceReport:
    """What a trace run found."""

    module: str  #: the module traced
    functions: tuple[FunctionStats, ...]  #: per function, most total time first
    module_functions: frozenset[str]  #: which of the functions are the module's own (the rest: kernel, --graph)
    untraceable: tuple[str, ...]  #: chosen functions ftrace could not trace
    tree: CallNode  #: the call tree (root's children are the entry points)
    callers: tuple[tuple[str, str, int], ...]  #: (caller, callee, calls), most calls first
    events: int  #: events read
    lost: int  #: events the kernel dropped (buffer overrun)
    seconds: float  #: how long tracing was on
    workload_status: int | None  #: the workload's exit status; None when only --duration was traced

    def stats(self, name: str) -> FunctionStats | None:
        """The statistics of function ``name``, or None when it was not called."""
        return next((s for s in self.functions if s.name == name), None)

    def to_json(self) -> dict[str, object]:
        """The report as JSON: durations in microseconds."""
        return {"module": self.module, "seconds": round(self.seconds, 6), "events": self.events, "lost": self.lost,
                "workload_status": self.workload_status, "untraceable": list(self.untraceable),
                "functions": [{**s.to_json(), "module": s.name in self.module_functions} for s in self.functions],
                "callers": [{"caller": a, "callee": b, "calls": n} for a, b, n in self.callers],
                "tree": self.tree.to_json()}


class Trace:
    """One ``kmodkit trace`` run, validated when made; :meth:`run` does it."""

    def __init__(self, module: str, functions: tuple[str, ...] = (), graph: bool = False,
                 duration: float | None = None, workload: tuple[str, ...] = (), mount: bool = True) -> None:
        if not module:
            raise UserError("trace", "no module named", "name a loaded module, e.g. kmodkit trace hello")
        if duration is not None and (not math.isfinite(duration) or duration <= 0):
            raise UserError(f"--duration {duration}", "must be a positive number of seconds")
        if duration is None and not workload:
            raise UserError("trace", "nothing to trace during", "give a workload after -- or --duration SECONDS")
        for g in functions:
            if not g or any(c in g for c in "\n\0 :"):
                raise UserError(f"--functions {g!r}", "is not a function name or glob")
        #: the module to trace, as given
        self.module = module
        #: globs choosing its functions (all when empty)
        self.functions = functions or ("*",)
        #: also trace every kernel function the module's functions call
        self.graph = graph
        #: seconds to trace (a time limit for the workload when there is one)
        self.duration = duration
        #: the command to run while tracing
        self.workload = workload
        #: mount tracefs when it is not mounted (and unmount it at the end)
        self.mount = mount

    def run(self) -> TraceReport:
        """Trace, restore tracefs, and return the report.

        Raises EnvironmentNotReady (tracefs, lockdown, no function_graph),
        NotFoundError (module not loaded, workload not found), UserError (a
        function that is notrace or was inlined).
        """
        module = loaded_module(self.module)  # first: nothing is mounted for a module that is not there
        with session(self.mount) as fs:
            if "function_graph" not in fs.tracers():
                raise EnvironmentNotReady(fs.path("available_tracers"), "this kernel has no function_graph tracer",
                                          "boot a kernel built with CONFIG_FUNCTION_GRAPH_TRACER")
            chosen = choose_functions(fs, module, self.functions)
            with fs.saved(CHANGED_FILES):
                return self._traced(fs, chosen)

    def _setup(self, fs: TraceFs, chosen: ModuleFunctions) -> None:
        fs.write("tracing_on", "0")
        fs.write("current_tracer", "nop")
        spec = "".join(f"{f}:mod:{chosen.module}\n" for f in chosen.traceable)
        if self.graph:
            fs.write("set_ftrace_filter", "")
            fs.write("set_graph_function", "".join(f"{f}\n" for f in chosen.traceable))  # no :mod: here
            fs.write("max_graph_depth", "0")
        else:
            if fs.has("set_graph_function"):
                fs.write("set_graph_function", "")
            fs.write("set_ftrace_filter", spec)
        if fs.has("set_ftrace_pid"):
            fs.write("set_ftrace_pid", "")
        if fs.has("tracing_thresh"):
            fs.write("tracing_thresh", "0")  # else function_graph prints only the calls longer than it
        for name, value in OPTIONS.items():
            if fs.has(name):
                fs.write(name, value)
        if _kib(fs.read("buffer_size_kb")) < BUFFER_KB:
            fs.write("buffer_size_kb", str(BUFFER_KB))
        fs.write("current_tracer", "function_graph")  # also empties the ring buffer

    def _traced(self, fs: TraceFs, chosen: ModuleFunctions) -> TraceReport:
        self._setup(fs, chosen)
        with tempfile.TemporaryFile(prefix="kmodkit-trace-") as raw:
            dropped = _dropped(fs)
            pipe = _PipeReader(fs.path("trace_pipe"), raw)
            pipe.start()
            status: int | None = None
            fs.write("tracing_on", "1")
            start = time.monotonic()
            try:
                status = self._workload()
            finally:
                fs.write("tracing_on", "0")
                seconds = time.monotonic() - start
                pipe.stop()
            if pipe.error is not None:
                raise pipe.error
            dropped = _dropped(fs) - dropped
            trace = GraphTrace()
            raw.seek(0)
            while chunk := raw.read(1 << 22):
                trace.feed(chunk.decode("utf-8", "replace"))
            trace.finish()
        trace.lost = max(trace.lost, dropped)
        if trace.lost:
            log.warning("the kernel dropped %d events (buffer overrun): counts are low; "
                        "raise /sys/kernel/tracing/buffer_size_kb or trace fewer functions", trace.lost)
        edges = sorted(((a, b, n) for (a, b), n in trace.callers().items()), key=lambda e: (-e[2], e[0], e[1]))
        return TraceReport(chosen.module, tuple(trace.stats()), frozenset(chosen.traceable), chosen.untraceable,
                           trace.root, tuple(edges), trace.events, trace.lost, seconds, status)

    def _workload(self) -> int | None:
        if not self.workload:
            assert self.duration is not None
            time.sleep(self.duration)
            return None
        try:
            proc = subprocess.Popen(list(self.workload), stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise NotFoundError(self.workload[0], "no such program", "give the workload's full path") from None
        except PermissionError:
            raise UserError(self.workload[0], "is not executable") from None
        try:
            return proc.wait(self.duration)
        except subprocess.TimeoutExpired:
            log.info("--duration %s s reached: stopping the workload", self.duration)
            return None
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _kib(text: str) -> int:
    # "1410" or "7 (expanded: 1410)" before the first tracer was set
    words = text.replace("(", " ").replace(")", " ").split()
    numbers = [int(w) for w in words if w.isdigit()]
    return max(numbers) if numbers else 0


def _dropped(fs: TraceFs) -> int:
    # events the ring buffers overwrote or could not take, summed over CPUs (per_cpu/cpuN/stats)
    total = 0
    try:
        cpus = os.listdir(fs.path("per_cpu"))
    except OSError:
        return 0
    for cpu in cpus:
        try:
            text = fs.read(f"per_cpu/{cpu}/stats")
        except Exception:  # a CPU that went offline
            continue
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("overrun", "dropped events") and value.strip().isdigit():
                total += int(value)
    return total


class _PipeReader(threading.Thread):
    # copies trace_pipe (which the kernel empties as it is read) into a file while the workload runs
    def __init__(self, path: str, out: IO[bytes]) -> None:
        super().__init__(daemon=True, name="trace_pipe")
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.out = out
        self.stopping = threading.Event()
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            idle_after_stop = 0
            while True:
                try:
                    chunk = os.read(self.fd, 1 << 20)
                except BlockingIOError:
                    chunk = b""
                except OSError as exc:
                    if exc.errno != errno.EINTR:
                        raise
                    chunk = b""
                if chunk:
                    self.out.write(chunk)
                    idle_after_stop = 0
                    continue
                if self.stopping.is_set():
                    idle_after_stop += 1
                    if idle_after_stop >= 3:  # empty three times after tracing stopped: drained
                        return
                time.sleep(0.02)
        except Exception as exc:  # reported by the caller, after tracefs is restored
            self.error = exc

    def stop(self) -> None:
        self.stopping.set()
        self.join()
        os.close(self.fd)
