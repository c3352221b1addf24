"""``kmodkit profile``: CPU samples of the whole machine while a workload runs, through Debian's ``perf``.

Why perf rather than perf_event_open(2) directly: a sample is only useful with
its kernel call chain resolved to function names, and perf already reads the
mmap ring buffer, the kernel's ORC-unwound call chains, /proc/kallsyms and the
modules' symbols, across perf.data format versions; kmodkit would re-implement
all of it to get the same stacks.  perf stays an external program: kmodkit runs
``perf record`` and reads ``perf script``'s text.

The event is ``cpu-clock``, a software event driven by an hrtimer: it works
under QEMU's TCG, where no hardware PMU is emulated (``cycles`` is not there).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from kmodkit.errors import EnvironmentNotReady, NotFoundError, UserError
from kmodkit.trace.functions import kallsyms_functions, loaded_module
from kmodkit.trace.tracefs import lockdown_mode

log = logging.getLogger(__name__)

#: the fix when perf is missing
PERF_FIX = "install it: apt-get install linux-perf"

#: the sampling event: software, so that it works without a PMU (QEMU TCG, many cloud VMs)
EVENT = "cpu-clock"


def find_perf() -> str:
    """The perf binary; EnvironmentNotReady with the package to install when there is none that runs."""
    perf = shutil.which("perf")
    if perf is None:
        raise EnvironmentNotReady("perf", "not installed", PERF_FIX)
    try:
        done = subprocess.run([perf, "--version"], capture_output=True, timeout=30)
    except OSError as exc:
        raise EnvironmentNotReady(perf, f"does not run: {exc.strerror}", PERF_FIX) from None
    if done.returncode != 0:
        # Debian's /usr/bin/perf of later releases is a wrapper that wants perf_MAJOR.MINOR of the running kernel
        text = (done.stderr or done.stdout).decode("utf-8", "replace").strip().splitlines()
        raise EnvironmentNotReady(perf, f"does not run: {text[0] if text else 'status ' + str(done.returncode)}",
                                  PERF_FIX)
    return perf


@dataclass(frozen=True)
class HotFunction:
    """One function of the module and where its samples went."""

    name: str  #: the module's function
    inclusive: int  #: samples with it on the stack
    own: int  #: samples with the CPU in it (no module function deeper)
    below: tuple[tuple[str, int], ...]  #: kernel functions the CPU was in under it, with samples, most first

    def to_json(self) -> dict[str, object]:
        """As JSON."""
        return {"name": self.name, "inclusive": self.inclusive, "self": self.own,
                "below": [{"name": n, "samples": c} for n, c in self.below]}


@dataclass(frozen=True)
class ProfileReport:
    """What a profile run sampled."""

    module: str  #: the module profiled
    frequency: int  #: samples per second per CPU asked for
    samples: int  #: samples taken (all CPUs, all tasks)
    module_samples: int  #: samples with a function of the module on the stack
    hot: tuple[HotFunction, ...]  #: the module's functions, most inclusive samples first
    folded: tuple[tuple[str, int], ...]  #: folded stacks ("comm;outer;...;leaf", samples), FlameGraph's format
    module_functions: frozenset[str]  #: the module's function names (coloured apart in the flame graph)
    workload_status: int | None  #: the workload's exit status; None when only a duration was sampled

    def folded_text(self) -> str:
        """The folded stacks as FlameGraph's ``stackcollapse`` writes them: ``frames count`` per line."""
        return "".join(f"{stack} {count}\n" for stack, count in self.folded)

    def to_json(self) -> dict[str, object]:
        """As JSON (folded stacks included)."""
        return {"module": self.module, "event": EVENT, "frequency": self.frequency, "samples": self.samples,
                "module_samples": self.module_samples, "workload_status": self.workload_status,
                "hot": [h.to_json() for h in self.hot],
                "folded": [{"stack": s, "samples": c} for s, c in self.folded]}


def parse_perf_script(text: Iterable[str]) -> Iterator[list[str]]:
    """Each sample of ``perf script -F comm,tid,ip,sym`` output as [comm, outermost frame, ..., leaf frame].

    A header line starts at column 0; its frames follow, indented, one per
    line as ``ADDRESS SYMBOL`` (leaf first); a blank line ends the sample.
    Unresolved frames are ``[unknown]``.
    """
    comm: str | None = None
    frames: list[str] = []
    for line in text:
        if not line.strip():
            if comm is not None:
                yield [comm, *reversed(frames)]
            comm, frames = None, []
            continue
        if line[0] not in " \t":
            if comm is not None:
                yield [comm, *reversed(frames)]
            # "comm  tid" (comm may hold spaces): drop the last word
            words = line.rstrip().rsplit(None, 1)
            comm, frames = (words[0] if len(words) == 2 else line.strip()).replace(";", ":").replace(" ", "_"), []
            continue
        parts = line.strip().split(None, 1)
        sym = parts[1] if len(parts) == 2 else "[unknown]"
        # "sym+0x1b (dso)" with other -F fields: keep the name only
        sym = sym.split(" (", 1)[0].split("+0x", 1)[0].strip() or "[unknown]"
        frames.append(sym.replace(";", ":").replace(" ", "_"))
    if comm is not None:
        yield [comm, *reversed(frames)]


