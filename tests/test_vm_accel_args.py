"""QEMU's -accel value: several virtual CPUs under TCG share one host thread (see vm/accel.qemu_accel)."""

from __future__ import annotations

from kmodkit.vm.accel import Accel, qemu_accel


def test_several_cpus_under_tcg_run_in_turns_in_one_thread() -> None:
    assert qemu_accel(Accel.TCG, 2) == "tcg,thread=single"
    assert qemu_accel(Accel.TCG, 1) == "tcg"
    assert qemu_accel(Accel.KVM, 4) == "kvm"  # hardware CPUs run as they are
