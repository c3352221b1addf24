"""A fuzz campaign: many batches through every command, findings grouped by cause, one reproducer each."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fuzz.corpus import Input, Seed, control, generate
from fuzz.harness import COMMANDS, Finding, Harness, Run

#: kinds found on a whole batch (a run), narrowed to one input by bisection; the others name their input
BATCH_KINDS = ("exit4", "hang", "traceback", "bad_status", "batch_abandoned")


@dataclass
class Group:
    """Findings of one cause: how many, the first one, and a single-input reproducer when found."""

    first: Finding  #: the first finding of the group
    count: int = 0  #: findings in the group
    reproducer: Input | None = None  #: one input that shows it alone
    saved: Path | None = None  #: where the reproducer was written


@dataclass
class Report:
    """What a campaign found."""

    seed: int  #: the run's seed
    inputs: int = 0  #: fuzz inputs made (controls not counted)
    controls: int = 0  #: unmutated seeds mixed into the batches
    batches: int = 0  #: batches
    runs: int = 0  #: kmodkit invocations
    seconds: float = 0.0  #: wall time
    counts: Counter[str] = field(default_factory=Counter)  #: findings by kind
    groups: dict[tuple[str, str, str], Group] = field(default_factory=dict)  #: findings by cause
    bisections: int = 0  #: batches narrowed down to one input

    @property
    def clean(self) -> bool:
        """Whether every promise held."""
        return not any(self.counts.values())

    def summary(self) -> str:
        """The one-line result."""
        c = self.counts
        return (f"fuzz: seed={self.seed} inputs={self.inputs} batches={self.batches} runs={self.runs} "
                f"exit4={c['exit4']} hangs={c['hang']} tracebacks={c['traceback']} lacking_line={c['lacking']} "
                f"controls_lost={c['control_lost']} error_with_exit0={c['error_exit0']} "
                f"batches_abandoned={c['batch_abandoned']} bad_error_lines={c['bad_error_line']} "
                f"sign_body={c['sign_body']} "
                f"verify_valid_kernel_refuses={c['verify_valid_kernel_refuses']} "
                f"other={c['bad_output'] + c['bad_status']} ({self.seconds:.0f} s)")

    def details(self) -> str:
        """Every group, biggest first, with its reproducer."""
        lines = []
        for (kind, command, detail), g in sorted(self.groups.items(), key=lambda kv: -kv[1].count):
            lines.append(f"  [{g.count}] {kind} in {command}: {detail}")
            if g.first.message and g.first.message != detail:
                lines.append(f"        e.g. {g.first.message[:200]}")
            if g.reproducer is not None:
                where = f" -> {g.saved}" if g.saved else ""
                lines.append(f"        reproducer {g.reproducer.describe()}{where}")
        return "\n".join(lines)


def _batch_inputs(seeds: list[Seed], seed: int, start: int, size: int, special_rate: float,
                  controls: int, serial: int) -> list[Input]:
    items = [generate(seeds, seed, i, special_rate=special_rate) for i in range(start, start + size)]
    # controls get indices above any input's, so names never clash; spread through the batch
    for j in range(controls):
        items.insert((j * len(items)) // max(1, controls) + j, control(seeds, 10_000_000 + serial * 10 + j, j + serial))
    return items


def save_reproducer(out: Path, number: int, group: tuple[str, str, str], item: Input) -> Path:
    """Write one reproducer (the input's bytes, or a note for a special file) and how to run it."""
    kind, command, detail = group
    directory = out / f"{number:03d}-{kind}-{command}"
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / item.filename
    if item.special is None:
        target.write_bytes(item.data)
    how = {"index": "put it in BASE/lib/modules/KVER/kernel/ and run: kmodkit index -b BASE KVER",
           "deps": "index a tree holding it, then: kmodkit deps -b BASE -k KVER --show-depends NAME",
           "sign": "kmodkit sign --key KEY --cert CERT --replace FILE",
           "verify": "kmodkit verify --cert CERT FILE",
           "info-F": "kmodkit info -F name FILE", "info-json": "kmodkit info --json FILE",
           "info-summary": "kmodkit info --summary FILE"}.get(command, "kmodkit info FILE")
    (directory / "README").write_text(f"{kind} in {command}: {detail}\ninput: {item.describe()}\nrun: {how}\n")
    return directory


def campaign(harness: Harness, seeds: list[Seed], seed: int, count: int, batch: int = 500,
             commands: Sequence[str] = COMMANDS, special_every: int = 10, special_batch: int = 24,
             controls: int = 3, bisect: int = 20, out: Path | None = None, special_timeout: float = 15.0,
             progress: Callable[[str], None] | None = None) -> Report:
    """Run ``count`` inputs of ``seed`` through ``commands`` in batches of ``batch``.

    Every ``special_every``-th batch is a small one where half the inputs are special files
    (FIFOs, /dev/zero, directories...), so a hang there does not hide the findings of a big
    batch. The first finding of each cause that involves a whole batch is narrowed to one
    input (at most ``bisect`` times); reproducers go to ``out`` when given.
    """
    report = Report(seed)
    start_time = time.monotonic()
    index = 0
    serial = 0
    while index < count:
        serial += 1
        special = special_every > 0 and serial % special_every == 0
        size = min(special_batch if special else batch, count - index)
        items = _batch_inputs(seeds, seed, index, size, 0.5 if special else 0.0, controls, serial)
        index += size
        report.inputs += size
        report.controls += controls
        report.batches += 1
        for command in commands:
            run = harness.run(command, items, timeout=special_timeout if special else None)
            report.runs += 1
            _record(report, harness, run, items, bisect, out, special)
        report.seconds = time.monotonic() - start_time
        if progress is not None:
            progress(f"{report.inputs}/{count} inputs, {report.runs} runs: " + report.summary())
        shutil.rmtree(harness.workdir, ignore_errors=True)  # batch directories: reproducers are saved apart
        harness.workdir.mkdir(parents=True, exist_ok=True)
        harness.config.mkdir(parents=True, exist_ok=True)
    report.seconds = time.monotonic() - start_time
    return report


def _record(report: Report, harness: Harness, run: Run, items: list[Input], bisect: int, out: Path | None,
            special: bool) -> None:
    for finding in run.findings:
        report.counts[finding.kind] += 1
        group = report.groups.get(finding.group)
        if group is None:
            group = report.groups[finding.group] = Group(finding)
        group.count += 1
        if group.reproducer is not None:
            continue
        culprits = finding.inputs
        if len(culprits) != 1 and finding.kind in BATCH_KINDS and report.bisections < bisect:
            report.bisections += 1
            group_key = finding.group

            def same(r: Run, g: tuple[str, str, str] = group_key) -> bool:
                return any(f.group == g for f in r.findings)

            # a hang shows within seconds on a small part; in a batch of special files the others show as fast
            culprits = harness.bisect(run.command, [i for i in items if not i.control], same,
                                      timeout=8.0 if finding.kind == "hang" or special else harness.timeout)
        if len(culprits) == 1:
            group.reproducer = culprits[0]
            if out is not None:
                group.saved = save_reproducer(out, len(report.groups), finding.group, culprits[0])
