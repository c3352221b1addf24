"""Before the kernel is asked: each module of a load plan checked against the running kernel (``kmodkit check``).

A step the prediction refuses is not handed to ``finit_module``: the load stops there with the
kernel's errno and the lines it would log, marked as predicted.  Modules the plan loads first count
as loaded, and their exports (out-of-tree ones read from their files) as available.  When the
running kernel's headers are not installed nothing can be predicted and the load goes on unchecked.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os

from kmodkit.check.verdict import Prediction
from kmodkit.errors import KmodkitError
from kmodkit.index.resolver import StepKind
from kmodkit.loader.explain import Explanation, Reason, read_lockdown
from kmodkit.loader.plan import LoadPlan

log = logging.getLogger(__name__)

#: check's name for the failed check -> the loader's kind of failure
_REASONS = {
    "signature": Reason.SIGNATURE_REFUSED, "lockdown": Reason.SIGNATURE_REFUSED,
    "elf": Reason.INVALID_FORMAT, "struct_module": Reason.INVALID_FORMAT, "module_layout": Reason.INVALID_FORMAT,
    "vermagic": Reason.INVALID_FORMAT, "force": Reason.INVALID_FORMAT, "rwx": Reason.INVALID_FORMAT,
    "livepatch": Reason.INVALID_FORMAT, "exports": Reason.INVALID_FORMAT,
    "loaded": Reason.ALREADY_LOADED, "sysfs": Reason.ALREADY_LOADED, "blacklist": Reason.PERMISSION,
}


def precheck(plan: LoadPlan, procfs: str = "/proc", sysfs: str = "/sys") -> Explanation | None:
    """Why the running kernel would refuse a module of ``plan``, predicted from files; None when all would load
    (or nothing can be predicted: the running kernel's headers are missing)."""
    from kmodkit.check.checker import Checker, Machine, Provider, provider
    from kmodkit.check.target import TargetKernel

    try:
        target = TargetKernel.installed(os.uname().release)
        machine = Machine.running(procfs, sysfs)
    except KmodkitError as exc:
        log.info("load not checked beforehand: %s", exc)
        return None
    earlier: list[str] = []
    providers: list[Provider] = []
    for step in plan.steps:
        if step.kind is not StepKind.INSMOD or step.already_loaded or step.path is None:
            continue
        state = dataclasses.replace(machine, loaded=machine.loaded | frozenset(earlier))
        try:
            p = Checker(target, state, providers).check(step.path)
        except KmodkitError as exc:
            log.info("%s not checked beforehand: %s", step.name, exc)
            return None
        if p.refusal is not None and step.required:
            return _explanation(step.name, p, machine.enforce, read_lockdown(sysfs))
        earlier.append(p.name)
        if target.source.moddir is None or not step.path.startswith(str(target.source.moddir) + "/kernel/"):
            try:
                providers.append(provider(step.path))
            except KmodkitError:
                pass
    return None


def _explanation(module: str, p: Prediction, enforce: bool | None, lockdown: str | None) -> Explanation:
    r = p.refusal
    assert r is not None
    reason = _REASONS.get(r.check)
    if reason is None:  # the symbols check: a missing symbol, or a CRC or namespace the kernel refuses
        reason = Reason.UNKNOWN_SYMBOL if r.errno == errno.ENOENT else Reason.SYMBOL_VERSION
    return Explanation(module, r.errno, reason, f"predicted, not loaded: {r.problem}", r.fix or "",
                       tuple(line.text for line in p.lines), enforce, lockdown, predicted=True)
