"""The kernel log a panicked guest leaves: console.log's lines from the kernel's replay of its whole
log (panic_print=0x20) on.  The console texts are made up here, shaped as a real one (the booted
proof is tests/test_vm_crash.py)."""

from __future__ import annotations

from kmodkit.vm.machine import BASE_CMDLINE, console_kernel_lines

#: a made-up console: quiet lets only the panic through, then the replay starts over at 0; early boot's
#: clock steps back a little (0.052 -> 0.002), which is no replay
CONSOLE = """\
[    6.684481] Kernel panic - not syncing: Fatal exception
[    6.685651] CPU: 0 PID: 110 Comm: insmod Tainted: G      D    OE      6.1.0-57-amd64 #1
some line the init script wrote, without a timestamp
[    0.000000] Linux version 6.1.0-57-amd64
[    0.000000] Unknown kernel command line parameters "x=1", will be passed to user space.
[    0.052000] smpboot: CPU0: AMD EPYC
[    0.002106] clocksource: tsc-early: mask: 0xffffffffffffffff
[    6.674041] BUG: kernel NULL pointer dereference, address: 0000000000000000
[    6.684481] Kernel panic - not syncing: Fatal exception
"""


def test_made_up_console_gives_the_replay_only() -> None:
    lines = console_kernel_lines(CONSOLE)
    assert lines == CONSOLE.splitlines()[3:]


def test_made_up_console_without_a_replay_gives_every_kernel_line() -> None:
    text = "[    6.1] Kernel panic - not syncing: x\njunk\n[    6.2] ---[ end Kernel panic ]---\n"
    assert console_kernel_lines(text) == ["[    6.1] Kernel panic - not syncing: x", "[    6.2] ---[ end Kernel panic ]---"]


def test_every_run_asks_the_kernel_to_replay_its_log_at_panic() -> None:
    assert "panic_print=0x20" in BASE_CMDLINE
