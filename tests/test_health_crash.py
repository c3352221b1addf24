"""Health sees crashes: a module the kernel warned (taint W) or died (taint D) in is unhealthy, naming
the report; a report the running kernel's taint does not confirm (another boot's log) is not held
against it.  The logs are satyr's real reports (../shared/oops-corpus); the kernel's /proc and /sys
are a made-up tree (the host kernel has no modules; the booted proof is tests/test_vm_crash.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_oops_corpus import _corpus

from kmodkit.errors import NotFoundError
from kmodkit.kbuild.manifest import Expectation
from kmodkit.runtime.exporter import registry, render
from kmodkit.runtime.health import check, crash_problems, kernel_reports
from kmodkit.runtime.modules import KernelModules
from kmodkit.runtime.taint import mask_letters
from kmodkit.sysroot import Root

W, D, O = 1 << 9, 1 << 7, 1 << 12


def _fake_kernel(tmp_path: Path, taint: int, modules: tuple[str, ...]) -> KernelModules:
    """A made-up /proc and /sys with ``modules`` loaded (Live, out of tree) and the kernel tainted ``taint``."""
    proc, sys = tmp_path / "proc", tmp_path / "sys"
    (proc / "sys/kernel").mkdir(parents=True)
    (proc / "modules").write_text("".join(f"{m} 16384 0 - Live 0x0000000000000000 (O)\n" for m in modules))
    (proc / "sys/kernel/tainted").write_text(f"{taint}\n")
    for m in modules:
        (sys / "module" / m).mkdir(parents=True)
        (sys / "module" / m / "initstate").write_text("live\n")
    return KernelModules.of(Root(tmp_path))


def test_a_module_the_kernel_warned_in_is_unhealthy_naming_the_report(tmp_path: Path) -> None:
    log = _corpus() / "rhbz-1040900-s390x-1"  # a real WARNING in will_oops_init [will_oops]
    kernel = _fake_kernel(tmp_path, W | O, ("will_oops", "other"))
    (warned, other) = check([Expectation("will_oops", None, None, "O"), Expectation("other", None, None, "O")], kernel, kernel_reports(str(log)))
    assert warned.problems == ("the kernel warned in its code (taint W) at 16164.389572 s: WARNING in will_oops_init",)
    assert other.healthy


def test_module_names_match_as_the_kernel_matches_them(tmp_path: Path) -> None:
    reports = kernel_reports(str(_corpus() / "rhbz-827868"))  # WARNING in pppol2tp_xmit [l2tp_ppp]
    assert crash_problems("l2tp-ppp", reports, mask_letters(W)) == [
        "the kernel warned in its code (taint W) at 110417.280426 s: WARNING in pppol2tp_xmit"]


def test_an_oops_needs_the_kernels_taint_D(tmp_path: Path) -> None:
    reports = kernel_reports(str(_corpus() / "rhbz-1518943"))  # a NULL dereference in amdgpu
    assert crash_problems("amdgpu", reports, mask_letters(W)) == []  # the kernel warned, but never died
    (problem,) = crash_problems("amdgpu", reports, mask_letters(D))
    assert problem.startswith("the kernel died in its code (taint D)") and "NULL pointer dereference" in problem


def test_a_report_the_running_kernel_does_not_confirm_is_another_boots(tmp_path: Path) -> None:
    log = _corpus() / "rhbz-1040900-s390x-1"
    kernel = _fake_kernel(tmp_path, O, ("will_oops",))  # tainted O only: it has not warned since boot
    (verdict,) = check([Expectation("will_oops", None, None, "O")], kernel, kernel_reports(str(log)))
    assert verdict.healthy


def test_the_exporter_reports_the_warned_module_unhealthy(tmp_path: Path) -> None:
    kernel = _fake_kernel(tmp_path, W | O, ("will_oops",))
    text = render(registry(kernel, [Expectation("will_oops", None, None, "O")], str(_corpus() / "rhbz-1040900-s390x-1"))).decode()
    assert 'kmodkit_health_ok{module="will_oops"} 0.0' in text
    text = render(registry(kernel, [Expectation("will_oops", None, None, "O")], None)).decode()
    assert 'kmodkit_health_ok{module="will_oops"} 1.0' in text


def test_a_missing_log_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="nope.log"):
        kernel_reports(str(tmp_path / "nope.log"))


def test_an_unreadable_kernel_log_is_one_warning_and_no_reports(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from kmodkit.runtime import health

    monkeypatch.setattr(health, "KMSG", str(tmp_path / "kmsg"))  # a /dev/kmsg that is not there
    assert kernel_reports(health.KMSG) == [] and kernel_reports(health.KMSG) == []
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'kmsg'}: cannot read the kernel log (no such file or directory): crashes are not looked for"]