def summarize(module: str, module_functions: frozenset[str], samples: Iterable[list[str]], frequency: int,
              workload_status: int | None = None) -> ProfileReport:
    """Fold the samples and find the module's hot functions and the kernel functions under them."""
    folded: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    below: dict[str, Counter[str]] = {}
    total = in_module = 0
    for stack in samples:
        total += 1
        folded[";".join(stack)] += 1
        frames = stack[1:]
        mine = [i for i, f in enumerate(frames) if f in module_functions]
        if not mine:
            continue
        in_module += 1
        for name in {frames[i] for i in mine}:
            inclusive[name] += 1
        innermost = frames[mine[-1]]
        leaf = frames[-1]
        if mine[-1] == len(frames) - 1:
            own[innermost] += 1
        else:
            below.setdefault(innermost, Counter())[leaf] += 1
    hot = tuple(HotFunction(n, c, own[n], tuple(below.get(n, Counter()).most_common(10)))
                for n, c in sorted(inclusive.items(), key=lambda nc: (-nc[1], nc[0])))
    return ProfileReport(module, frequency, total, in_module, hot, tuple(sorted(folded.items())), module_functions,
                         workload_status)


class Profile:
    """One ``kmodkit profile`` run, validated when made; :meth:`run` does it."""

    def __init__(self, module: str, frequency: int = 999, duration: float | None = None,
                 workload: tuple[str, ...] = ()) -> None:
        if not module:
            raise UserError("profile", "no module named", "name a loaded module, e.g. kmodkit profile hello")
        if not 1 <= frequency <= 100_000:
            raise UserError(f"--frequency {frequency}", "must be between 1 and 100000 samples per second")
        if duration is not None and (not math.isfinite(duration) or duration <= 0):
            raise UserError(f"--duration {duration}", "must be a positive number of seconds")
        if duration is None and not workload:
            raise UserError("profile", "nothing to sample during", "give a workload after -- or --duration SECONDS")
        #: the module, as given
        self.module = module
        #: samples per second per CPU
        self.frequency = frequency
        #: seconds to sample when there is no workload
        self.duration = duration
        #: the command to run while sampling
        self.workload = workload

    def run(self) -> ProfileReport:
        """Sample, then fold and summarize.

        Raises NotFoundError (module not loaded), EnvironmentNotReady (perf
        missing or refused, lockdown).
        """
        module = loaded_module(self.module)
        perf = find_perf()
        functions = frozenset(kallsyms_functions(module))
        command = list(self.workload) if self.workload else ["sleep", str(self.duration)]
        if self.workload and shutil.which(command[0]) is None:
            raise NotFoundError(command[0], "no such program", "give the workload's full path")
        with tempfile.TemporaryDirectory(prefix="kmodkit-profile-") as tmp:
            data = os.path.join(tmp, "perf.data")
            record = [perf, "record", "-q", "-e", EVENT, "-F", str(self.frequency), "-a", "-g", "-o", data,
                      "--", *command]
            log.info("running %s", record)
            with open(os.path.join(tmp, "record.log"), "w+b") as rlog:
                done = subprocess.run(record, stdin=subprocess.DEVNULL, stderr=rlog)
                rlog.seek(0)
                err = rlog.read().decode("utf-8", "replace").strip()
            if not os.path.exists(data) or os.path.getsize(data) == 0:
                if lockdown_mode() == "confidentiality":
                    raise EnvironmentNotReady("perf", "the kernel is locked down (confidentiality): kernel "
                                              "sampling is forbidden", "boot with lockdown=integrity or none")
                raise EnvironmentNotReady("perf record", f"recorded nothing (status {done.returncode}): "
                                          f"{err.splitlines()[-1] if err else 'no message'}",
                                          "check /proc/sys/kernel/perf_event_paranoid and run as root")
            script = subprocess.run([perf, "script", "-i", data, "-F", "comm,tid,ip,sym"], capture_output=True)
            if script.returncode != 0:
                raise EnvironmentNotReady("perf script", script.stderr.decode("utf-8", "replace").strip()
                                          or f"exited with status {script.returncode}")
        status = done.returncode if self.workload else None
        lines = script.stdout.decode("utf-8", "replace").splitlines()
        return summarize(module, functions, parse_perf_script(lines), self.frequency, status)
